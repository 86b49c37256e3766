//! What the tests that drive libberth from C share: where this run's `libberth.so` is, the C
//! compiler, the sanitizer build, and running a program with a deadline.
//!
//! Where the library is: cargo builds this package's library with all its crate types
//! (`cdylib`, `staticlib`, `rlib`) before linking the integration tests, into the directory
//! of the test executable (`target/<profile>/deps/`). It copies the cdylib up to
//! `target/<profile>/` only when the library itself is what was asked for (`cargo build`),
//! so the copy there may be missing or stale during `cargo test`; `deps/` is always current.
//!
//! The sanitizer build (rustls-ffi runs its C tests so too): the C program is compiled with
//! AddressSanitizer and UndefinedBehaviorSanitizer, linked against the same, uninstrumented
//! `libberth.so`. ASan replaces `malloc` for the whole process, so libberth's heap use is
//! checked too (double frees, overflows of heap blocks, use after free), though not its stack
//! or global accesses. LeakSanitizer runs at exit and reports every block no pointer reaches:
//! the C programs free what they allocate, and libberth's one process-wide session is held
//! by a global pointer (reachable, so not a leak), so no suppression is needed and none is
//! used — a report is a leak.

#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How a C program is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// As a user builds it.
    Plain,
    /// With `-fsanitize=address,undefined`: any report fails the test.
    Sanitized,
}

/// The flags of a sanitized build. `-fno-sanitize-recover=all` makes UBSan stop at its first
/// report (by default it prints and goes on, and the exit status would not show it).
const SANITIZER_FLAGS: [&str; 4] = [
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=all",
    "-g",
];

/// The exit status a sanitizer report ends a program with (its default is 1, which the C test
/// programs use for a failed check).
pub const SANITIZER_EXIT: i32 = 86;

/// Lines of a sanitizer report on stderr.
const REPORT_MARKERS: [&str; 4] = [
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "SUMMARY: ",
];

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory holding the `libberth.so` built for this test run.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("the test executable's directory");
    assert!(
        deps.join("libberth.so").is_file(),
        "{} has no libberth.so; cargo builds it with this crate's tests (crate-type cdylib)",
        deps.display()
    );
    deps.to_path_buf()
}

fn cc() -> std::ffi::OsString {
    std::env::var_os("CC").unwrap_or_else(|| "cc".into())
}

/// Compiles `source` into `out_dir` (the program is named after the source file, with
/// `-asan` for a sanitized build) and links it against this run's `libberth.so`.
pub fn compile(source: &Path, out_dir: &Path, build: Build) -> PathBuf {
    let stem = source.file_stem().expect("a file name").to_string_lossy();
    let program = match build {
        Build::Plain => out_dir.join(&*stem),
        Build::Sanitized => out_dir.join(format!("{stem}-asan")),
    };
    let lib = lib_dir();
    let cc = cc();
    let mut command = Command::new(&cc);
    command.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread"]);
    if build == Build::Sanitized {
        command.args(SANITIZER_FLAGS);
    }
    let output = command
        .arg("-I")
        .arg(root().join("crates/berth-ffi/include"))
        .arg(source)
        .arg("-L")
        .arg(&lib)
        .arg("-lberth")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&program)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
    assert!(
        output.status.success(),
        "compiling {} ({build:?}) failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    program
}

/// Whether sanitized builds can run here. When they cannot (a compiler without ASan, e.g. no
/// `libasan` installed), says why on stderr — not captured by the test harness, so it shows in
/// every run — and the caller skips its sanitized variant. `BERTH_REQUIRE_SANITIZERS=1` (set
/// by CI) makes that a failure instead.
pub fn sanitizers_available() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let required = std::env::var_os("BERTH_REQUIRE_SANITIZERS").is_some_and(|v| v == "1");
    let probe = PROBE.get_or_init(|| {
        let probe = probe_sanitizers();
        if let (Err(why), false) = (&probe, required) {
            // Once per test binary, not once per skipped test.
            let _ = writeln!(
                std::io::stderr(),
                "skipped: the AddressSanitizer builds of the C tests, because {why}"
            );
        }
        probe
    });
    match probe {
        Ok(()) => true,
        Err(why) if required => panic!("BERTH_REQUIRE_SANITIZERS=1, but {why}"),
        Err(_) => false,
    }
}

/// Compiles and runs a program that allocates and frees with the sanitizer flags.
fn probe_sanitizers() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
    let source = dir.path().join("probe.c");
    std::fs::write(
        &source,
        "#include <stdlib.h>\nint main(void) { char *p = malloc(8); p[7] = 0; free(p); return 0; }\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", source.display()))?;
    let program = dir.path().join("probe");
    let cc = cc();
    let out = Command::new(&cc)
        .args(SANITIZER_FLAGS)
        .arg(&source)
        .arg("-o")
        .arg(&program)
        .output()
        .map_err(|e| format!("the C compiler {cc:?} cannot be run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cc:?} cannot build with {} (install libasan and libubsan): {}",
            SANITIZER_FLAGS.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let out = sanitizer_env(&mut Command::new(&program))
        .output()
        .map_err(|e| format!("the sanitized probe cannot be run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "a sanitized program does not run here ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The sanitizers' options: every report fails the program with [`SANITIZER_EXIT`]; leaks
/// are looked for (the default, said explicitly: a leak in a C test is a failure).
fn sanitizer_env(command: &mut Command) -> &mut Command {
    command
        .env(
            "ASAN_OPTIONS",
            format!(
                "detect_leaks=1:exitcode={SANITIZER_EXIT}:abort_on_error=0:\
                 detect_stack_use_after_return=1:strict_string_checks=1"
            ),
        )
        .env(
            "UBSAN_OPTIONS",
            format!("halt_on_error=1:print_stacktrace=1:exitcode={SANITIZER_EXIT}"),
        )
        .env("LSAN_OPTIONS", format!("exitcode={SANITIZER_EXIT}"))
}

/// A compiled C program and how it was built.
pub struct Program {
    pub path: PathBuf,
    pub build: Build,
}

impl Program {
    /// Compiles `source` (relative to the workspace root) into `out_dir`.
    pub fn compile(source: &str, out_dir: &Path, build: Build) -> Self {
        Program {
            path: compile(&root().join(source), out_dir, build),
            build,
        }
    }

    /// A command that runs the program with `args` against the daemon at `socket`, as the
    /// user `uid` when given (through `setpriv`; the tests run as root).
    pub fn command(&self, args: &[&str], socket: &Path, uid: Option<u32>) -> Command {
        let mut command = match uid {
            None => Command::new(&self.path),
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(&self.path);
                c
            }
        };
        // cargo's LD_LIBRARY_PATH for tests lists target/<profile>/ too, where a stale copy
        // of libberth.so may sit, and it would win over the rpath: point it at this run's.
        command
            .args(args)
            .env("LD_LIBRARY_PATH", lib_dir())
            .env("BERTH_SOCKET", socket);
        if self.build == Build::Sanitized {
            sanitizer_env(&mut command);
        }
        command
    }

    /// Runs `args` against `socket` (see [`Program::command`]) and returns its output once it
    /// has ended; fails the test on a sanitizer report.
    pub fn run(&self, args: &[&str], socket: &Path, uid: Option<u32>) -> Output {
        let out = finish(self.command(args, socket, uid), &self.path);
        let what = describe(&self.path, args, &out);
        // Shown by the test harness on failure, or with `--nocapture`.
        println!("{what}");
        if self.build == Build::Sanitized {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.code() != Some(SANITIZER_EXIT)
                    && !REPORT_MARKERS.iter().any(|m| stderr.contains(m)),
                "a sanitizer reported an error:\n{what}"
            );
        }
        out
    }
}

/// Runs `command` to its end; kills it if it has not finished within a minute (a hang is a
/// failure, not a reason to stall the suite).
fn finish(mut command: Command, program: &Path) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    match wait_within(child, Duration::from_secs(60)) {
        Ok(out) => out,
        Err(out) => panic!(
            "{} did not finish within 60 s\nstdout:\n{}\nstderr:\n{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Waits for `child` to end and collects its output; after `limit`, kills it and returns what
/// it printed as an error.
fn wait_within(child: Child, limit: Duration) -> Result<Output, Output> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let waited = |result: Result<std::io::Result<Output>, _>| {
        result
            .expect("the waiting thread answers")
            .expect("wait_with_output")
    };
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(waited(Ok::<_, mpsc::RecvError>(out))),
        Err(_) => {
            // Not reaped yet (the waiting thread has not sent), so the pid is still the child's.
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            Err(waited(rx.recv()))
        }
    }
}

pub fn describe(program: &Path, args: &[&str], out: &Output) -> String {
    format!(
        "{} {} exited with {}\nstdout:\n{}\nstderr:\n{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The user the tests run programs as when they must not be root.
pub const NOBODY: u32 = 65534;

/// A process started by [`Helper::start`]: this test binary again, running one ignored test
/// as another user. It serves until dropped (its stdin closes).
pub struct Helper {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// What the helper printed after [`READY`].
    pub ready: String,
}

/// The line a helper prints once it serves; what follows it is for the test that started it.
pub const READY: &str = "berth-ffi-helper-ready ";

impl Helper {
    /// Runs the test `name` of this binary as `uid`, with `env`, and waits (with a deadline)
    /// for its [`READY`] line.
    pub fn start(name: &str, uid: u32, env: &[(&str, &str)]) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(&exe)
            .args([
                name,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ]);
        for (key, value) in env {
            command.env(key, value);
        }
        // Its stderr is this process's: what it says about a failure shows with the test's.
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} as uid {uid}: {e}", exe.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        // Read to the end, also once nobody listens for lines any more: the helper writes its
        // test harness's summary when it stops, and a closed pipe would fail it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => match line.split_once(READY) {
                    Some((_, rest)) => break rest.to_owned(),
                    None => seen.push(line),
                },
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "the helper {name} never said it was ready ({e:?}); it printed:\n{}",
                        seen.join("\n")
                    );
                }
            }
        };
        Helper {
            child: Some(child),
            stdin,
            ready,
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // End of its stdin is the helper's signal to stop.
        drop(self.stdin.take());
        if let Some(child) = self.child.take() {
            let out = wait_within(child, Duration::from_secs(30));
            let failed = match &out {
                Ok(out) => !out.status.success(),
                Err(_) => true,
            };
            // A helper that did not stop cleanly fails the test, unless the test failed
            // already (a second panic would abort and hide the first).
            if failed && !std::thread::panicking() {
                let out = out.unwrap_or_else(|out| out);
                panic!("the helper ended with {} (its stderr is above)", out.status);
            }
        }
    }
}

/// In a helper: says it is ready, with `detail`, then waits until the test that started it
/// closes its stdin.
pub fn helper_ready_then_wait(detail: &str) {
    let mut stdout = std::io::stdout();
    // On a line of its own: the test harness has printed the test's name without a newline.
    writeln!(stdout, "\n{READY}{detail}").expect("stdout");
    stdout.flush().expect("stdout");
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
}

//! What a test needs from the machine beyond the build, and what happens when it is missing.
//!
//! `cargo test --workspace` must work for anyone: as root and as an ordinary user, with or
//! without Python's `portpicker` or a C compiler. A test that needs what this machine (or this
//! user) lacks asks here first — [`users`], [`namespaces`], [`python3`], [`portpicker`],
//! [`c_compiler`], or [`skip`] for anything else — and, when the answer is no, returns at once.
//! Each check probes once per test binary (by running the tool) and caches the answer.
//!
//! A skip is never silent. libtest reports a skipped test as `ok`, and it captures what a
//! passing test prints with `print!`/`eprint!`; so the line goes straight to the process's
//! standard error, which libtest leaves alone, and shows with cargo's default output (and in
//! CI logs):
//!
//! ```text
//! SKIPPED: tests::stop::anyone_else_is_refused: needs root: runs a client as another user …
//! ```
//!
//! and when the test binary exits, after libtest's own result line, one more line counts the
//! skips of that binary. A test that skips only part of itself says which part.
//!
//! `BERTH_TEST_REQUIRE` turns skips into failures, for CI: a comma-separated list of need
//! names ([`Need::name`]: `users`, `namespaces`, `python3`, `portpicker`, `cc`, `kernel`), or
//! `all`. `BERTH_REQUIRE_PORTPICKER=1` is the older spelling of `portpicker`.

use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once, OnceLock};

use super::deadline::{wait_within, DEADLINE};
use super::namespaces::Namespaces;

/// Something a test may need that a machine or a user may lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Running a process (or a thread) as another user, such as nobody (uid 65534) with
    /// `setpriv`: that takes root. A user namespace does not help: only the one uid is mapped.
    Users,
    /// Private network, mount or pid namespaces in which the test is root: as root itself, or
    /// in a user namespace of its own (`unshare --map-root-user`) where the kernel allows them.
    Namespaces,
    /// `/usr/bin/python3`: a second, independent client of the protocol in some tests.
    Python3,
    /// A `python3` that can `import portpicker`, Google's client of the portserver endpoint.
    Portpicker,
    /// A C compiler (`$CC`, else `cc`), for the tests of the C library.
    CCompiler,
    /// A kernel feature this kernel lacks.
    Kernel,
}

impl Need {
    /// The name `BERTH_TEST_REQUIRE` lists it by.
    pub fn name(self) -> &'static str {
        match self {
            Need::Users => "users",
            Need::Namespaces => "namespaces",
            Need::Python3 => "python3",
            Need::Portpicker => "portpicker",
            Need::CCompiler => "cc",
            Need::Kernel => "kernel",
        }
    }

    /// Whether the environment says this need must be met: a skip is then a failure.
    pub fn required(self) -> bool {
        let listed = std::env::var("BERTH_TEST_REQUIRE").unwrap_or_default();
        let listed = listed
            .split(',')
            .map(str::trim)
            .any(|n| n == "all" || n == self.name());
        listed
            || (self == Need::Portpicker
                && std::env::var_os("BERTH_REQUIRE_PORTPICKER").is_some_and(|v| v == "1"))
    }
}

/// Reports that the running test (or the part of it that `why` names) is skipped because
/// `need` is not met here: a `SKIPPED:` line on standard error, counted in the summary printed
/// when the test binary exits. The caller then returns (or goes on without that part).
///
/// # Panics
/// When `need` is required ([`Need::required`]): the test fails instead, saying why.
pub fn skip(need: Need, why: &str) {
    let test = test_name();
    if need.required() {
        panic!(
            "{test}: {why}\n(BERTH_TEST_REQUIRE asks for {:?}, so this fails instead of being skipped)",
            need.name()
        );
    }
    let line = format!("SKIPPED: {test}: {why}\n");
    // Straight to the process's stderr: libtest captures only the print macros.
    let _ = std::io::stderr().write_all(line.as_bytes());
    record(test);
}

/// The name libtest gives the thread it runs a test on: the test's path.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("a test on an unnamed thread")
        .to_owned()
}

/// Skips recorded in this process, for the summary at exit.
static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Registers [`summary`] with `atexit` the first time a test skips.
static SUMMARY_AT_EXIT: Once = Once::new();

fn record(test: String) {
    SKIPPED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(test);
    SUMMARY_AT_EXIT.call_once(|| {
        // A test binary ends through `exit` (main's return, or libtest's status 101), which
        // runs `atexit` handlers: the summary lands after libtest's "test result" line.
        // `summary` takes a poisoned lock as it is and ignores write errors: it does not panic.
        let _ = berth_os::at_exit::register(summary);
    });
}

/// Prints how many of this binary's tests were skipped, and which.
extern "C" fn summary() {
    let skipped = SKIPPED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut tests: Vec<&str> = skipped.iter().map(String::as_str).collect();
    tests.sort_unstable();
    tests.dedup();
    let binary = std::env::args().next().unwrap_or_default();
    let binary = binary.rsplit('/').next().unwrap_or_default();
    let line = format!(
        "SKIPPED: {} of the tests of {binary}, in whole or in part (why: the SKIPPED lines \
         above): {}\n",
        tests.len(),
        tests.join(", ")
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Whether `program args…` runs and exits 0, quietly; a probe that hangs fails the test at
/// [`DEADLINE`] rather than stalling it.
pub(super) fn runs(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> bool {
    let Ok(mut child) = Command::new(program.as_ref())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let what = format!("the probe {:?} {args:?}", program.as_ref());
    wait_within(&mut child, DEADLINE, &what).success()
}

/// The uid tests run other users' clients as: nobody.
pub const NOBODY: u32 = 65534;

/// `setpriv` arguments that run the rest of a command line as nobody (uid and gid 65534),
/// without supplementary groups.
pub const AS_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

/// Whether this test may run processes and threads as other users ([`Need::Users`]), without
/// reporting anything: for a test that does something else when it may not.
pub fn other_users_available() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        let (program, args) = AS_NOBODY.split_first().unwrap_or((&"setpriv", &[]));
        let mut args = args.to_vec();
        args.push("true");
        runs(program, &args)
    })
}

/// Whether this test may run processes and threads as other users ([`Need::Users`]); reports
/// the skip when not.
pub fn users() -> bool {
    let can = other_users_available();
    if !can {
        skip(
            Need::Users,
            "needs root, to run processes as other users (setpriv or setuid to uid 65534 and \
             others)",
        );
        return false;
    }
    // Those users run the built binaries and libraries: they must be able to reach them (a
    // clone in root's 0700 home is out of their reach).
    if let Some(dir) = unreachable_by_others() {
        skip(
            Need::Users,
            &format!(
                "needs the build to be reachable by other users, who run its binaries: {} is \
                 not (chmod o+x it, or clone where others may enter)",
                dir.display()
            ),
        );
        return false;
    }
    true
}

/// The first directory above this test executable that other users may not enter, if any.
fn unreachable_by_others() -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().skip(1).find_map(|dir| {
        let mode = std::fs::metadata(dir).ok()?.permissions().mode();
        (mode & 0o001 == 0).then(|| dir.to_owned())
    })
}

/// How this test can make private namespaces ([`Need::Namespaces`]), or `None` (the skip is
/// reported).
pub fn namespaces() -> Option<Namespaces> {
    let found = Namespaces::here();
    if found.is_none() {
        skip(
            Need::Namespaces,
            "needs a private network namespace: neither `unshare --net` (root) nor `unshare \
             --map-root-user --net` (a user namespace) works here",
        );
    }
    found
}

/// The system's Python, which the tests' protocol clients are written for.
pub const PYTHON3: &str = "/usr/bin/python3";

/// Whether [`PYTHON3`] runs ([`Need::Python3`]); reports the skip when not.
pub fn python3() -> bool {
    static RUNS: OnceLock<bool> = OnceLock::new();
    let runs = *RUNS.get_or_init(|| runs(PYTHON3, &["-c", ""]));
    if !runs {
        skip(
            Need::Python3,
            "needs /usr/bin/python3 (a client written in Python speaks the protocol)",
        );
    }
    runs
}

/// A `python3` that can `import portpicker` ([`Need::Portpicker`]): the one on `PATH` first,
/// else the system's; `None` when neither can (the skip is reported).
pub fn portpicker() -> Option<&'static str> {
    static FOUND: OnceLock<Option<&'static str>> = OnceLock::new();
    let found = *FOUND.get_or_init(|| {
        ["python3", PYTHON3]
            .into_iter()
            .find(|py| runs(py, &["-c", "import portpicker"]))
    });
    if found.is_none() {
        skip(
            Need::Portpicker,
            "needs Python's portpicker (`pip install portpicker`): no python3 can import it",
        );
    }
    found
}

/// The C compiler to use, `$CC` or `cc`, when it runs ([`Need::CCompiler`]); `None` when it
/// does not (the skip is reported).
pub fn c_compiler() -> Option<OsString> {
    static FOUND: OnceLock<Option<OsString>> = OnceLock::new();
    let found = FOUND
        .get_or_init(|| {
            let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
            runs(&cc, &["--version"]).then_some(cc)
        })
        .clone();
    if found.is_none() {
        skip(
            Need::CCompiler,
            "needs a C compiler ($CC, else cc; e.g. apt-get install gcc libc6-dev)",
        );
    }
    found
}

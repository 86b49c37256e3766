//! Waiting for another process, or for a connection from one, with a deadline: a child that
//! hangs (or never started what it should) fails its test instead of stalling the suite. The
//! waits sleep in `poll(2)`, on a pidfd or the listening socket, not in a polling loop.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

/// How long a helper process may take: generous, for a busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Whether `fd` became readable within `limit` (a pidfd: the process ended; a listener: a
/// connection waits).
fn readable_within(fd: impl AsFd, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Waits for `child` (ours, not yet reaped) to end, for at most `limit`; at the deadline kills
/// and reaps it, then panics naming `what`.
pub fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    if !exited_unreaped(child, limit) {
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} (pid {pid}) did not end within {limit:?}; killed");
    }
    child.wait().expect("reap a child that ended")
}

/// Waits for `child` (ours, not yet reaped) to exit, for at most `limit`, and leaves it
/// unreaped — a zombie, which only its pid is left of; whether it exited in time.
pub fn exited_unreaped(child: &Child, limit: Duration) -> bool {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("a child's pid");
    // The child is not reaped before its parent waits, so its pid names it until then.
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .expect("pidfd_open a child");
    readable_within(&pidfd, limit)
}

/// Runs `cmd` to its end with stdin empty, stdout and stderr collected, for at most `limit`;
/// at the deadline kills and reaps it, then panics with what it printed so far.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let read_all = |mut from: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = from.read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
        rx
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = wait_within(&mut child, limit, &what);
    // A grandchild may still hold the pipes: their ends count against the same deadline.
    let collect = |rx: Receiver<Vec<u8>>, name: &str| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("{what} exited ({status}) but its {name} stayed open"))
    };
    let stdout = collect(stdout, "stdout");
    let stderr = collect(stderr, "stderr");
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Accepts one connection on `listener` within `limit`, or panics naming `what` (the client
/// that should have connected).
pub fn accept_within(listener: &UnixListener, limit: Duration, what: &str) -> UnixStream {
    assert!(
        readable_within(listener, limit),
        "{what} did not connect within {limit:?}"
    );
    let (stream, _) = listener.accept().expect("accept a waiting connection");
    stream
}

/// Each line of `reader` (newline kept), sent as it is read, from a thread of its own; the
/// channel disconnects at end-of-file. Read it with a timeout ([`next_line`], [`all_lines`]).
pub fn lines_of(reader: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// The next line from [`lines_of`], without its newline, within `limit`; panics naming `what`
/// (the process that should have printed it) otherwise.
pub fn next_line(lines: &Receiver<String>, limit: Duration, what: &str) -> String {
    match lines.recv_timeout(limit) {
        Ok(line) => line.trim_end_matches('\n').to_owned(),
        Err(RecvTimeoutError::Timeout) => panic!("{what} printed no line within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what} closed its output"),
    }
}

/// Every line left from [`lines_of`] until end-of-file, without newlines, within `limit`;
/// panics naming `what` if the output stays open longer.
pub fn all_lines(lines: &Receiver<String>, limit: Duration, what: &str) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut all = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => all.push(line.trim_end_matches('\n').to_owned()),
            Err(RecvTimeoutError::Disconnected) => return all,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{what}'s output stayed open for {limit:?}; so far: {all:?}")
            }
        }
    }
}

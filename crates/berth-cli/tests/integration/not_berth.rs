//! A socket path that is not a berth daemon's: something else listening there (a web server)
//! is named as such, not reported as a lost connection to retry; a regular file is called a
//! file, and no daemon is started on demand to fail on it. Both are unavailable (exit 18).

use crate::support;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;

use support::Berth;

/// A listener that answers every connection like an HTTP server answers garbage.
fn http_server(path: &std::path::Path) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(path).expect("bind the fake server");
    std::thread::spawn(move || {
        // Two commands below; each connects once.
        for _ in 0..2 {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let mut buf = [0u8; 256];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    })
}

#[test]
fn another_programs_socket_is_not_a_berth_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("web.sock");
    let server = http_server(&socket);
    for args in [&["list"][..], &["run", "--tcp", "1", "--", "true"]] {
        Berth::new(&socket).args(args).output().code(18).says(&[
            "is not a berth daemon's socket",
            "it begins \"HTTP\"",
            "set BERTH_SOCKET",
        ]);
    }
    server.join().unwrap();
}

#[test]
fn a_regular_file_is_not_a_socket_and_no_daemon_is_started_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    std::fs::write(&socket, "not a socket\n").unwrap();
    Berth::new(&socket)
        .args(["list"])
        .output()
        .code(18)
        .says(&["it is a regular file, not a socket"]);
    // On demand too: nothing is started to fail on it, and the file is left alone.
    Berth::new(&socket)
        .env("BERTH_NO_AUTOSTART", "0")
        .args(["run", "--tcp", "1", "--", "true"])
        .output()
        .code(18)
        .says(&[
            "is a regular file, not a socket",
            "none was started on demand",
        ]);
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "not a socket\n");
    assert!(!dir.path().join("b.log").exists(), "no daemon was started");
}

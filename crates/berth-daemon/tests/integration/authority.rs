//! One daemon per network namespace: the authority beacon.

use berth_core::Pool;
use berth_protocol::authority;
use berth_testkit::deadline::DEADLINE;
use tokio::sync::oneshot;

use berth_daemon::{bind_socket, Config, SocketGuard};

/// Who holds the beacon `name`, as the daemon asks it: the kernel's credentials and the line.
fn query(name: &str) -> std::io::Result<Option<authority::AuthorityInfo>> {
    let answer = berth_os::beacon::ask(name, authority::QUERY_TIMEOUT, authority::MAX_ANSWER)?;
    Ok(answer.map(|a| {
        let peer = authority::Peer {
            pid: a.peer.pid,
            uid: a.peer.uid,
            gid: a.peer.gid,
        };
        authority::AuthorityInfo::new(peer, &a.text)
    }))
}

/// Whether a descriptor of this process is a socket bound to the abstract name `name`.
fn held_here(name: &str) -> bool {
    let at = format!("@{name}");
    // `/proc/net/unix`: `Num RefCount Protocol Flags Type St Inode Path`.
    let bound: Vec<String> = std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .filter(|line| line.split_whitespace().nth(7) == Some(at.as_str()))
        .filter_map(|line| line.split_whitespace().nth(6))
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| bound.iter().any(|b| target.as_os_str() == b.as_str()))
}

/// Waits, within [`DEADLINE`], until nobody holds the beacon `name`. A process another test of
/// this binary forks holds a copy of every descriptor of this one, close-on-exec or not, until
/// its exec: a beacon closed here meanwhile stays bound (and silent) until then. Each question
/// waits in the kernel: its connection, never accepted, is reset once the last copy is closed.
fn wait_until_free(name: &str) {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "the beacon @{name} is still held");
        match berth_os::beacon::ask(name, left, authority::MAX_ANSWER).unwrap() {
            None => return,
            Some(a) => assert!(
                a.text.is_empty(),
                "the beacon @{name} still answers: {:?}",
                String::from_utf8_lossy(&a.text)
            ),
        }
    }
}

/// A daemon of its own on `authority`, started in the background; `ready` fires once it
/// serves, and the handle yields what `run` returned.
struct Started {
    socket: std::path::PathBuf,
    stop: oneshot::Sender<()>,
    ready: oneshot::Receiver<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _guard: SocketGuard,
    _dir: tempfile::TempDir,
}

fn start(authority: &str) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("berth.sock");
    let (listener, guard) = bind_socket(&socket).unwrap();
    let mut config = Config::new(
        socket.clone(),
        dir.path().join("berth.db"),
        Pool::new(17130, 17139).unwrap(),
    );
    config.authority = Some(authority.to_owned());
    let (stop, stopped) = oneshot::channel::<()>();
    let (is_ready, ready) = oneshot::channel::<()>();
    let task = tokio::spawn(berth_daemon::run_with_ready(
        listener,
        config,
        async move {
            let _ = stopped.await;
        },
        move || {
            let _ = is_ready.send(());
        },
    ));
    Started {
        socket,
        stop,
        ready,
        task,
        _guard: guard,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_second_daemon_of_the_namespace_refuses_to_start_naming_the_first() {
    let name = format!("berth-test-authority-{}", std::process::id());
    let mut first = start(&name);
    (&mut first.ready).await.expect("the first daemon serves");

    // The beacon answers with its line, and the kernel vouches for who holds it.
    let beacon = {
        let name = name.clone();
        tokio::task::spawn_blocking(move || query(&name))
            .await
            .unwrap()
            .unwrap()
            .expect("someone holds the beacon")
    };
    assert_eq!(beacon.peer.pid, std::process::id());
    assert_eq!(beacon.peer.uid, rustix::process::geteuid().as_raw());
    let announced = beacon.announced.expect("a berth line");
    assert_eq!(announced.pid, std::process::id());
    assert_eq!(announced.socket, first.socket.display().to_string());
    assert_eq!(announced.version, env!("CARGO_PKG_VERSION"));
    assert!(held_here(&name), "the first daemon holds its beacon here");

    let second = start(&name);
    let refused = second.task.await.unwrap().unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::AddrInUse);
    let message = refused.to_string();
    for needle in [
        format!("pid {}", std::process::id()),
        format!("socket {}", first.socket.display()),
        "berth stop".to_owned(),
        "BERTH_SOCKET=".to_owned(),
    ] {
        assert!(message.contains(&needle), "{needle:?} not in: {message}");
    }
    assert!(second.ready.await.is_err(), "the second never said ready");

    // Once the first has stopped, the name is free again: this process let go of it as the
    // first returned; a child that another test forked meanwhile lets go of it at its exec.
    first.stop.send(()).unwrap();
    first.task.await.unwrap().unwrap();
    assert!(
        !held_here(&name),
        "the first daemon returned still holding the beacon @{name}"
    );
    {
        let name = name.clone();
        tokio::task::spawn_blocking(move || wait_until_free(&name))
            .await
            .unwrap();
    }
    let third = start(&name);
    third
        .ready
        .await
        .expect("a daemon after the first one starts");
    third.stop.send(()).unwrap();
    third.task.await.unwrap().unwrap();
}

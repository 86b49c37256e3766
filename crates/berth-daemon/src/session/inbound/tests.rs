//! The reader over a real socket pair: descriptors and credentials from the kernel.

use super::*;
use berth_protocol::Request;
use berth_testkit::raw::{frame, send_with_fds};
use std::os::fd::AsFd;

/// A connection as the daemon opens it: the senders' pidfds are asked for once shared.
fn pair() -> (tokio::net::UnixStream, Reader) {
    pair_with(false)
}

/// A connection as the daemon reads it, with or without the senders' pidfds from the start.
fn pair_with(pidfds: bool) -> (tokio::net::UnixStream, Reader) {
    let (client, daemon) = tokio::net::UnixStream::pair().unwrap();
    rustix::net::sockopt::set_socket_passcred(&daemon, true).unwrap();
    if pidfds {
        berth_os::peer::pass_pidfd(&daemon).unwrap();
    }
    let (rd, _wr) = daemon.into_split();
    (
        client,
        Reader::new(
            rd,
            std::process::id(),
            crate::session::closer::Closers::new().lane(0),
            None,
        ),
    )
}

fn error_message(result: Result<Option<Inbound>, ReadError>) -> String {
    match result {
        Err(ReadError::Io(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            e.to_string()
        }
        Err(ReadError::Frame(e)) => panic!("a frame error: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[tokio::test]
async fn pipelined_frames_and_a_socket_are_attributed() {
    let (client, mut reader) = pair();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let associate = Request::Associate {
        token: 7,
        address: None,
    };
    // Two messages, read at once: the socket's message ends the read.
    send_with_fds(&client, &frame(Request::Status), &[]);
    send_with_fds(&client, &frame(associate.clone()), &[socket.as_fd()]);
    send_with_fds(&client, &frame(Request::List), &[]);

    let status = reader.next().await.ok().flatten().unwrap();
    assert_eq!(status.request, Request::Status);
    assert!(status.fd.is_none());
    assert_eq!(status.sender.map(|s| s.cred.pid), Some(std::process::id()));

    let got = reader.next().await.ok().flatten().unwrap();
    assert_eq!(got.request, associate);
    let fd = got.fd.expect("the socket");
    let addr = socket2::SockRef::from(&fd).local_addr().unwrap();
    assert_eq!(
        addr.as_socket(),
        Some(socket.local_addr().unwrap()),
        "the very socket sent"
    );

    let list = reader.next().await.ok().flatten().unwrap();
    assert_eq!(list.request, Request::List);
    assert!(list.fd.is_none());
}

#[tokio::test]
async fn the_frame_buffer_is_given_back_when_idle() {
    let (client, mut reader) = pair();
    assert_eq!(
        reader.buf.capacity(),
        0,
        "nothing allocated before the first read"
    );
    let mut hello = berth_protocol::Hello::current("x");
    hello.client = "x".repeat(6000);
    let large = Request::Hello(hello);
    send_with_fds(&client, &frame(large.clone()), &[]);
    send_with_fds(&client, &frame(Request::Status), &[]);
    let got = reader.next().await.ok().flatten().unwrap();
    assert_eq!(got.request, large);
    let got = reader.next().await.ok().flatten().unwrap();
    assert_eq!(got.request, Request::Status);
    // The next call finds nothing buffered: the grown buffer goes.
    let wait = std::time::Duration::from_millis(20);
    assert!(tokio::time::timeout(wait, reader.next()).await.is_err());
    assert!(
        reader.buf.capacity() <= KEPT_BUFFER,
        "{}",
        reader.buf.capacity()
    );
}

#[tokio::test]
async fn a_socket_with_another_request_closes_the_connection() {
    let (client, mut reader) = pair();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    send_with_fds(&client, &frame(Request::List), &[socket.as_fd()]);
    let message = error_message(reader.next().await);
    assert!(message.contains("not an associate"), "{message}");
}

#[tokio::test]
async fn an_associate_whose_socket_comes_later_gets_none_and_the_socket_is_refused() {
    let (client, mut reader) = pair();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let bytes = frame(Request::Associate {
        token: 7,
        address: None,
    });
    let (head, tail) = bytes.split_at(2);
    send_with_fds(&client, head, &[]);
    // The head is read alone, then the reader waits for more.
    let next = reader.next();
    tokio::pin!(next);
    let wait = std::time::Duration::from_millis(50);
    assert!(tokio::time::timeout(wait, next.as_mut()).await.is_err());
    send_with_fds(&client, tail, &[socket.as_fd()]);
    let message = error_message(next.await);
    assert!(message.contains("middle of a request frame"), "{message}");
}

/// A daemon out of descriptors: the kernel cannot install the socket and truncates the
/// control data (here: a control buffer with room for the credentials alone does the same;
/// without pidfds, whose room the real buffer always has, and which would be cut first). The
/// associate comes through marked, the connection goes on; a client that sent a descriptor
/// with another request is still refused.
#[tokio::test]
async fn a_descriptor_the_daemon_could_not_take_is_no_fault_of_the_client() {
    let (client, mut reader) = pair_with(false);
    // The scratch space is per thread: this test's runtime is this (current) thread.
    // CMSG_SPACE(sizeof(struct ucred)) on 64-bit Linux: a 16-byte header and 12 bytes, aligned
    // to 8 — 32 bytes.
    SCRATCH.with_borrow_mut(|scratch| scratch.control = vec![0u64; 4]);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let associate = Request::Associate {
        token: 7,
        address: None,
    };
    send_with_fds(&client, &frame(associate.clone()), &[socket.as_fd()]);
    let got = reader.next().await.ok().flatten().unwrap();
    assert_eq!(got.request, associate);
    assert!(got.fd.is_none());
    assert!(got.lost_fd);
    send_with_fds(&client, &frame(Request::Status), &[]);
    let status = reader.next().await.ok().flatten().unwrap();
    assert_eq!(status.request, Request::Status);
    assert!(!status.lost_fd);

    send_with_fds(&client, &frame(Request::List), &[socket.as_fd()]);
    let message = error_message(reader.next().await);
    assert!(message.contains("not an associate"), "{message}");
}

#[tokio::test]
async fn too_many_descriptors_in_one_message_close_the_connection_and_are_closed() {
    let (client, mut reader) = pair();
    let (read_end, write_end) = rustix::pipe::pipe().unwrap();
    let fds = [write_end.as_fd(); 6];
    send_with_fds(&client, &frame(Request::Status), &fds);
    drop(write_end);
    let message = error_message(reader.next().await);
    assert!(message.contains("6 file descriptors"), "{message}");
    // Every copy the daemon got is closed (by a closer thread): the pipe sees its end.
    let eof = tokio::task::spawn_blocking(move || {
        let mut byte = [0u8; 1];
        rustix::io::read(&read_end, &mut byte[..]).unwrap()
    });
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), eof)
        .await
        .expect("every received copy closed")
        .unwrap();
    assert_eq!(n, 0);
}

/// Another process writes on the connection (a forked child, as `cat` here): its frame is
/// its own, pinned by a pidfd — its start time while it runs, 0 once it has exited, even
/// though `/proc` could by then show another process there. The first such read turns the
/// kernel's per-read pidfds on; the owner's reads never need them.
#[tokio::test]
async fn another_process_s_frame_is_pinned_by_a_pidfd() {
    let (client, mut reader) = pair();
    // The connection's own process needs no pinning, and no pidfds are asked for.
    send_with_fds(&client, &frame(Request::Status), &[]);
    let own = reader.next().await.ok().flatten().unwrap();
    assert_eq!(own.sender.unwrap().start_time, None);
    assert!(!reader.pidfds_asked);
    assert!(!passes_pidfds(&reader));

    let client = client.into_std().unwrap();
    writers_are_pinned(&client, &mut reader).await;
    assert!(reader.pidfds_asked);
    assert_eq!(
        passes_pidfds(&reader),
        kernel_has_pidfds(),
        "the kernel sends pidfds once the connection is shared (where it can)"
    );
}

/// Two other processes write before the daemon reads either: the first read turns the
/// kernel's pidfds on, and the second, queued before that, is still its own sender's (the
/// kernel recorded the sender with the bytes).
#[tokio::test]
async fn a_frame_queued_before_pidfds_were_asked_for_is_pinned_too() {
    let (client, mut reader) = pair();
    let client = client.into_std().unwrap();
    let mut first = writer_of(&client);
    let mut second = writer_of(&client);
    let first_input = first.stdin.take().unwrap();
    let second_input = second.stdin.take().unwrap();
    {
        use std::io::Write;
        (&first_input).write_all(&frame(Request::Status)).unwrap();
        (&second_input).write_all(&frame(Request::List)).unwrap();
    }
    // Both frames wait in the daemon's receive queue before the first read.
    let queued = frame(Request::Status).len() + frame(Request::List).len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let half = reader.half.as_ref().unwrap();
        let stream: &tokio::net::UnixStream = half.as_ref();
        if rustix::io::ioctl_fionread(stream).unwrap() as usize >= queued {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writers did not write"
        );
        std::thread::yield_now();
    }
    assert!(!passes_pidfds(&reader));
    let mut got = Vec::new();
    for _ in 0..2 {
        let inbound = reader.next().await.ok().flatten().unwrap();
        got.push(inbound.sender.unwrap());
    }
    for child in [&first, &second] {
        let sender = got
            .iter()
            .find(|s| s.cred.pid == child.id())
            .expect("each writer's frame");
        let stat = berth_os::proc::stat(child.id()).unwrap();
        assert_eq!(
            sender.start_time,
            berth_os::proc::start_time_from_stat(&stat),
            "process {}'s own start time",
            child.id()
        );
    }
    drop((first_input, second_input));
    first.wait().unwrap();
    second.wait().unwrap();
}

/// The same, with the kernel's pidfds on from the first read.
#[tokio::test]
async fn another_process_s_frame_is_pinned_by_the_kernel_s_pidfd() {
    let (client, mut reader) = pair_with(true);
    writers_are_pinned(&client.into_std().unwrap(), &mut reader).await;
}

/// The first read of another process, whose sender has exited and been reaped before it is
/// read: its pid names nobody, and it is described as gone.
#[tokio::test]
async fn a_first_frame_of_a_reaped_process_is_described_as_gone() {
    let (client, mut reader) = pair();
    a_reaped_writer_reads_as_gone(&client.into_std().unwrap(), &mut reader).await;
}

/// A process that writes what it reads on `client` (`cat`).
fn writer_of(client: &std::os::unix::net::UnixStream) -> std::process::Child {
    std::process::Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::os::fd::OwnedFd::from(client.try_clone().unwrap()))
        .spawn()
        .unwrap()
}

fn write_and_close(writer: &mut std::process::Child, request: Request) {
    use std::io::Write;
    let mut input = writer.stdin.take().unwrap();
    input.write_all(&frame(request)).unwrap();
}

/// A running writer's frame gets its start time, then an exited one's 0.
async fn writers_are_pinned(client: &std::os::unix::net::UnixStream, reader: &mut Reader) {
    // Still running when its frame is read.
    let mut running = writer_of(client);
    let input = running.stdin.take().unwrap();
    {
        use std::io::Write;
        (&input).write_all(&frame(Request::Status)).unwrap();
    }
    let got = reader.next().await.ok().flatten().unwrap();
    assert_eq!(got.request, Request::Status);
    let sender = got.sender.unwrap();
    assert_eq!(sender.cred.pid, running.id());
    let stat = berth_os::proc::stat(running.id()).unwrap();
    assert_eq!(
        sender.start_time,
        berth_os::proc::start_time_from_stat(&stat),
        "the running writer's own start time"
    );
    drop(input);
    running.wait().unwrap();

    a_reaped_writer_reads_as_gone(client, reader).await;
}

/// A writer that exited (and was reaped) before its frame is read is described as gone.
async fn a_reaped_writer_reads_as_gone(
    client: &std::os::unix::net::UnixStream,
    reader: &mut Reader,
) {
    let mut gone = writer_of(client);
    write_and_close(&mut gone, Request::List);
    gone.wait().unwrap();
    let got = reader.next().await.ok().flatten().unwrap();
    assert_eq!(got.request, Request::List);
    let sender = got.sender.unwrap();
    assert_eq!(sender.cred.pid, gone.id());
    // Linux 6.16 and later hand out a pidfd of a reaped sender (it reads as exited); 6.5 to
    // 6.15 say it is gone (ESRCH); earlier ones send nothing, and its pid names nobody.
    assert_eq!(sender.start_time, Some(0));
}

/// Whether this kernel can send the senders' pidfds (`SO_PASSPIDFD`, Linux 6.5).
fn kernel_has_pidfds() -> bool {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    berth_os::peer::pass_pidfd(&a).unwrap()
}

/// Whether the kernel sends the senders' pidfds on the reader's connection (`SO_PASSPIDFD`).
fn passes_pidfds(reader: &Reader) -> bool {
    let half = reader.half.as_ref().unwrap();
    let stream: &tokio::net::UnixStream = half.as_ref();
    berth_os::peer::passes_pidfd(stream).unwrap()
}

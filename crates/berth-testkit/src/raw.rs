//! Speaking the protocol by hand, for tests of what a hostile or foreign client can do.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use berth_core::ErrorKind;
use berth_protocol::{FrameCodec, Hello, Request, Response};
use bytes::BytesMut;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::{Decoder, Encoder};

/// A python3 prelude for child processes that speak the protocol: `varint(n)`,
/// `frame(payload)`, `answer(conn)` (one response payload) and `hello(conn, name)`.
pub const PY_PRELUDE: &str = r#"
import os, socket, struct, sys
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7f; n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n: return bytes(out)
def frame(payload): return struct.pack(">I", len(payload)) + payload
def answer(conn):
    n = struct.unpack(">I", conn.recv(4, socket.MSG_WAITALL))[0]
    return conn.recv(n, socket.MSG_WAITALL)
def hello(conn, name):
    conn.sendall(frame(bytes([0]) + b"BRTH" + varint(1) + varint(1) + varint(len(name)) + name))
    assert answer(conn)[0] == 0, "no welcome"
"#;

/// Encodes a request the way a client does.
pub fn frame(request: Request) -> Vec<u8> {
    let mut buf = BytesMut::new();
    FrameCodec::client()
        .encode(request, &mut buf)
        .expect("encode a request");
    buf.to_vec()
}

/// A frame with an arbitrary payload.
pub fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small payload");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Decodes every response in `bytes` (whole frames, nothing left over).
pub fn responses(bytes: &[u8]) -> Vec<Response> {
    let mut buf = BytesMut::from(bytes);
    let mut codec = FrameCodec::client();
    let mut out = Vec::new();
    while let Some(r) = codec.decode(&mut buf).expect("a valid response frame") {
        out.push(r);
    }
    assert!(buf.is_empty(), "trailing bytes: {buf:?}");
    out
}

/// The response whose payload (without its length) a child printed as hex.
pub fn response_from_hex(line: &str) -> Response {
    let payload: Vec<u8> = (0..line.len() / 2)
        .map(|i| {
            let pair = line.get(2 * i..2 * i + 2).expect("hex digits in pairs");
            u8::from_str_radix(pair, 16).expect("hex digits")
        })
        .collect();
    let mut all = responses(&raw_frame(&payload));
    assert_eq!(all.len(), 1, "one response in {line}");
    all.remove(0)
}

/// Reads everything until the daemon closes (30 s at most), and decodes the responses. A
/// daemon that closes with bytes of ours unread resets the connection after its last answer.
pub async fn read_until_closed(stream: &mut UnixStream) -> Vec<Response> {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes))
        .await
        .expect("the daemon should close the connection");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    responses(&bytes)
}

/// A connection to the daemon on `socket` that has done the handshake.
pub async fn shaken_hands(socket: &Path, name: &str) -> UnixStream {
    let mut stream = UnixStream::connect(socket).await.expect("connect");
    stream
        .write_all(&frame(Request::Hello(Hello::current(name))))
        .await
        .expect("send hello");
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.expect("welcome length");
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).await.expect("welcome");
    let welcome = responses(&raw_frame(&payload));
    assert!(
        matches!(welcome.first(), Some(Response::Welcome(_))),
        "{welcome:?}"
    );
    stream
}

/// Asserts that the last response is an error of `kind` whose message contains `needle`.
pub fn assert_error(responses: &[Response], kind: ErrorKind, needle: &str) {
    match responses.last() {
        Some(Response::Error(e)) => {
            assert_eq!(e.kind, kind, "{}", e.message);
            assert!(e.message.contains(needle), "{}", e.message);
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Sends `bytes` in one message on `stream`, with `fds` attached (`SCM_RIGHTS`) when there are
/// any (at most 8).
pub fn send_with_fds(stream: impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(fds)));
    }
    let n = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(bytes)],
        &mut cmsg,
        rustix::net::SendFlags::NOSIGNAL,
    )
    .expect("sendmsg");
    assert_eq!(n, bytes.len());
}

/// A connected TCP socket whose last close blocks for up to `linger`: `SO_LINGER` on, and a
/// full send queue that its peer (returned too; keep it) never reads.
pub fn lingering_socket(linger: Duration) -> (OwnedFd, Socket) {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    // Inherited by the accepted socket: a small window fills quickly.
    listener.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    listener
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .expect("bind");
    listener.listen(1).expect("listen");
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_send_buffer_size(4096).expect("SO_SNDBUF");
    socket
        .connect(&listener.local_addr().expect("local address"))
        .expect("connect");
    let (peer, _) = listener.accept().expect("accept");
    socket.set_nonblocking(true).expect("O_NONBLOCK");
    let chunk = [0u8; 64 * 1024];
    loop {
        match socket.send(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the send queue: {e}"),
        }
    }
    socket.set_linger(Some(linger)).expect("SO_LINGER");
    (socket.into(), peer)
}

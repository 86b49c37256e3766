//! Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/ (see
//! docs/fuzzing.md): real frames from the protocol crate's own encoder, ledger step sequences
//! from its unit tests, portserver requests, and `/proc` files as Linux writes them. Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use berth_protocol::{
    ErrorKind, FrameCodec, Hello, Protocol, Request, Response, Welcome, WireError,
};
use bytes::BytesMut;
use tokio_util::codec::Encoder;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn request(r: Request) -> Vec<u8> {
    let mut buf = BytesMut::new();
    FrameCodec::client().encode(r, &mut buf).expect("encodes");
    buf.to_vec()
}

fn response(r: Response) -> Vec<u8> {
    let mut buf = BytesMut::new();
    FrameCodec::daemon().encode(r, &mut buf).expect("encodes");
    buf.to_vec()
}

/// Ledger steps, five bytes each (the format fuzz_targets/ledger.rs reads).
fn read(len: u16, fds: u8, sender: u8) -> [u8; 5] {
    let [lo, hi] = len.to_le_bytes();
    [0, lo, hi, fds, sender]
}
fn frame(len: u16, associate: bool) -> [u8; 5] {
    let [lo, hi] = len.to_le_bytes();
    [1, lo, hi, u8::from(associate), 0]
}
fn end(fds: u8) -> [u8; 5] {
    [2, 0, 0, fds, 0]
}
fn rest(associate: bool) -> [u8; 5] {
    [3, 0, 0, u8::from(associate), 0]
}

fn main() {
    let t = "frame_decoder";
    let hello = request(Request::Hello(Hello::current("berth-fuzz-seed")));
    let acquire = request(Request::Acquire {
        protocol: Protocol::Tcp,
        start: 0,
        count: 3,
    });
    let associate = request(Request::Associate {
        token: 42,
        address: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    });
    write(t, "hello", &hello);
    write(t, "acquire", &acquire);
    write(t, "associate", &associate);
    write(
        t,
        "associate-v6",
        &request(Request::Associate {
            token: 7,
            address: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        }),
    );
    write(t, "release", &request(Request::Release { token: 42 }));
    write(t, "status", &request(Request::Status));
    write(t, "session", &[hello.clone(), acquire, associate].concat());
    write(t, "half-frame", &hello[..hello.len() / 2]);
    write(t, "too-long", &[0xff, 0xff, 0xff, 0xff, 0]);
    write(t, "malformed", &[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    write(
        t,
        "welcome",
        &response(Response::Welcome(Welcome {
            version: 1,
            daemon_version: "0.1.0".into(),
            daemon_pid: 4121,
        })),
    );
    write(
        t,
        "error",
        &response(Response::Error(WireError::new(
            ErrorKind::Incompatible,
            "no common protocol version",
        ))),
    );
    write(
        t,
        "associated",
        &response(Response::Associated { port: 40000 }),
    );

    // Ledger: the unit tests' streams (senders 1 and 2), well-behaved and not.
    let t = "ledger";
    let seqs: [(&str, Vec<[u8; 5]>); 7] = [
        (
            "one-frame-per-read",
            vec![
                read(10, 0, 1),
                frame(10, false),
                read(12, 1, 1),
                frame(12, true),
            ],
        ),
        (
            "status-and-associate-in-one-read",
            vec![read(17, 1, 1), frame(5, false), frame(12, true)],
        ),
        (
            "associate-split-over-reads",
            vec![
                read(8, 1, 1),
                frame(5, false),
                read(4, 0, 1),
                read(5, 0, 1),
                rest(true),
            ],
        ),
        (
            "another-sender-continues",
            vec![read(11, 1, 2), read(5, 0, 1)],
        ),
        (
            "descriptor-mid-frame",
            vec![read(2, 0, 1), read(10, 1, 1), frame(12, true)],
        ),
        (
            "too-many-pending",
            std::iter::once(read(1, 0, 1))
                .chain(std::iter::repeat_n(read(1, 1, 1), 9))
                .collect(),
        ),
        ("end-with-descriptors", vec![read(3, 0, 1), end(0), end(1)]),
    ];
    for (name, steps) in seqs {
        write(t, name, &steps.concat());
    }

    let t = "portserver_request";
    for (name, bytes) in [
        ("pid", &b"1234\n"[..]),
        ("pid-unterminated", b"4121"),
        ("pid-crlf-spaces", b" 4121\r\n"),
        ("pid-then-garbage", b"7\ngarbage"),
        ("negative", b"-5\n"),
        ("too-big", b"99999999999\n"),
        ("vertical-tab", b"1\x0b\x0b"),
        ("garbage", b"\xff\x00GET / HTTP/1.1\r\n"),
    ] {
        write(t, name, bytes);
    }

    // /proc files as the kernel writes them (fs/proc/array.c), and ip_local_reserved_ports.
    let t = "proc_files";
    let status = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4121\nNgid:\t0\n\
                  Pid:\t4121\nPPid:\t4000\nTracerPid:\t0\nUid:\t1000\t1000\t1000\t1000\n\
                  Gid:\t100\t100\t100\t100\nFDSize:\t64\nGroups:\t4 24 27 100 \n\
                  NStgid:\t4121\nNSpid:\t4121\nVmRSS:\t    1800 kB\nThreads:\t1\n\
                  CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
                  CapEff:\t0000000000000400\nCapBnd:\t000001ffffffffff\n\
                  CapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\n";
    for (name, bytes) in [
        (
            "stat",
            &b"4121 (sleep) S 4000 4121 4000 34816 4121 4194304 107 0 0 0 0 0 0 0 20 0 1 0 \
               987654 8409088 256 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 \
               0 0 0 0 0 0 0 0\n"[..],
        ),
        (
            "stat-awkward-name",
            b"4121 (a) b (c)) S 1 4121 4121 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
              1000 10\n",
        ),
        // "\xc3\xa4" × 10 cut at 15 bytes, inside a character.
        (
            "stat-name-cut-in-a-character",
            b"4121 (\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3) S 1 4121 \
              4121 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10\n",
        ),
        ("status", status.as_bytes()),
        ("status-root", &status.replace("1000", "0").into_bytes()),
        ("comm", b"sleep\n"),
        ("reserved-ports", b"8080-8082,9000\n"),
        ("reserved-ports-empty", b"\n"),
        ("reserved-ports-all", b"0-65535\n"),
        ("reserved-ports-not-a-list", b"8080,x\n"),
        ("reserved-ports-backwards", b"9000-8080\n"),
    ] {
        write(t, name, bytes);
    }
}

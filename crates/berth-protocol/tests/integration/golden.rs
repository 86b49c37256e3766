//! Golden bytes: the exact payload of every message of protocol version 1, written out by hand
//! from postcard's rules, so that a change of the wire shape breaks this test instead of a
//! client in the field.
//!
//! postcard's rules, as used here: an enum is its variant index as a varint, then the
//! variant's fields; integers wider than a byte are varints (7 bits a byte, least significant
//! group first, high bit set on every byte but the last); a `bool` and a `u8` are one byte; an
//! `Option` is `00`, or `01` and the value; a string or a sequence is its length as a varint,
//! then its bytes or elements; a fixed array and a struct are their elements in order, with no
//! length. Some varints used below: 300 = `ac 02`, 443 = `bb 03`, 1000 = `e8 07`, 4121 =
//! `99 20`, 8080 = `90 3f`, 40000 = `c0 b8 02`, `u64::MAX` = `ff ×9 01`.
//!
//! If this test fails, the wire format changed: either undo the change, or (once version 1 is
//! released) make it part of a new protocol version with golden bytes of its own — see
//! "Compatibility rules" in `docs/protocol.md`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use berth_protocol::{
    AcquireOptions, BusyDetail, DaemonLimit, Enforce, ErrorDetail, ErrorKind, ExposureInfo, Hello,
    Holder, KernelListInfo, Kind, NameDetail, NameInfo, NamespacesDetail, OwnerInfo, PoolDetail,
    PortRange, PortReport, PortsDetail, PortserverInfo, Protocol, QuotaDetail, QuotaInfo,
    QuotaWhat, RefusalInfo, Request, ReservationInfo, Response, ShareInfo, SocketInfo, StatusInfo,
    Token, UsageInfo, UserUsage, Welcome, WireError,
};
use serde::{de::DeserializeOwned, Serialize};

/// `"01 ac 02"` → bytes.
fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

/// Encodes to exactly `expected`, and decodes back to the same value.
fn golden<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T, expected: &str) {
    let bytes = postcard::to_allocvec(&value).unwrap();
    assert_eq!(
        bytes,
        hex(expected),
        "the encoding of {value:?} changed: it is now {}",
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let back: T = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, value);
}

fn owner() -> OwnerInfo {
    OwnerInfo {
        pid: 4121,
        uid: 1000,
        command: "nc".into(),
    }
}

/// token 300, tcp 8080-8081, runtime, owned by pid 4121 / uid 1000 / "nc", acquired at 5 ms,
/// 200 ms old.
fn runtime_info() -> ReservationInfo {
    ReservationInfo {
        token: Token::new(300).unwrap(),
        protocol: Protocol::Tcp,
        range: PortRange::new(8080, 2).unwrap(),
        kind: Kind::Runtime,
        owner: Some(owner()),
        acquired_at_ms: 5,
        age_ms: 200,
        held: true,
        bound: vec![8081],
        label: Some("web".into()),
        name: Some("shop/web".into()),
        moved_from: Some(PortRange::new(8080, 2).unwrap()),
        allow_users: Vec::new(),
        allow_groups: Vec::new(),
        cgroup: Some("/b".into()),
    }
}
const RUNTIME_INFO: &str = "ac 02  00  90 3f 02  00  01 99 20 e8 07 02 6e 63  05  c8 01  01  01 91 3f  01 03 77 65 62  01 08 73 68 6f 70 2f 77 65 62  01 90 3f 02  00  00  01 02 2f 62";

/// token u64::MAX, udp 443, persistent, no owner, times 0.
fn persistent_info() -> ReservationInfo {
    ReservationInfo {
        token: Token::new(u64::MAX).unwrap(),
        protocol: Protocol::Udp,
        range: PortRange::new(443, 1).unwrap(),
        kind: Kind::Persistent,
        owner: None,
        acquired_at_ms: 0,
        age_ms: 0,
        held: false,
        bound: vec![],
        label: None,
        name: None,
        moved_from: None,
        allow_users: vec![1000],
        allow_groups: Vec::new(),
        cgroup: None,
    }
}
const PERSISTENT_INFO: &str =
    "ff ff ff ff ff ff ff ff ff 01  01  bb 03 01  01  00  00  00  00  00  00  00  00  01 e8 07  00  00";

#[test]
fn requests() {
    golden(
        Request::Hello(Hello {
            magic: *b"BRTH",
            min_version: 1,
            max_version: 1,
            client: "t".into(),
        }),
        "00  42 52 54 48  01  01  01 74",
    );
    golden(
        Request::Acquire {
            protocol: Protocol::Tcp,
            start: 8080,
            count: 2,
        },
        "01  00  90 3f  02",
    );
    golden(Request::Release { token: 300 }, "02  ac 02");
    golden(Request::List, "03");
    golden(Request::Status, "04");
    golden(
        Request::Associate {
            token: 300,
            address: None,
        },
        "05  ac 02  00",
    );
    golden(
        Request::Associate {
            token: 300,
            address: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        },
        "05  ac 02  01 00 7f 00 00 01",
    );
    golden(
        Request::Associate {
            token: 300,
            address: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        },
        "05  ac 02  01 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01",
    );
    golden(
        Request::CreatePersistent {
            protocol: Protocol::Udp,
            start: 443,
            count: 1,
            allow_users: vec![1000],
            allow_groups: vec![],
            label: "web".into(),
            name: "ipp".into(),
        },
        "06  01  bb 03  01  01 e8 07  00  03 77 65 62  03 69 70 70",
    );
    golden(
        Request::DeletePersistent {
            protocol: Protocol::Udp,
            start: 443,
            count: 1,
        },
        "07  01  bb 03  01",
    );
    golden(
        Request::LookupPersistent {
            protocol: Protocol::Tcp,
            start: 443,
            count: 1,
        },
        "08  00  bb 03  01",
    );
    golden(Request::Reclaim { token: 300 }, "09  ac 02");
    golden(Request::Stop, "0a");
    golden(
        Request::Transfer {
            token: 300,
            pid: 4121,
        },
        "0b  ac 02  99 20",
    );
    golden(
        Request::AcquireWith {
            protocol: Protocol::Udp,
            start: 0,
            count: 3,
            options: AcquireOptions::held(),
        },
        // hold, label "", no bounds, name "", not enforced
        "0c  01  00  03  01  00  00  00  00",
    );
    golden(
        Request::AcquireWith {
            protocol: Protocol::Tcp,
            start: 0,
            count: 2,
            options: AcquireOptions::default()
                .label("t")
                .within(20000, 20099)
                .name("shop/web"),
        },
        // not held, label "t", bounds 20000 (a0 9c 01) to 20099 (83 9d 01), name "shop/web",
        // not enforced
        "0c  00  00  02  00  01 74  01 a0 9c 01 83 9d 01  08 73 68 6f 70 2f 77 65 62  00",
    );
    golden(
        Request::AcquireWith {
            protocol: Protocol::Tcp,
            start: 0,
            count: 1,
            options: AcquireOptions::default().enforce(Enforce::NewCgroup),
        },
        // enforced: Some, variant 0 (a new cgroup)
        "0c  00  00  01  00  00  00  00  01 00",
    );
    golden(
        Request::AcquireWith {
            protocol: Protocol::Tcp,
            start: 0,
            count: 1,
            options: AcquireOptions::default().enforce(Enforce::Cgroup("/s".into())),
        },
        // enforced: Some, variant 1 (an existing cgroup), "/s"
        "0c  00  00  01  00  00  00  00  01 01 02 2f 73",
    );
    golden(
        Request::Why {
            protocol: Protocol::Tcp,
            port: 8080,
        },
        "0d  00  90 3f",
    );
    golden(
        Request::AcquireBoth {
            start: 8080,
            count: 2,
            options: AcquireOptions::default(),
        },
        "0e  90 3f  02  00  00  00  00  00",
    );
    golden(
        Request::AssociateAt {
            token: 300,
            address: None,
            port: 8081,
        },
        "0f  ac 02  00  91 3f",
    );
    golden(Request::StopWith { restore: true }, "10  01");
    golden(Request::SetEnforce { on: false }, "17  00");
    golden(
        Request::LookupName {
            user: Some(1000),
            name: "web".into(),
        },
        "11  01 e8 07  03 77 65 62",
    );
    golden(
        Request::WaitName {
            user: None,
            name: "web".into(),
            bound: true,
            timeout_ms: 300,
        },
        "12  00  03 77 65 62  01  ac 02",
    );
    golden(Request::ListNames, "13");
    golden(
        Request::ForgetName { name: "web".into() },
        "14  03 77 65 62",
    );
    golden(
        Request::Publish {
            name: "web".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        },
        "15  03 77 65 62  00  90 3f",
    );
    golden(
        Request::UsePersistent {
            protocol: Protocol::Udp,
            start: 443,
            count: 1,
        },
        "16  01  bb 03  01",
    );
}

#[test]
fn responses() {
    golden(
        Response::Welcome(Welcome {
            version: 1,
            daemon_version: "0.1.0".into(),
            daemon_pid: 4121,
        }),
        "00  01  05 30 2e 31 2e 30  99 20",
    );
    golden(
        Response::Error(WireError::new(ErrorKind::Conflict, "busy")),
        "01  02  04 62 75 73 79  00",
    );
    golden(
        Response::Acquired(runtime_info()),
        &format!("02 {RUNTIME_INFO}"),
    );
    golden(
        Response::Released(runtime_info()),
        &format!("03 {RUNTIME_INFO}"),
    );
    golden(
        Response::List(vec![runtime_info(), persistent_info()]),
        &format!("04 02 {RUNTIME_INFO} {PERSISTENT_INFO}"),
    );
    golden(Response::List(vec![]), "04 00");
    golden(
        Response::Status(StatusInfo {
            version: "0.1.0".into(),
            protocol_version: 1,
            pid: 4121,
            socket: "/s".into(),
            started_at_ms: 5,
            pool: berth_core::Pool::new(40000, 40099).unwrap(),
            reservations: 2,
            tcp_ports: 2,
            udp_ports: 1,
            persistent: 1,
            pool_free: (98, 99),
            sessions: 1,
            open_files_limit: 1024,
            kernel_sync: false,
            kernel_sync_off_because: "x".into(),
            hold_sockets: 3,
            hold: true,
            hold_off_because: String::new(),
            open_files: 200,
            quota: Some(QuotaInfo {
                max_reservations: 10,
                max_ports: 100,
                max_held_ports: 50,
            }),
            usage: UsageInfo {
                reservations: 2,
                ports: 3,
                held_ports: 1,
            },
            ephemeral_share: Some(ShareInfo {
                range: PortRange::new(40000, 100).unwrap(),
                percent: 50,
                max_ports: 50,
                used: 3,
            }),
            users: vec![UserUsage {
                uid: 1000,
                usage: UsageInfo {
                    reservations: 2,
                    ports: 3,
                    held_ports: 1,
                },
            }],
            kernel_list: Some(KernelListInfo {
                reserved: 3,
                extras: 300,
                foreign: 1,
                repaired: 2,
                one_chunk: true,
            }),
            exposure: Some(ExposureInfo {
                ports: PortRange::new(40000, 100).unwrap(),
                ephemeral: PortRange::new(1024, 64512).unwrap(),
                refused: true,
            }),
            reuse_cool_down_s: 60,
            mode: "hold".into(),
            enforce_attached_at: None,
            enforce_unavailable_because: "x".into(),
            portserver: Some(PortserverInfo {
                address: "@p".into(),
                not_served_because: "y".into(),
                answered: 300,
                refused: 2,
            }),
        }),
        // … cool-down 60 (3c), mode "hold", not attached, unavailable because "x", the
        // endpoint "@p" not served because "y", 300 (ac 02) answered, 2 refused
        "05  05 30 2e 31 2e 30  01  99 20  02 2f 73  05  c0 b8 02 64  02  02  01  01 62 63  01  80 08  00  01 78  03  01 00  c8 01  01 0a 64 32  02 03 01  01 c0 b8 02 64 32 32 03  01 e8 07 02 03 01  01 03 ac 02 01 02 01  01 c0 b8 02 64 80 08 80 f8 03 01  3c  04 68 6f 6c 64  00  01 78  01 02 40 70 01 79  ac 02  02",
    );
    golden(Response::Associated { port: 8080 }, "06  90 3f");
    golden(
        Response::PersistentCreated(persistent_info()),
        &format!("07 {PERSISTENT_INFO}"),
    );
    golden(
        Response::PersistentDeleted(persistent_info()),
        &format!("08 {PERSISTENT_INFO}"),
    );
    golden(
        Response::PersistentFound(persistent_info()),
        &format!("09 {PERSISTENT_INFO}"),
    );
    golden(
        Response::Reclaimed(runtime_info()),
        &format!("0a {RUNTIME_INFO}"),
    );
    golden(Response::Stopping { pid: 4121 }, "0b  99 20");
    golden(
        Response::Transferred(runtime_info()),
        &format!("0c {RUNTIME_INFO}"),
    );
    golden(
        Response::AcquiredBoth {
            tcp: Box::new(runtime_info()),
            udp: Box::new(persistent_info()),
        },
        &format!("0e {RUNTIME_INFO} {PERSISTENT_INFO}"),
    );
    golden(
        Response::Named(vec![persistent_info()]),
        &format!("0f  01 {PERSISTENT_INFO}"),
    );
    golden(
        Response::Names(vec![NameInfo {
            name: "web".into(),
            protocol: Protocol::Udp,
            range: PortRange::new(8080, 1).unwrap(),
            last_used_ms: 300,
            live: true,
        }]),
        "10  01  03 77 65 62  01  90 3f 01  ac 02  01",
    );
    golden(
        Response::Why(Box::new(PortReport {
            protocol: Protocol::Tcp,
            port: 8081,
            reservation: Some(runtime_info()),
            sockets: vec![SocketInfo {
                local: "[::]:8081".into(),
                state: "LISTEN".into(),
                owner: Some(owner()),
                held_by_berth: false,
            }],
            in_pool: true,
            in_ephemeral_range: false,
            kernel_reserved: true,
            refusals: Some(RefusalInfo {
                count: 3,
                last_at_ms: 5,
                last_by: Some(owner()),
                last_cgroup: Some("/s".into()),
            }),
        })),
        // … refused 3 times, last at 5 ms by the owner, in /s
        &format!(
            "0d  00  91 3f  01 {RUNTIME_INFO}  01  09 5b 3a 3a 5d 3a 38 30 38 31  06 4c 49 53 54 45 4e  01 99 20 e8 07 02 6e 63  00  01  00  01  01 03 05 01 99 20 e8 07 02 6e 63 01 02 2f 73"
        ),
    );
}

#[test]
fn error_kinds() {
    for (i, kind) in ErrorKind::ALL.into_iter().enumerate() {
        golden(
            Response::Error(WireError::new(kind, "")),
            &format!("01 {i:02x} 00 00"),
        );
    }
}

#[test]
fn error_details() {
    golden(ErrorDetail::None, "00");
    golden(
        ErrorDetail::Ports(PortsDetail {
            protocol: Protocol::Tcp,
            start: 8080,
            count: 2,
            port: Some(8081),
            holder: Some(Holder {
                token: Token::new(300),
                kind: Some(Kind::Runtime),
                owner: Some(owner()),
            }),
        }),
        "01  00  90 3f  02  01 91 3f  01  01 ac 02  01 00  01 99 20 e8 07 02 6e 63",
    );
    golden(
        ErrorDetail::Ports(PortsDetail {
            protocol: Protocol::Udp,
            start: 0,
            count: 5,
            port: None,
            holder: Some(Holder {
                token: None,
                kind: None,
                owner: None,
            }),
        }),
        "01  01  00  05  00  01 00 00 00",
    );
    golden(
        ErrorDetail::Quota(QuotaDetail {
            what: QuotaWhat::Ports,
            limit: 1000,
            used: 990,
            asked: 20,
        }),
        "02  01  e8 07  de 07  14",
    );
    golden(
        ErrorDetail::Quota(QuotaDetail {
            what: QuotaWhat::Reservations,
            limit: 1,
            used: 1,
            asked: 1,
        }),
        "02  00  01  01  01",
    );
    golden(
        ErrorDetail::Quota(QuotaDetail {
            what: QuotaWhat::HeldPorts,
            limit: 2,
            used: 1,
            asked: 2,
        }),
        "02  02  02  01  02",
    );
    golden(
        ErrorDetail::Quota(QuotaDetail {
            what: QuotaWhat::EphemeralShare,
            limit: 1000,
            used: 990,
            asked: 20,
        }),
        "02  03  e8 07  de 07  14",
    );
    golden(
        ErrorDetail::Pool(PoolDetail {
            protocol: Protocol::Tcp,
            pool: berth_core::Pool::new(40000, 40099).unwrap(),
            count: 8,
            fragmented: true,
            privileged_skipped: false,
            within: Some((40000, 40099)),
        }),
        // within 40000 (c0 b8 02) to 40099 (a3 b9 02)
        "03  00  c0 b8 02 64  08  01  00  01 c0 b8 02 a3 b9 02",
    );
    golden(
        ErrorDetail::Busy(BusyDetail {
            limit: DaemonLimit::Connections,
            max: 4096,
            in_use: 4096,
        }),
        "04  00  80 20  80 20",
    );
    golden(
        ErrorDetail::Busy(BusyDetail {
            limit: DaemonLimit::OpenFiles,
            max: 1,
            in_use: 0,
        }),
        "04  01  01  00",
    );
    // 4026531840 = 0xf0000000: four empty groups of 7 bits, then 0b1111.
    golden(
        ErrorDetail::Namespaces(NamespacesDetail {
            daemon_netns: 4_026_531_840,
            peer_netns: 4_026_532_198,
        }),
        "05  80 80 80 80 0f  e6 82 80 80 0f",
    );
    golden(ErrorDetail::Token { token: 300 }, "06  ac 02");
    golden(ErrorDetail::Idle { timeout_ms: 300 }, "07  ac 02");
    golden(
        ErrorDetail::Name(NameDetail {
            protocol: Protocol::Tcp,
            name: "web".into(),
            holder: Holder {
                token: Token::new(300),
                kind: Some(Kind::Runtime),
                owner: None,
            },
        }),
        "08  00  03 77 65 62  01 ac 02  01 00  00",
    );
    golden(
        Response::Error(
            WireError::new(ErrorKind::Unavailable, "x")
                .with_detail(ErrorDetail::Idle { timeout_ms: 300 }),
        ),
        "01  08  01 78  07 ac 02",
    );
    // And inside a frame: the detail follows kind and message.
    golden(
        Response::Error(
            WireError::new(ErrorKind::NotSupported, "x")
                .with_detail(ErrorDetail::Token { token: 300 }),
        ),
        "01  01  01 78  06 ac 02",
    );
}

/// What lets `detail` evolve: readers that do not know it, or know less or more of it.
#[test]
fn error_detail_is_read_leniently() {
    let plain = WireError::new(ErrorKind::Conflict, "busy");
    // An older daemon sends no detail at all.
    let old: Response = postcard::from_bytes(&hex("01 02 04 62 75 73 79")).unwrap();
    assert_eq!(old, Response::Error(plain.clone()));
    // A newer daemon sends a detail variant this build does not know.
    let newer: Response = postcard::from_bytes(&hex("01 02 04 62 75 73 79 63 01 02")).unwrap();
    assert_eq!(newer, Response::Error(plain));
    // A newer daemon appends a field to a known detail: the rest is ignored.
    let longer: Response = postcard::from_bytes(&hex("01 02 04 62 75 73 79 06 ac 02 ff")).unwrap();
    assert_eq!(
        longer,
        Response::Error(
            WireError::new(ErrorKind::Conflict, "busy")
                .with_detail(ErrorDetail::Token { token: 300 })
        )
    );
    // A reader of kind and message only (the field cases' Python client) stops after the
    // message; the kind and message are where they always were.
    let bytes = postcard::to_allocvec(&Response::Error(
        WireError::new(ErrorKind::Conflict, "busy").with_detail(ErrorDetail::Token { token: 300 }),
    ))
    .unwrap();
    assert_eq!(bytes.get(..7), Some(&hex("01 02 04 62 75 73 79")[..]));
    // But a kind or message that is cut short is still an error.
    assert!(postcard::from_bytes::<Response>(&hex("01 02 04 62 75")).is_err());
}

use super::*;

#[test]
fn addresses_parse_and_print_back() {
    let a: Address = "@unittest-portserver".parse().unwrap();
    assert_eq!(a, Address::Abstract("unittest-portserver".into()));
    assert_eq!(a.to_string(), DEFAULT_ADDRESS);
    let p: Address = "/run/portserver.sock".parse().unwrap();
    assert_eq!(p, Address::Path("/run/portserver.sock".into()));
    assert!("@".parse::<Address>().is_err());
    assert!("".parse::<Address>().is_err());
    assert!("x".repeat(200).parse::<Address>().is_err());
}

/// A socket systemd passed refuses descriptors only from its adoption on: a connection queued
/// before keeps taking them, and each connection of it is asked (where the kernel can refuse
/// descriptors at all).
#[test]
fn connections_of_an_adopted_socket_are_each_asked_whether_they_refuse_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let listener = StdListener::bind(&path).unwrap();
    let early = StdStream::connect(&path).unwrap();
    // What `adopted` does to systemd's socket.
    let Ok(true) = berth_os::rights::pass_rights(&listener, false) else {
        eprintln!("skipped: this kernel cannot refuse descriptors at the socket (SO_PASSRIGHTS)");
        return;
    };
    let late = StdStream::connect(&path).unwrap();
    let (early_conn, _) = listener.accept().unwrap();
    let (late_conn, _) = listener.accept().unwrap();
    assert!(
        !Inline::AskEach.of(&early_conn),
        "queued before: takes descriptors"
    );
    assert!(Inline::AskEach.of(&late_conn));
    // A socket that refused them from the start is trusted for all.
    assert!(Inline::Yes.of(&early_conn));
    drop((early, late));
}

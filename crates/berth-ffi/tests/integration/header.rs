//! The committed `include/berth.h` is exactly what cbindgen generates from the sources.
//!
//! After changing an exported item, update it with
//! `BERTH_BLESS=1 cargo test -p berth-ffi --test header`.

use std::path::Path;

fn generate() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn the_committed_header_matches_the_sources() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/berth.h");
    let fresh = generate();
    if std::env::var_os("BERTH_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &fresh).expect("write include/berth.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is out of date with the sources; run `BERTH_BLESS=1 cargo test -p berth-ffi --test header` to update it, and commit it\n--- generated:\n{fresh}",
        path.display()
    );
}

#[test]
fn the_header_declares_the_spec_interface() {
    let header = generate();
    for line in [
        "typedef struct berth_port_range {",
        "} berth_port_range;",
        "typedef struct berth_port_reservation_instance {",
        "} berth_port_reservation_instance;",
        "int berth_acquire_port_reservation(int protocol,",
        "const struct sockaddr *local,",
        "socklen_t local_len);",
        "int berth_release_port_reservation(uint64_t token);",
        "const char *berth_last_error_message(void);",
        "enum berth_error_kind berth_last_error_kind(void);",
        "typedef enum berth_error_kind {",
        "BERTH_ERROR_KIND_NONE = 0,",
        "BERTH_ERROR_KIND_CONFLICT = 3,",
        "BERTH_ERROR_KIND_RESERVATION_FULL = 5,",
        "} berth_error_kind;",
        "#include <stdint.h>",
        "#include <sys/socket.h>",
        "#ifndef BERTH_H",
    ] {
        assert!(header.contains(line), "missing {line:?} in\n{header}");
    }
    for proto in ["tcp", "udp"] {
        for (verb, args) in [
            ("create", "uint16_t start, uint16_t count, uint64_t *token"),
            ("delete", "uint16_t start, uint16_t count"),
            ("lookup", "uint16_t start, uint16_t count, uint64_t *token"),
        ] {
            let decl = format!("int berth_{verb}_persistent_{proto}_port_reservation({args});");
            assert!(header.contains(&decl), "missing {decl:?} in\n{header}");
        }
    }
}

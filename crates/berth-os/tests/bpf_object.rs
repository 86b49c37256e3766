//! The committed BPF object (`bpf/enforce.bpf.o`, used where the pinned clang is missing) is
//! the one the source makes: when this build compiled the source with the pinned clang, the
//! two are the same bytes. After changing `bpf/enforce.bpf.c`, refresh it with the command in
//! `bpf/README.md`.

#[test]
fn the_committed_object_is_what_the_source_compiles_to() {
    let from = env!("BERTH_BPF_FROM");
    if from != "clang" {
        println!("SKIPPED: this build used the {from} object, not the pinned clang (Debian clang 14.0.6)");
        return;
    }
    let built: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/enforce.bpf.o"));
    let committed: &[u8] = include_bytes!("../bpf/enforce.bpf.o");
    assert!(
        built == committed,
        "bpf/enforce.bpf.o is stale: the source compiles to another object ({} bytes, committed {}); refresh it (bpf/README.md)",
        built.len(),
        committed.len()
    );
}

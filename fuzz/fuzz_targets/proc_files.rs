//! Arbitrary bytes into berth-os's `/proc` parsers — a process's `stat` and `status`
//! (`berth_os::proc`) and the `ip_local_reserved_ports` list (`berth_os::reserved_ports`):
//! never a panic, and
//! - the fields of `stat` are counted after its last `)`, whatever the command name holds;
//! - a `stat` and a `status` written as the kernel writes them, with a command name of any
//!   bytes (not UTF-8, cut inside a character, with spaces, parentheses and newlines) taken
//!   from the input, give back the values written into them;
//! - a reserved-ports list that parses reads back the same from what `write` writes for it,
//!   and so does any set of ports taken from the input;
//! - a sysctl configuration text (`reserved_ports::configured_in`) yields only ports that the
//!   list's own parser accepts, and a line written the way administrators write it gives its
//!   ports back.

#![no_main]

use berth_core::PortSet;
use berth_os::proc::{
    comm_from_stat, effective_caps_from_status, field_after_comm, groups_from_status, ids_from_status,
    parent_from_stat, process_text, start_time_from_stat,
};
use berth_os::reserved_ports;
use libfuzzer_sys::fuzz_target;

/// Reads the input front to back, and zeros past its end.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let taken = self.bytes(8);
        b[..taken.len()].copy_from_slice(taken);
        u64::from_le_bytes(b)
    }
    fn u32(&mut self) -> u32 {
        self.u64() as u32
    }
}

/// The name as the kernel keeps it: at most 15 bytes, none of them NUL.
fn command_name(input: &mut Input) -> Vec<u8> {
    let len = usize::from(input.bytes(1).first().copied().unwrap_or(0) % 16);
    input.bytes(len).iter().map(|&b| b.max(1)).collect()
}

/// Every parser on the input as it is.
fn parse_anything(data: &[u8]) {
    let text = process_text(data);
    for n in 0..24 {
        if let Some(field) = field_after_comm(&text, n) {
            assert!(!field.is_empty() && !field.contains(char::is_whitespace));
            let after = &text[text.rfind(')').unwrap()..];
            assert!(after.contains(field));
        }
    }
    assert_eq!(
        start_time_from_stat(&text),
        field_after_comm(&text, 19).and_then(|f| f.parse().ok())
    );
    assert_eq!(
        parent_from_stat(&text),
        field_after_comm(&text, 1).and_then(|f| f.parse().ok())
    );
    if let Some(comm) = comm_from_stat(&text) {
        assert!(text.contains(comm));
    }
    let _ = ids_from_status(&text);
    let _ = groups_from_status(&text);
    let _ = effective_caps_from_status(&text);

    // A sysctl file: any text is read without a panic; what it yields is a union of values
    // the list's parser accepts, so it is a list that round-trips.
    let configured = reserved_ports::configured_in(&text);
    assert_eq!(
        reserved_ports::parse(format!("{configured}\n").as_bytes()).expect("a list"),
        configured
    );

    if let Ok(set) = reserved_ports::parse(data) {
        // `write` writes the canonical form and a newline; it reads back as the same set, and
        // the canonical form of the canonical form is itself.
        let written = format!("{set}\n");
        let back = reserved_ports::parse(written.as_bytes()).expect("the written list parses");
        assert_eq!(back, set);
        assert_eq!(back.to_string(), set.to_string());
        // The same list as an administrator's sysctl line, among other lines.
        let file = format!("# berth\nnet.core.somaxconn = 4096\nnet.ipv4.ip_local_reserved_ports = {set}\n");
        assert_eq!(reserved_ports::configured_in(&file), set);
    }
}

/// `/proc/PID/stat` as `fs/proc/array.c` writes it, with the input's name and numbers.
fn stat_round_trip(input: &mut Input) {
    let name = command_name(input);
    let (pid, ppid, start) = (input.u32(), input.u32(), input.u64());
    let mut stat = format!("{pid} (").into_bytes();
    stat.extend_from_slice(&name);
    stat.extend_from_slice(
        format!(
            ") S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 1000 10 \
             18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n"
        )
        .as_bytes(),
    );
    let text = process_text(&stat);
    assert_eq!(start_time_from_stat(&text), Some(start), "{text:?}");
    assert_eq!(parent_from_stat(&text), Some(ppid), "{text:?}");
    assert_eq!(field_after_comm(&text, 0), Some("S"), "{text:?}");
    let name = process_text(&name);
    assert_eq!(comm_from_stat(&text), Some(name.trim_end()), "{text:?}");
}

/// `/proc/PID/status` as `fs/proc/array.c` writes it (the name escaped: no newline in it),
/// with the input's name, ids, groups and capabilities.
fn status_round_trip(input: &mut Input) {
    let mut name = Vec::new();
    for &b in &command_name(input) {
        match b {
            b'\n' => name.extend_from_slice(b"\\n"),
            b'\t' => name.extend_from_slice(b"\\t"),
            b'\\' => name.extend_from_slice(b"\\\\"),
            _ => name.push(b),
        }
    }
    let (uid, euid, gid, egid) = (input.u32(), input.u32(), input.u32(), input.u32());
    let count = usize::from(input.bytes(1).first().copied().unwrap_or(0) % 8);
    let groups: Vec<u32> = (0..count).map(|_| input.u32()).collect();
    let caps = input.u64();
    let mut status = b"Name:\t".to_vec();
    status.extend_from_slice(&name);
    let listed: String = groups.iter().map(|g| format!("{g} ")).collect();
    status.extend_from_slice(
        format!(
            "\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4121\nNgid:\t0\nPid:\t4121\n\
             PPid:\t1\nTracerPid:\t0\nUid:\t{uid}\t{euid}\t{euid}\t{euid}\n\
             Gid:\t{gid}\t{egid}\t{egid}\t{egid}\nFDSize:\t64\nGroups:\t{listed}\n\
             NStgid:\t4121\nCapInh:\t0000000000000000\nCapPrm:\t{caps:016x}\n\
             CapEff:\t{caps:016x}\nCapBnd:\t000001ffffffffff\n"
        )
        .as_bytes(),
    );
    let text = process_text(&status);
    assert_eq!(ids_from_status(&text), Some((uid, gid)), "{text:?}");
    assert_eq!(groups_from_status(&text), groups, "{text:?}");
    assert_eq!(effective_caps_from_status(&text), Some(caps), "{text:?}");
}

/// A set of ports from the input, written as `write` writes it, reads back as itself.
fn reserved_ports_round_trip(input: &mut Input) {
    let mut set = PortSet::new();
    let count = usize::from(input.bytes(1).first().copied().unwrap_or(0));
    for _ in 0..count {
        let [a, b, run] = [input.u32(), input.u32(), input.u32()];
        let start = (a ^ b) as u16;
        for port in start..=start.saturating_add((run % 64) as u16) {
            set.insert(port);
        }
    }
    let written = format!("{set}\n");
    assert_eq!(reserved_ports::parse(written.as_bytes()).ok(), Some(set));
}

fuzz_target!(|data: &[u8]| {
    parse_anything(data);
    let mut input = Input(data);
    stat_round_trip(&mut input);
    status_round_trip(&mut input);
    reserved_ports_round_trip(&mut input);
});

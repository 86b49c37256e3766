//! The descriptor/credential ledger (`berth_protocol::ledger`, the daemon's reader's) driven by arbitrary reads and decoded frames:
//! never a panic, consistent bookkeeping, and — until it first refuses the stream, when the
//! daemon closes the connection — bounded pending descriptors, every descriptor accounted for
//! and claimed at most once, by a frame from its own sender.

#![no_main]

use std::collections::{HashMap, HashSet};

use berth_protocol::ledger::{Ledger, Refusal, MAX_PENDING_FDS};
use libfuzzer_sys::fuzz_target;

/// One step, from five input bytes `[kind, lo, hi, x, y]` (see docs/fuzzing.md): kind % 4 is
/// 0 `Read { len: lo|hi<<8, fds: x, sender: y }`, 1 `Frame { len: lo|hi<<8, associate: x & 1 }`,
/// 2 `End { fds: x }`, 3 `Rest { associate: x & 1 }`.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// A read of `len` bytes from `sender` with `fds` descriptors.
    Read { len: u16, fds: u8, sender: u8 },
    /// The end of the stream, with `fds` descriptors.
    End { fds: u8 },
    /// A decoded frame of `len` bytes.
    Frame { len: u16, associate: bool },
    /// A decoded frame of all the bytes not yet decoded.
    Rest { associate: bool },
}

fn ops(data: &[u8]) -> impl Iterator<Item = Op> + '_ {
    data.chunks_exact(5).map(|c| {
        let len = u16::from_le_bytes([c[1], c[2]]);
        match c[0] % 4 {
            0 => Op::Read {
                len,
                fds: c[3],
                sender: c[4],
            },
            1 => Op::Frame {
                len,
                associate: c[3] & 1 == 1,
            },
            2 => Op::End { fds: c[3] },
            _ => Op::Rest {
                associate: c[3] & 1 == 1,
            },
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let mut ledger: Ledger<u32, u32> = Ledger::new();
    let mut next_fd = 0u32;
    // Each descriptor's sender, and those claimed.
    let mut sent_by: HashMap<u32, u32> = HashMap::new();
    let mut claimed: HashSet<u32> = HashSet::new();
    // The model, valid while the ledger has refused nothing.
    let (mut received, mut consumed) = (0u64, 0u64);
    let mut refused = false;
    // Each read's end and sender, in the model.
    let mut reads: Vec<(u64, u32)> = Vec::new();
    for op in ops(data) {
        match op {
            Op::Read { len, fds, sender } => {
                let sender = u32::from(sender % 4);
                let fds: Vec<u32> = (0..fds % 8)
                    .map(|_| {
                        next_fd += 1;
                        sent_by.insert(next_fd, sender);
                        next_fd
                    })
                    .collect();
                let n = fds.len();
                // The sender of the read holding the first byte not yet decoded.
                let started = reads.iter().find(|&&(end, _)| end > consumed).map(|r| r.1);
                let result = ledger.record(usize::from(len), fds, sender);
                if !refused {
                    if len > 0 && received > consumed && started.is_some_and(|s| s != sender) {
                        assert!(result.is_err(), "sender {sender} continued another's frame");
                    }
                    if result.is_ok() {
                        received += u64::from(len);
                        reads.push((received, sender));
                    } else {
                        refused = true;
                    }
                    if n > 4 || (len == 0 && n > 0) {
                        assert!(
                            result.is_err(),
                            "{n} descriptors with a read of {len} bytes accepted"
                        );
                    }
                }
            }
            Op::End { fds } => {
                let fds: Vec<u32> = (0..fds % 8).map(|i| 1_000_000 + i as u32).collect();
                let n = fds.len();
                let result = ledger.record(0, fds, 0);
                assert_eq!(result.is_ok(), n == 0, "end of stream with {n} descriptors");
                refused |= result.is_err();
            }
            Op::Frame { .. } | Op::Rest { .. } => {
                let (len, associate) = match op {
                    Op::Frame { len, associate } => (u64::from(len), associate),
                    Op::Rest { associate } => (received.saturating_sub(consumed), associate),
                    _ => unreachable!(),
                };
                let result = ledger.frame(len as usize, associate);
                if !refused {
                    if consumed + len > received || consumed == received {
                        assert!(
                            matches!(result, Err(Refusal::Unrecorded)),
                            "a frame of {len} bytes at {consumed} of {received}: {result:?}"
                        );
                    } else if let Err(e) = &result {
                        assert!(!matches!(e, Refusal::Unrecorded), "a frame within what was read");
                    }
                }
                match result {
                    Ok(claim) => {
                        if !refused {
                            consumed += len;
                        }
                        if let Some(fd) = claim.fd {
                            assert!(
                                associate,
                                "a descriptor for a frame that is not an associate"
                            );
                            assert!(claimed.insert(fd), "descriptor {fd} claimed twice");
                            if let Some(&from) = sent_by.get(&fd) {
                                assert_eq!(
                                    from, claim.sender,
                                    "descriptor {fd} given to another sender's frame"
                                );
                            }
                        }
                    }
                    Err(_) => refused = true,
                }
            }
        }
        if let Err(e) = ledger.check_invariants() {
            panic!("inconsistent ledger: {e}");
        }
        if !refused {
            assert!(
                ledger.pending() <= MAX_PENDING_FDS,
                "{} descriptors pending",
                ledger.pending()
            );
            assert_eq!(
                next_fd as usize,
                claimed.len() + ledger.pending(),
                "descriptors lost or invented"
            );
        }
    }
});

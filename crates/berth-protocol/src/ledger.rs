//! Which bytes of a shared connection came from whom, and with which descriptors: the pure
//! attribution of credentials and descriptors to frames — the receiving side of the rule that
//! a descriptor travels with the bytes of the one `Associate` frame it belongs to.
//!
//! The kernel facts it relies on: `recvmsg` on a stream socket returns the ancillary data
//! (descriptors, `SCM_CREDENTIALS`) with the first byte of the message they were sent with,
//! and never merges into one read the bytes of two messages whose senders' credentials differ;
//! so a frame's descriptor arrives in the read in which the frame starts. The daemon's reader
//! feeds each read and each decoded frame to a [`Ledger`], in order.

use std::collections::VecDeque;

/// Descriptors accepted in one `recvmsg`; a request carries at most one.
pub const MAX_FDS_PER_READ: usize = 4;

/// Descriptors received and not yet claimed by a request; more means a misbehaving client.
pub const MAX_PENDING_FDS: usize = 8;

/// Why a [`Ledger`] refuses the stream; `S` identifies a sender.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal<S> {
    /// More than [`MAX_FDS_PER_READ`] descriptors in one read.
    TooManyInOneRead(usize),
    /// More than [`MAX_PENDING_FDS`] descriptors not yet claimed by a frame.
    TooManyPending,
    /// A read from `continued` continues a frame that a read from `started` began.
    SenderChanged {
        /// The sender of the frame's first bytes.
        started: S,
        /// The sender of later bytes of it.
        continued: S,
    },
    /// Descriptors belong to a frame that is not an `Associate`.
    NotAnAssociate(usize),
    /// An `Associate` with more than one descriptor.
    SeveralForAssociate(usize),
    /// Descriptors in a read in which no frame starts.
    MidFrame(usize),
    /// A frame whose bytes no recorded read holds (a bug of the caller).
    Unrecorded,
}

/// What a decoded frame gets from the ledger.
#[derive(Debug, PartialEq, Eq)]
pub struct Claim<F, S> {
    /// The sender of the read in which the frame starts.
    pub sender: S,
    /// Its descriptor, for an `Associate` that starts last in a read that brought one.
    pub fd: Option<F>,
}

/// One read: its bytes' range in the stream, its descriptors and its sender.
struct Read<F, S> {
    start: u64,
    end: u64,
    fds: Vec<F>,
    sender: S,
}

/// Which bytes of a stream came from whom and with which descriptors, in stream offsets.
/// Pure: fed the length, descriptors and sender of each read ([`Ledger::record`]) and the
/// length of each frame decoded, in order ([`Ledger::frame`]), it says who sent the frame and
/// which descriptor it carries. Every complete frame must be decoded before the next read is
/// recorded.
pub struct Ledger<F, S> {
    /// The reads not yet wholly decoded, oldest first; contiguous, the first one holding
    /// `consumed`.
    reads: VecDeque<Read<F, S>>,
    /// Stream offset past the last byte received.
    received: u64,
    /// Stream offset of the next frame's first byte.
    consumed: u64,
    /// Descriptors held in `reads`.
    pending: usize,
}

impl<F, S: Copy + PartialEq> Ledger<F, S> {
    /// An empty ledger, as at the start of a connection.
    #[allow(
        clippy::new_without_default,
        reason = "a ledger is made, not defaulted"
    )]
    pub fn new() -> Self {
        Ledger {
            reads: VecDeque::new(),
            received: 0,
            consumed: 0,
            pending: 0,
        }
    }

    /// Notes one read of `len` bytes (0: end of stream) from `sender` with `fds`.
    pub fn record(&mut self, len: usize, fds: Vec<F>, sender: S) -> Result<(), Refusal<S>> {
        if fds.len() > MAX_FDS_PER_READ {
            return Err(Refusal::TooManyInOneRead(fds.len()));
        }
        if len == 0 {
            // End of stream: no bytes, and no sender worth comparing.
            return if fds.is_empty() {
                Ok(())
            } else {
                Err(Refusal::MidFrame(fds.len()))
            };
        }
        // Bytes not yet decoded are the start of a frame (every complete one was decoded):
        // only their sender may continue it.
        if self.received > self.consumed {
            if let Some(first) = self.reads.front() {
                if first.sender != sender {
                    return Err(Refusal::SenderChanged {
                        started: first.sender,
                        continued: sender,
                    });
                }
            }
        }
        let start = self.received;
        self.received = start.saturating_add(len as u64);
        self.pending += fds.len();
        self.reads.push_back(Read {
            start,
            end: self.received,
            fds,
            sender,
        });
        if self.pending > MAX_PENDING_FDS {
            return Err(Refusal::TooManyPending);
        }
        Ok(())
    }

    /// The next frame was decoded: `len` bytes, header included; `associate` says whether it
    /// is an `Associate`.
    pub fn frame(&mut self, len: usize, associate: bool) -> Result<Claim<F, S>, Refusal<S>> {
        let start = self.consumed;
        let end = start.saturating_add(len as u64);
        let Some(first) = self.reads.front() else {
            return Err(Refusal::Unrecorded);
        };
        if !(first.start <= start && start < first.end) || end > self.received {
            return Err(Refusal::Unrecorded);
        }
        let sender = first.sender;
        // The descriptors of the read in which this frame starts are its own if no later frame
        // starts in that read (taken once the reads after it pass, so that a refusal leaves
        // them counted where they are).
        let owns_first = first.end <= end;
        // Reads that begin inside this frame: the same sender, and no descriptors unless a
        // later frame starts in them.
        for read in self.reads.iter().skip(1) {
            if read.start >= end {
                break;
            }
            if read.sender != sender {
                return Err(Refusal::SenderChanged {
                    started: sender,
                    continued: read.sender,
                });
            }
            if read.end <= end && !read.fds.is_empty() {
                return Err(Refusal::MidFrame(read.fds.len()));
            }
        }
        let mut fds = match self.reads.front_mut() {
            Some(first) if owns_first => std::mem::take(&mut first.fds),
            _ => Vec::new(),
        };
        self.consumed = end;
        while self.reads.front().is_some_and(|r| r.end <= end) {
            self.reads.pop_front();
        }
        if self.reads.is_empty() {
            // A connection between requests holds no allocation for its reads (a thousand
            // idle connections would hold a thousand), and the next read's comes from the
            // allocator's per-thread cache.
            self.reads = VecDeque::new();
        }
        self.pending = self.reads.iter().map(|r| r.fds.len()).sum();
        let fd = match fds.len() {
            0 => None,
            _ if !associate => return Err(Refusal::NotAnAssociate(fds.len())),
            1 => fds.pop(),
            n => return Err(Refusal::SeveralForAssociate(n)),
        };
        Ok(Claim { sender, fd })
    }
}

impl<F, S> Ledger<F, S> {
    /// Descriptors received and not yet claimed by a frame.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Whether the ledger's own bookkeeping is consistent; a description of the first
    /// inconsistency otherwise.
    pub fn check_invariants(&self) -> Result<(), String> {
        let held: usize = self.reads.iter().map(|r| r.fds.len()).sum();
        if held != self.pending {
            return Err(format!("pending {} but reads hold {held}", self.pending));
        }
        if self.consumed > self.received {
            return Err(format!(
                "consumed {} past received {}",
                self.consumed, self.received
            ));
        }
        let mut at = None;
        for read in &self.reads {
            if read.start > read.end {
                return Err(format!(
                    "read {}..{} ends before it starts",
                    read.start, read.end
                ));
            }
            if at.is_some_and(|end| end != read.start) {
                return Err(format!(
                    "read {}..{} does not follow the one before",
                    read.start, read.end
                ));
            }
            at = Some(read.end);
        }
        if let Some(last) = self.reads.back() {
            if last.end != self.received {
                return Err(format!(
                    "last read ends at {} but received {}",
                    last.end, self.received
                ));
            }
        }
        if let Some(first) = self.reads.front() {
            if first.end <= self.consumed {
                return Err(format!(
                    "read {}..{} is wholly decoded (consumed {}) but kept",
                    first.start, first.end, self.consumed
                ));
            }
            if first.start > self.consumed {
                return Err(format!(
                    "first read starts at {} after consumed {}",
                    first.start, self.consumed
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// A ledger whose descriptors are labels and whose senders are pids.
    type TestLedger = Ledger<&'static str, u32>;

    const OWNER: u32 = 100;
    const CHILD: u32 = 200;

    fn claim(
        sender: u32,
        fd: Option<&'static str>,
    ) -> Result<Claim<&'static str, u32>, Refusal<u32>> {
        Ok(Claim { sender, fd })
    }

    #[test]
    fn one_frame_per_read_is_its_senders() {
        let mut l = TestLedger::new();
        l.record(10, vec![], OWNER).unwrap();
        assert_eq!(l.frame(10, false), claim(OWNER, None));
        l.record(7, vec![], CHILD).unwrap();
        assert_eq!(l.frame(7, false), claim(CHILD, None));
        l.record(12, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), claim(OWNER, Some("s")));
        assert_eq!(l.pending, 0);
        assert!(l.reads.is_empty());
    }

    #[test]
    fn the_descriptor_belongs_to_the_last_frame_starting_in_its_read() {
        // Status, then Associate with the socket: one read.
        let mut l = TestLedger::new();
        l.record(5 + 12, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(5, false), claim(OWNER, None));
        assert_eq!(l.frame(12, true), claim(OWNER, Some("s")));

        // Two associates in one read with one socket: the second has it, the first none.
        let mut l = TestLedger::new();
        l.record(24, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), claim(OWNER, None));
        assert_eq!(l.frame(12, true), claim(OWNER, Some("s")));
    }

    #[test]
    fn a_descriptor_with_a_frame_that_is_not_an_associate_is_refused() {
        let mut l = TestLedger::new();
        l.record(5, vec!["s"], CHILD).unwrap();
        assert_eq!(l.frame(5, false), Err(Refusal::NotAnAssociate(1)));

        // Associate first, then a List in the same read: the List would own the socket.
        let mut l = TestLedger::new();
        l.record(12 + 5, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), claim(OWNER, None));
        assert_eq!(l.frame(5, false), Err(Refusal::NotAnAssociate(1)));
    }

    #[test]
    fn an_associate_carries_exactly_one_descriptor() {
        let mut l = TestLedger::new();
        l.record(12, vec!["a", "b"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), Err(Refusal::SeveralForAssociate(2)));

        let mut l = TestLedger::new();
        l.record(12, vec![], OWNER).unwrap();
        assert_eq!(l.frame(12, true), claim(OWNER, None));
    }

    #[test]
    fn a_frame_split_over_reads_keeps_its_first_reads_sender_and_descriptor() {
        // The associate's first bytes and socket come in one read, the rest in two more.
        let mut l = TestLedger::new();
        l.record(5 + 3, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(5, false), claim(OWNER, None));
        l.record(4, vec![], OWNER).unwrap();
        l.record(5, vec![], OWNER).unwrap();
        assert_eq!(l.frame(12, true), claim(OWNER, Some("s")));
        assert!(l.reads.is_empty());
    }

    #[test]
    fn another_sender_may_not_continue_a_partial_frame() {
        // The child sends all but the last byte of an associate with its socket; the owner's
        // next bytes would complete it.
        let mut l = TestLedger::new();
        l.record(11, vec!["child's"], CHILD).unwrap();
        assert_eq!(
            l.record(5, vec![], OWNER),
            Err(Refusal::SenderChanged {
                started: CHILD,
                continued: OWNER
            })
        );

        // Whole frames of different senders, one after the other, are fine.
        let mut l = TestLedger::new();
        l.record(5, vec![], CHILD).unwrap();
        assert_eq!(l.frame(5, false), claim(CHILD, None));
        l.record(12, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), claim(OWNER, Some("s")));

        // Checked when the frame is decoded too, should reads come in without decoding.
        let mut l = TestLedger::new();
        l.record(3, vec![], CHILD).unwrap();
        l.reads.push_back(Read {
            start: 3,
            end: 5,
            fds: vec![],
            sender: OWNER,
        });
        l.received = 5;
        assert_eq!(
            l.frame(5, false),
            Err(Refusal::SenderChanged {
                started: CHILD,
                continued: OWNER
            })
        );
    }

    #[test]
    fn the_end_of_stream_is_no_other_sender() {
        let mut l = TestLedger::new();
        l.record(3, vec![], OWNER).unwrap();
        assert_eq!(l.record(0, vec![], 0), Ok(()));
        assert_eq!(l.record(0, vec!["x"], 0), Err(Refusal::MidFrame(1)));
    }

    #[test]
    fn descriptors_in_the_middle_of_a_frame_are_refused() {
        // The associate starts in a read without descriptors; its socket comes with later
        // bytes, in a read in which no frame starts.
        let mut l = TestLedger::new();
        l.record(2, vec![], OWNER).unwrap();
        l.record(10, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), Err(Refusal::MidFrame(1)));

        // A read that starts inside a frame and ends in the next one: the next one's.
        let mut l = TestLedger::new();
        l.record(3, vec![], OWNER).unwrap();
        l.record(2 + 12, vec!["s"], OWNER).unwrap();
        assert_eq!(l.frame(5, false), claim(OWNER, None));
        assert_eq!(l.frame(12, true), claim(OWNER, Some("s")));

        // Found by fuzz/ (ledger): the refusal leaves the first read's descriptor counted and
        // in place (it used to be taken, and dropped, before the later read was checked).
        let mut l = TestLedger::new();
        l.record(3, vec!["a"], OWNER).unwrap();
        l.record(9, vec!["b"], OWNER).unwrap();
        assert_eq!(l.frame(12, true), Err(Refusal::MidFrame(1)));
        assert_eq!(l.pending, 2);
        assert_eq!(l.reads.front().map(|r| r.fds.clone()), Some(vec!["a"]));
    }

    #[test]
    fn descriptor_counts_are_bounded() {
        let mut l = TestLedger::new();
        assert_eq!(
            l.record(1, vec!["a", "b", "c", "d", "e"], OWNER),
            Err(Refusal::TooManyInOneRead(5))
        );

        // A huge frame sent a byte at a time, each with a descriptor.
        let mut l = TestLedger::new();
        l.record(1, vec![], OWNER).unwrap();
        for _ in 0..MAX_PENDING_FDS {
            l.record(1, vec!["x"], OWNER).unwrap();
        }
        assert_eq!(l.record(1, vec!["x"], OWNER), Err(Refusal::TooManyPending));
    }

    #[test]
    fn a_frame_beyond_what_was_read_is_a_bug() {
        let mut l = TestLedger::new();
        assert_eq!(l.frame(5, false), Err(Refusal::Unrecorded));
        l.record(4, vec![], OWNER).unwrap();
        assert_eq!(l.frame(5, false), Err(Refusal::Unrecorded));
    }

    #[test]
    fn offsets_follow_the_stream() {
        let mut l = TestLedger::new();
        for i in 0..1000u32 {
            l.record(7, vec![], i % 3).unwrap();
            assert_eq!(l.frame(7, false), claim(i % 3, None));
        }
        assert_eq!((l.received, l.consumed), (7000, 7000));
        assert!(l.reads.is_empty());
    }

    mod attribution {
        //! Random well-behaved streams: several processes share a connection, each writing
        //! whole frames, an associate's descriptor sent with its frame's bytes; the kernel
        //! splits the stream into reads as it may (never across two senders, a read stopping
        //! right after bytes that carried descriptors). Every frame must be attributed to its
        //! sender, and exactly the associates must get their own descriptor.

        use super::*;
        use proptest::prelude::*;

        /// One frame as sent: its sender, its length and whether it is an associate.
        #[derive(Debug, Clone)]
        struct Sent {
            sender: u32,
            len: usize,
            associate: bool,
        }

        fn sent() -> impl Strategy<Value = Sent> {
            (0u32..3, 1usize..40, any::<bool>()).prop_map(|(sender, len, associate)| Sent {
                sender,
                len,
                associate,
            })
        }

        /// One read the kernel returns: its length, descriptors (frame indices) and sender.
        type ReadOut = (usize, Vec<usize>, u32);

        /// Splits the frames' bytes into reads; `cuts` decides how much each read takes.
        fn reads(frames: &[Sent], cuts: &[usize]) -> Vec<ReadOut> {
            let mut out: Vec<ReadOut> = Vec::new();
            let mut cut = cuts.iter().cycle();
            let mut i = 0;
            let mut offset = 0; // bytes of frames[i] already read
            while i < frames.len() {
                let sender = frames[i].sender;
                let mut want = *cut.next().unwrap_or(&1);
                let (mut len, mut fds) = (0, Vec::new());
                // Take bytes of consecutive frames of one sender.
                while i < frames.len() && frames[i].sender == sender && want > 0 {
                    let f = &frames[i];
                    if offset == 0 && f.associate {
                        fds.push(i);
                    }
                    let take = (f.len - offset).min(want);
                    len += take;
                    want -= take;
                    offset += take;
                    if offset == f.len {
                        i += 1;
                        offset = 0;
                        // The kernel stops a read after bytes that carried descriptors.
                        if frames[i - 1].associate {
                            break;
                        }
                    }
                }
                out.push((len, fds, sender));
            }
            out
        }

        proptest! {
            #[test]
            fn every_frame_is_attributed_to_its_sender_and_descriptor(
                frames in prop::collection::vec(sent(), 1..60),
                cuts in prop::collection::vec(1usize..100, 1..20),
            ) {
                let mut ledger: Ledger<usize, u32> = Ledger::new();
                let mut received = 0usize;
                let mut next = 0usize; // next frame to decode
                let mut decoded_bytes = 0usize;
                for (len, fds, sender) in reads(&frames, &cuts) {
                    ledger.record(len, fds, sender).unwrap();
                    received += len;
                    // Decode every complete frame before the next read (the ledger's rule).
                    while next < frames.len() && decoded_bytes + frames[next].len <= received {
                        let f = &frames[next];
                        let claim = ledger.frame(f.len, f.associate).unwrap();
                        prop_assert_eq!(claim.sender, f.sender);
                        prop_assert_eq!(claim.fd, f.associate.then_some(next));
                        decoded_bytes += f.len;
                        next += 1;
                    }
                }
                prop_assert_eq!(next, frames.len());
                prop_assert_eq!(ledger.pending, 0);
            }
        }
    }
}

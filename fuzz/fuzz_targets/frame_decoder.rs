//! Arbitrary bytes into the daemon's request decoder and a client's response decoder: never a
//! panic, and the same frames whether the bytes come at once or a few at a time.

#![no_main]

use std::fmt::Debug;

use berth_protocol::{FrameCodec, Request, Response, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

/// How a stream of bytes decodes: its frames, and whether decoding stopped at an error.
#[derive(Debug, PartialEq)]
struct Decoded<M> {
    frames: Vec<M>,
    error: bool,
}

/// Decodes `data` as a peer fed it `step` bytes per read (0: all at once), decoding every
/// complete frame after each read and stopping at the first error, as the daemon and clients do.
fn decode<M, O>(mut codec: FrameCodec<M, O>, data: &[u8], step: usize, max: usize) -> Decoded<M>
where
    M: DeserializeOwned + Debug,
{
    let mut buf = BytesMut::new();
    let mut out = Decoded {
        frames: Vec::new(),
        error: false,
    };
    let step = if step == 0 { data.len().max(1) } else { step };
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            let announced = buf
                .get(..4)
                .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize);
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    // A frame takes exactly its header and announced length, within the limit.
                    let len = announced.expect("a frame without a header");
                    assert!(len <= max, "a frame of {len} bytes over the limit {max}");
                    assert_eq!(before - buf.len(), 4 + len, "{frame:?}");
                    out.frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                    break;
                }
                Err(_) => {
                    out.error = true;
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The daemon's side: requests. Whole, then a byte at a time, then in uneven reads.
    let whole: Decoded<Request> = decode(FrameCodec::daemon(), data, 0, MAX_REQUEST_FRAME);
    for step in [1, 3 + data.len() % 61] {
        assert_eq!(
            decode(FrameCodec::daemon(), data, step, MAX_REQUEST_FRAME),
            whole,
            "requests fed {step} bytes at a time"
        );
    }
    // Every request decoded re-encodes to one that decodes to itself.
    for request in &whole.frames {
        let mut buf = BytesMut::new();
        if FrameCodec::client()
            .encode(request.clone(), &mut buf)
            .is_ok()
        {
            let again = FrameCodec::daemon().decode(&mut buf);
            assert_eq!(again.ok().flatten().as_ref(), Some(request));
            assert!(buf.is_empty());
        }
    }

    // A client's side: responses.
    let whole: Decoded<Response> = decode(FrameCodec::client(), data, 0, MAX_RESPONSE_FRAME);
    let step = 1 + data.len() % 17;
    assert_eq!(
        decode(FrameCodec::client(), data, step, MAX_RESPONSE_FRAME),
        whole,
        "responses fed {step} bytes at a time"
    );
});

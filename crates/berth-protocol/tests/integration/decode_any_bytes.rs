//! Whatever bytes a peer sends, decoding returns a message, "need more", or an error — never a
//! panic — and a valid request always survives a round trip. (A stand-in for a fuzz target
//! that runs on the stable toolchain in every CI run.)

use berth_protocol::{FrameCodec, FrameError, Request, Response, MAX_REQUEST_FRAME};
use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_daemon_decoder_survives_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut codec = FrameCodec::daemon();
        // Decode until it asks for more or fails; each step consumes or stops.
        for _ in 0..64 {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn the_client_decoder_survives_any_payload(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::try_from(payload.len()).unwrap());
        buf.put_slice(&payload);
        let result: Result<Option<Response>, FrameError> = FrameCodec::client().decode(&mut buf);
        // A complete frame is either a message or a clear error; never "need more".
        prop_assert!(!matches!(result, Ok(None)));
    }

    #[test]
    fn acquire_requests_round_trip(start in any::<u16>(), count in any::<u16>(), udp in any::<bool>()) {
        let protocol = if udp { berth_protocol::Protocol::Udp } else { berth_protocol::Protocol::Tcp };
        let request = Request::Acquire { protocol, start, count };
        let mut buf = BytesMut::new();
        FrameCodec::client().encode(request.clone(), &mut buf).unwrap();
        prop_assert!(buf.len() <= MAX_REQUEST_FRAME);
        prop_assert_eq!(FrameCodec::daemon().decode(&mut buf).unwrap(), Some(request));
    }
}

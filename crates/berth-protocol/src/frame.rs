//! Frames: a 4-byte big-endian length, then that many bytes of postcard payload.
//!
//! [`FrameCodec`] implements tokio-util's `Decoder`/`Encoder`, so it works with `FramedRead` /
//! `FramedWrite`, and its `decode` works on any buffer a caller filled itself (the daemon will
//! read with `recvmsg` to receive file descriptors alongside frames). An incomplete frame is
//! the normal state of a stream — `Ok(None)` — never an error.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

/// Largest request payload a daemon accepts. Requests are small; anything bigger is an attack
/// or a bug.
pub const MAX_REQUEST_FRAME: usize = 64 * 1024;

/// Largest response payload a client accepts (a full list of tens of thousands of
/// reservations fits).
pub const MAX_RESPONSE_FRAME: usize = 16 * 1024 * 1024;

const HEADER_LEN: usize = 4;

/// Why bytes could not become a message.
#[derive(Debug, Error)]
pub enum FrameError {
    /// Reading or writing the stream failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix exceeds the limit; the rest of the stream cannot be trusted.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// The bytes `message` takes in a frame after its length prefix: what a frame's limit
/// (`MAX_REQUEST_FRAME`, `MAX_RESPONSE_FRAME`) is compared with. Counted without encoding.
pub fn payload_len<T: serde::Serialize>(message: &T) -> usize {
    postcard::experimental::serialized_size(message).unwrap_or(0)
}

/// Encodes `Out` messages and decodes `In` messages, with a size limit on both.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    max_in: usize,
    max_out: usize,
    /// Whether bytes after the message in its frame are refused (the daemon's requests), or
    /// ignored (a client's responses: a newer daemon may append fields to a `WireError`).
    exact: bool,
    _messages: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    /// A codec that refuses incoming frames over `max_in` bytes and outgoing ones over
    /// `max_out`.
    pub fn new(max_in: usize, max_out: usize) -> Self {
        FrameCodec {
            max_in,
            max_out,
            exact: false,
            _messages: PhantomData,
        }
    }
}

impl FrameCodec<crate::Request, crate::Response> {
    /// The daemon's codec: reads requests, writes responses.
    pub fn daemon() -> Self {
        FrameCodec {
            // A request is exactly its message: bytes after it mean the client and the daemon
            // disagree about its shape.
            exact: true,
            ..FrameCodec::new(MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME)
        }
    }
}

impl FrameCodec<crate::Response, crate::Request> {
    /// A client's codec: reads responses, writes requests.
    pub fn client() -> Self {
        FrameCodec::new(MAX_RESPONSE_FRAME, MAX_REQUEST_FRAME)
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        let Some(header) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; HEADER_LEN];
        len_bytes.copy_from_slice(header);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max_in {
            return Err(FrameError::TooLong {
                len,
                max: self.max_in,
            });
        }
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len);
        let (message, rest) = postcard::take_from_bytes(&payload)
            .map_err(|e| FrameError::Malformed(e.to_string()))?;
        if self.exact && !rest.is_empty() {
            return Err(FrameError::Malformed(format!(
                "{} bytes follow the message in its frame",
                rest.len()
            )));
        }
        Ok(Some(message))
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let payload =
            postcard::to_allocvec(&item).map_err(|e| FrameError::Malformed(e.to_string()))?;
        if payload.len() > self.max_out {
            return Err(FrameError::TooLong {
                len: payload.len(),
                max: self.max_out,
            });
        }
        let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLong {
            len: payload.len(),
            max: self.max_out,
        })?;
        dst.reserve(HEADER_LEN + payload.len());
        dst.put_u32(len);
        dst.put_slice(&payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hello, Request, Response};
    use berth_core::Protocol;

    fn encode_request(req: Request) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::client().encode(req, &mut buf).unwrap();
        buf
    }

    #[test]
    fn payload_len_is_what_a_frame_carries_after_its_prefix() {
        let req = Request::Acquire {
            protocol: Protocol::Udp,
            start: 0,
            count: 3,
        };
        assert_eq!(payload_len(&req) + HEADER_LEN, encode_request(req).len());
    }

    #[test]
    fn round_trips_a_request() {
        let req = Request::Acquire {
            protocol: Protocol::Udp,
            start: 0,
            count: 3,
        };
        let mut buf = encode_request(req.clone());
        let got = FrameCodec::daemon().decode(&mut buf).unwrap();
        assert_eq!(got, Some(req));
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_frames_wait_for_more_bytes() {
        let full = encode_request(Request::Hello(Hello::current("t")));
        let mut codec = FrameCodec::daemon();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(full.get(..cut).unwrap());
            assert!(codec.decode(&mut part).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn refuses_oversized_frames_from_the_header_alone() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::try_from(MAX_REQUEST_FRAME + 1).unwrap());
        let err = FrameCodec::daemon().decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLong { .. }), "{err}");
    }

    #[test]
    fn refuses_malformed_payloads() {
        let mut buf = BytesMut::new();
        buf.put_u32(2);
        buf.put_slice(&[0xff, 0xff]);
        let err = FrameCodec::daemon().decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    /// The daemon refuses a request with bytes after it (client and daemon disagree about its
    /// shape); a client ignores bytes after a response (a newer daemon's `WireError` fields).
    #[test]
    fn bytes_after_a_request_are_refused_and_after_a_response_ignored() {
        let mut request = postcard::to_allocvec(&crate::Request::List).unwrap();
        request.extend_from_slice(b"extra");
        let mut buf = BytesMut::new();
        buf.put_u32(u32::try_from(request.len()).unwrap());
        buf.put_slice(&request);
        let err = FrameCodec::daemon().decode(&mut buf).unwrap_err();
        assert!(
            err.to_string().contains("5 bytes follow the message"),
            "{err}"
        );

        let mut response = postcard::to_allocvec(&crate::Response::List(vec![])).unwrap();
        response.extend_from_slice(b"newer");
        let mut buf = BytesMut::new();
        buf.put_u32(u32::try_from(response.len()).unwrap());
        buf.put_slice(&response);
        let got = FrameCodec::client().decode(&mut buf).unwrap();
        assert_eq!(got, Some(crate::Response::List(vec![])));
    }

    #[test]
    fn refuses_zero_token_in_responses() {
        // Token is NonZero on the wire: a response naming token 0 is malformed.
        // Response::Released, then the token as a varint: 0.
        let payload = vec![3u8, 0u8];
        let mut buf = BytesMut::new();
        buf.put_u32(u32::try_from(payload.len()).unwrap());
        buf.put_slice(&payload);
        let res: Result<Option<Response>, _> = FrameCodec::client().decode(&mut buf);
        assert!(res.is_err());
    }
}

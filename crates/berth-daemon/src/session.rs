//! One client connection: identify the peer, shake hands, answer requests in order, and
//! release the session's runtime reservations when it ends.

use std::sync::Arc;
use std::time::Duration;

use berth_core::ErrorKind;
use berth_protocol::{negotiate, FrameCodec, FrameError, Request, Response, Welcome};
use futures_util::SinkExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::inbound::{ReadError, Reader};
use crate::peer::peer_owner;
use crate::state::{error, Peer, Shared};

type Writer = FramedWrite<OwnedWriteHalf, FrameCodec<Request, Response>>;

/// Serves one connection until the client closes it, breaks the protocol, or the daemon shuts
/// down.
pub(crate) async fn serve_connection(
    stream: UnixStream,
    shared: Arc<Shared>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let owner = match peer_owner(&stream) {
        Ok(owner) => owner,
        Err(e) => {
            tracing::warn!("dropping a connection whose peer cannot be identified: {e}");
            return;
        }
    };
    // Per-message credentials tell a forked child using an inherited connection apart
    // from the process that opened it.
    if let Err(e) = rustix::net::sockopt::set_socket_passcred(&stream, true) {
        tracing::warn!("dropping a connection: cannot enable SO_PASSCRED: {e}");
        return;
    }
    let mut peer = shared.open_session(owner);
    let (rd, wr) = stream.into_split();
    let mut reader = Reader::new(rd);
    let mut writer = FramedWrite::new(wr, FrameCodec::daemon());

    if let Some(version) = handshake(&mut reader, &mut writer, &peer, &config).await {
        peer.version = version;
        serve_requests(&mut reader, &mut writer, &shared, &peer, &config, &shutdown).await;
    }
    // Writer first, reader last: the reader's drop hands the socket's read half to the
    // closer threads, because closing it closes any descriptors still queued unread, which can
    // block (see `closer`).
    drop(writer);
    drop(reader);
    if shutdown.is_cancelled() {
        // The daemon stops, the client does not: keep its reservations for the next daemon.
        shared.leave_session(&peer);
    } else {
        shared.close_session(&peer);
    }
}

/// Reads the hello and answers it; `None` when the connection should close.
async fn handshake(
    reader: &mut Reader,
    writer: &mut Writer,
    peer: &Peer,
    config: &Config,
) -> Option<u16> {
    let first = match tokio::time::timeout(config.handshake_timeout, reader.next()).await {
        Err(_) => {
            tracing::debug!(pid = peer.owner.pid, "no hello in time; closing");
            return None;
        }
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(inbound))) => Ok(inbound.request),
        Ok(Err(e)) => Err(e),
    };
    let reply = match first {
        Ok(Request::Hello(hello)) => match negotiate(&hello) {
            Ok(version) => {
                tracing::debug!(pid = peer.owner.pid, client = %berth_core::Owner::bound_command(&hello.client), version, "client connected");
                let welcome = Response::Welcome(Welcome {
                    version,
                    daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
                    daemon_pid: std::process::id(),
                });
                send(writer, welcome, config.write_timeout).await?;
                return Some(version);
            }
            Err(e) => error(ErrorKind::Incompatible, e.to_string()),
        },
        Ok(_) => error(
            ErrorKind::Incompatible,
            "the first frame must be a berth Hello; is this a berth client of a matching protocol?"
                .into(),
        ),
        Err(e) => frame_error_reply(&e)?,
    };
    send(writer, reply, config.write_timeout).await;
    None
}

async fn serve_requests(
    reader: &mut Reader,
    writer: &mut Writer,
    shared: &Shared,
    peer: &Peer,
    config: &Config,
    shutdown: &CancellationToken,
) {
    let owner_exit = crate::owner_watch::owner_exit(&peer.owner);
    tokio::pin!(owner_exit);
    loop {
        // Biased: what the client sent (or its end of stream) comes first, so an ordinary exit
        // is seen as the connection closing rather than as the owner dying.
        let frame = tokio::select! {
            biased;
            frame = reader.next() => frame,
            () = shutdown.cancelled() => return,
            () = &mut owner_exit => {
                tracing::debug!(pid = peer.owner.pid, "the session's owner exited while its connection stayed open (inherited by a child?); ending the session");
                return;
            }
        };
        match frame {
            Ok(None) => return,
            Ok(Some(inbound)) => {
                let response = shared.handle(inbound, peer).await;
                if send(writer, response, config.write_timeout).await.is_none() {
                    return;
                }
            }
            Err(e) => {
                if let Some(reply) = frame_error_reply(&e) {
                    send(writer, reply, config.write_timeout).await;
                }
                return;
            }
        }
    }
}

/// The reply to a frame that could not be read; `None` when the connection itself failed.
fn frame_error_reply(e: &ReadError) -> Option<Response> {
    let e = match e {
        ReadError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Some(error(
                ErrorKind::InvalidArgument,
                format!("{e}; the connection is closed"),
            ))
        }
        ReadError::Io(e) => {
            tracing::debug!("connection failed: {e}");
            return None;
        }
        ReadError::Frame(e) => e,
    };
    tracing::info!("closing a connection: {e}");
    match e {
        FrameError::Io(_) => None,
        FrameError::TooLong { len, max } => Some(error(
            ErrorKind::InvalidArgument,
            format!("request frame of {len} bytes exceeds the limit of {max} bytes; the connection is closed"),
        )),
        FrameError::Malformed(why) => Some(error(
            ErrorKind::InvalidArgument,
            format!("malformed or unknown request ({why}); the connection is closed — check that client and daemon are the same berth release"),
        )),
    }
}

/// Writes one response; `None` when the client is gone or does not read in time.
async fn send(writer: &mut Writer, response: Response, limit: Duration) -> Option<()> {
    match tokio::time::timeout(limit, writer.send(response)).await {
        Ok(Ok(())) => Some(()),
        Ok(Err(e)) => {
            tracing::debug!("cannot answer a client: {e}");
            None
        }
        Err(_) => {
            tracing::info!("a client did not read its answer within {limit:?}; closing it");
            None
        }
    }
}

//! Token streaming (`/suanli/tokens/1`): one libp2p substream per model request, carrying
//! length-prefixed frames (a 4-byte big-endian length, then a framed [`WireMessage`]), each
//! capped at the message's `MAX_BYTES` before it is read. The frames and what they mean are
//! `suanli_protocol::tokens`; this module only moves them.
//!
//! A request from this node to itself goes over an in-process pipe ([`TokenStream::local_pair`])
//! with the same framing, so a node serving its own clients runs the same code path.

use std::io;
use std::time::Duration;

use futures::StreamExt;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use suanli_protocol::NodeId;
use suanli_protocol::tokens::TOKENS_PROTOCOL;
use suanli_protocol::wire::WireMessage;
use tokio::time::Instant;
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::{NetworkHandle, RequestError};

/// The most a peer may stay silent in the middle of an exchange (a long prompt's prefill on a
/// busy provider comes before the first text frame).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(120);
/// The most opening a stream may take, a dial included.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Buffer of an in-process pipe.
const LOCAL_PIPE_BYTES: usize = 256 * 1024;

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream: {0}")]
    Io(#[from] io::Error),
    #[error("the peer sent nothing for {0:?}")]
    Timeout(Duration),
    #[error("frame of {len} bytes is above the cap of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// One substream of `/suanli/tokens/1` with its authenticated peer.
pub struct TokenStream {
    peer: NodeId,
    io: Box<dyn Duplex>,
}

impl std::fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStream")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl TokenStream {
    /// Two connected ends of an in-process stream between this node and itself.
    pub fn local_pair(me: NodeId) -> (TokenStream, TokenStream) {
        let (a, b) = tokio::io::duplex(LOCAL_PIPE_BYTES);
        (
            TokenStream {
                peer: me,
                io: Box::new(a.compat()),
            },
            TokenStream {
                peer: me,
                io: Box::new(b.compat()),
            },
        )
    }

    /// The node at the other end (authenticated by the connection's handshake).
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Splits the stream into its reading and writing halves, to read while writing.
    pub fn split(self) -> (FrameReader, FrameWriter) {
        let (read, write) = self.io.split();
        (
            FrameReader { io: Box::new(read) },
            FrameWriter {
                io: Box::new(write),
            },
        )
    }
}

/// The reading half of a [`TokenStream`].
pub struct FrameReader {
    io: Box<dyn AsyncRead + Unpin + Send>,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader").finish_non_exhaustive()
    }
}

/// The writing half of a [`TokenStream`].
pub struct FrameWriter {
    io: Box<dyn AsyncWrite + Unpin + Send>,
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter").finish_non_exhaustive()
    }
}

impl FrameWriter {
    /// Writes one frame and flushes it.
    pub async fn send<T: WireMessage>(&mut self, message: &T) -> Result<(), FrameError> {
        let bytes = message
            .to_bytes()
            .map_err(|error| FrameError::Malformed(error.to_string()))?;
        let len = u32::try_from(bytes.len()).map_err(|_| FrameError::TooLarge {
            len: bytes.len(),
            max: T::MAX_BYTES,
        })?;
        let write = async {
            self.io.write_all(&len.to_be_bytes()).await?;
            self.io.write_all(&bytes).await?;
            self.io.flush().await
        };
        tokio::time::timeout(FRAME_TIMEOUT, write)
            .await
            .map_err(|_| FrameError::Timeout(FRAME_TIMEOUT))??;
        Ok(())
    }

    /// Closes the stream for writing (the peer reads its end).
    pub async fn close(&mut self) {
        let _ = self.io.close().await;
    }
}

impl FrameReader {
    /// Reads one frame; `None` when the peer closed the stream cleanly before a new frame. Not
    /// cancel-safe: read each stream from one task.
    pub async fn recv<T: WireMessage>(&mut self) -> Result<Option<T>, FrameError> {
        self.recv_within(FRAME_TIMEOUT).await
    }

    /// [`recv`](Self::recv) with another silence limit.
    pub async fn recv_within<T: WireMessage>(
        &mut self,
        limit: Duration,
    ) -> Result<Option<T>, FrameError> {
        let read = async {
            let mut len = [0u8; 4];
            let mut got = 0;
            while got < len.len() {
                let n = self.io.read(&mut len[got..]).await?;
                if n == 0 {
                    if got == 0 {
                        return Ok(None);
                    }
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
                got += n;
            }
            let len = u32::from_be_bytes(len) as usize;
            if len > T::MAX_BYTES {
                return Err(FrameError::TooLarge {
                    len,
                    max: T::MAX_BYTES,
                });
            }
            let mut bytes = vec![0u8; len];
            self.io.read_exact(&mut bytes).await?;
            T::from_bytes(&bytes)
                .map(Some)
                .map_err(|error| FrameError::Malformed(error.to_string()))
        };
        tokio::time::timeout(limit, read)
            .await
            .map_err(|_| FrameError::Timeout(limit))?
    }
}

/// Inbound token streams, as they arrive.
pub struct IncomingTokenStreams {
    inner: libp2p_stream::IncomingStreams,
}

impl std::fmt::Debug for IncomingTokenStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingTokenStreams")
            .finish_non_exhaustive()
    }
}

impl IncomingTokenStreams {
    /// The next inbound stream whose peer has an ed25519 identity; `None` when the network is
    /// gone.
    pub async fn next(&mut self) -> Option<TokenStream> {
        loop {
            let (peer, stream) = self.inner.next().await?;
            match NodeId::from_peer_id(&peer) {
                Ok(node) => {
                    return Some(TokenStream {
                        peer: node,
                        io: Box::new(stream),
                    });
                }
                Err(error) => tracing::debug!(%peer, %error, "token stream from a non-suanli peer"),
            }
        }
    }
}

impl NetworkHandle {
    /// Opens a token stream to `peer`, dialling it first if it holds no live connection.
    ///
    /// The stream is asked for only once this node's network loop has seen a connection come
    /// up (every behaviour has by then). Asked for without one, libp2p-stream dials by itself
    /// with fewer addresses, and loses a stream asked for in the instant a connection comes up
    /// (it learns of the connection's handler before the connection): it would wait for
    /// another connection.
    pub async fn open_token_stream(&self, peer: NodeId) -> Result<TokenStream, RequestError> {
        let deadline = Instant::now() + OPEN_TIMEOUT;
        tokio::time::timeout_at(deadline, self.dial(peer))
            .await
            .map_err(|_| RequestError::Timeout)??;
        let mut control = self.streams.clone();
        let open = control.open_stream(peer.to_peer_id(), StreamProtocol::new(TOKENS_PROTOCOL));
        let stream = tokio::time::timeout_at(deadline, open)
            .await
            .map_err(|_| RequestError::Timeout)?
            .map_err(|error| RequestError::Unreachable(error.to_string()))?;
        Ok(TokenStream {
            peer,
            io: Box::new(stream),
        })
    }

    /// Starts accepting inbound token streams; once per node (a second call fails).
    pub fn accept_token_streams(&self) -> Result<IncomingTokenStreams, String> {
        let mut control = self.streams.clone();
        control
            .accept(StreamProtocol::new(TOKENS_PROTOCOL))
            .map(|inner| IncomingTokenStreams { inner })
            .map_err(|error| error.to_string())
    }
}

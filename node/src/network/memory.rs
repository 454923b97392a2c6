//! The in-process memory transport, for simulations of large meshes (`suanli bench gossip` with
//! hundreds of nodes in one process): the node's full stack (noise, yamux, every behaviour) over
//! `/memory/N` addresses instead of sockets, with every byte read counted.
//!
//! A node uses it when every address it listens on is a `/memory/` one; production nodes never
//! do.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, MemoryTransport, Transport};
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, noise, yamux};

/// Bytes read from every memory-transport connection of this process (all protocols, all
/// nodes), for the bench's bytes-per-node figures.
pub static BYTES_READ: AtomicU64 = AtomicU64::new(0);

/// A memory address no other listener of this process uses.
pub fn unique_addr() -> Multiaddr {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Multiaddr::empty().with(Protocol::Memory(
        NEXT.fetch_add(1, Ordering::Relaxed) + (u64::from(std::process::id()) << 32),
    ))
}

/// Whether `listen` names only memory addresses (and at least one).
pub fn is_memory_only<'a>(listen: impl IntoIterator<Item = &'a Multiaddr>) -> bool {
    let mut any = false;
    for addr in listen {
        if !addr
            .iter()
            .any(|protocol| matches!(protocol, Protocol::Memory(_)))
        {
            return false;
        }
        any = true;
    }
    any
}

/// Memory transport with the node's security and multiplexing, counting the bytes read.
pub fn transport(
    key: &libp2p::identity::Keypair,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(MemoryTransport::default()
        .map(|channel, _| Counted(channel))
        .upgrade(Version::V1)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// A connection whose reads are added to [`BYTES_READ`].
struct Counted<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.0).poll_read(cx, buf);
        if let Poll::Ready(Ok(read)) = &poll {
            BYTES_READ.fetch_add(*read as u64, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

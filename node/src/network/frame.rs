//! One length-prefixed frame: a 4-byte big-endian length, then that many bytes, the length
//! checked against a cap before anything is allocated. [`super::frame_codec::FrameCodec`] frames
//! request-response messages with it.
//!
//! Generic over `futures`' async I/O and nothing else: it names no libp2p type and no other
//! module of the node, so the fuzz target `frame` compiles this very file alone
//! (fuzz/fuzz_targets/frame.rs). It must never grow a `crate::` or `super::` path.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a frame's buffer holds before its bytes arrive; it grows as they do.
pub const FIRST_READ_BYTES: usize = 64 * 1024;

/// Reads one frame of at most `max` bytes.
pub async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = usize::try_from(u32::from_be_bytes(len))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame length"))?;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the cap of {max}"),
        ));
    }
    // The buffer grows with the bytes that arrive, never to the announced length up front: a
    // peer announcing the cap on every stream and sending nothing would otherwise make this node
    // reserve the cap per stream (256 streams a connection) for as long as the streams last.
    let mut bytes = Vec::with_capacity(len.min(FIRST_READ_BYTES));
    let announced = u64::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame length"))?;
    io.take(announced).read_to_end(&mut bytes).await?;
    if bytes.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame of {len} bytes ended after {}", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// Writes `bytes` as one frame and closes the writing side; refuses more than `max` bytes.
pub async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds the cap of {max}", bytes.len()),
        ));
    }
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[tokio::test]
    async fn frames_round_trip_and_caps_hold() {
        let mut buffer = Cursor::new(Vec::new());
        write_frame(&mut buffer, b"hello", 16).await.unwrap();
        assert_eq!(buffer.get_ref()[..4], [0, 0, 0, 5]);
        let mut reader = Cursor::new(buffer.into_inner());
        assert_eq!(read_frame(&mut reader, 16).await.unwrap(), b"hello");
        // A length prefix beyond the cap is refused before allocating.
        let mut huge = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            read_frame(&mut huge, 16).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A truncated frame is an error, not a hang or a panic.
        let mut short = Cursor::new(vec![0, 0, 0, 9, 1, 2]);
        assert!(read_frame(&mut short, 16).await.is_err());
        let mut sink = Cursor::new(Vec::new());
        assert!(write_frame(&mut sink, &[0; 17], 16).await.is_err());
    }

    /// Serves a length prefix and then `body`, and remembers the largest buffer it was asked to
    /// fill: what the codec had allocated for the frame before its bytes came.
    struct Announcing {
        bytes: Vec<u8>,
        at: usize,
        largest_ask: usize,
    }

    impl AsyncRead for Announcing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let this = &mut *self;
            this.largest_ask = this.largest_ask.max(buf.len());
            let n = buf.len().min(this.bytes.len() - this.at);
            buf[..n].copy_from_slice(&this.bytes[this.at..this.at + n]);
            this.at += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[tokio::test]
    async fn an_announced_length_reserves_nothing_before_the_bytes_arrive() {
        let cap = 16 << 20;
        let mut bytes = u32::try_from(cap).unwrap().to_be_bytes().to_vec();
        bytes.extend_from_slice(b"only this");
        let mut reader = Announcing {
            bytes,
            at: 0,
            largest_ask: 0,
        };
        let error = read_frame(&mut reader, cap).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            reader.largest_ask <= FIRST_READ_BYTES,
            "a buffer of {} bytes for 9 bytes received",
            reader.largest_ask
        );
        // A whole frame still reads back exactly.
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut framed = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        framed.extend_from_slice(b"next frame");
        let mut reader = Cursor::new(framed);
        assert_eq!(read_frame(&mut reader, cap).await.unwrap(), body);
    }
}

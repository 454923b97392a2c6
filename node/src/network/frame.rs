//! One length-prefixed frame: a 4-byte big-endian length, then that many bytes, the length
//! checked against a cap before anything is allocated. [`super::frame_codec::FrameCodec`] frames
//! request-response messages with it.
//!
//! Generic over `futures`' async I/O and nothing else: it names no libp2p type and no other
//! module of the node, so the fuzz target `frame` compiles this very file alone
//! (fuzz/fuzz_targets/frame.rs). It must never grow a `crate::` or `super::` path.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    let mut bytes = vec![0u8; len];
    io.read_exact(&mut bytes).await?;
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
}

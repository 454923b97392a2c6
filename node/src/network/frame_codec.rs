//! Framing for request-response protocols: one message per stream direction, as a 4-byte
//! big-endian length followed by that many bytes, capped before anything is allocated.
//! Decoding the bytes into protocol messages happens in the event loop, where the sending peer is
//! known and can be penalised for malformed input.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;

/// A length-prefixed byte frame codec with a size cap.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_bytes: usize,
}

impl FrameCodec {
    pub fn new(max_bytes: usize) -> FrameCodec {
        FrameCodec { max_bytes }
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
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

async fn write_frame<T: AsyncWrite + Unpin + Send>(
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

impl Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_bytes).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_bytes).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &request, self.max_bytes).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &response, self.max_bytes).await
    }
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

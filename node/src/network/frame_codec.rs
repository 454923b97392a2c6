//! Framing for request-response protocols: one message per stream direction, as a 4-byte
//! big-endian length followed by that many bytes, capped before anything is allocated.
//! Decoding the bytes into protocol messages happens in the event loop, where the sending peer is
//! known and can be penalised for malformed input.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;

/// What a frame's buffer holds before its bytes arrive; it grows as they do.
const FIRST_READ_BYTES: usize = 64 * 1024;

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
        match read_frame(io, self.max_bytes).await {
            // libp2p-request-response tells no one of a request that failed to read (it logs it
            // at debug level), so its sender could not be penalised. An over-long request is
            // handed on as the empty request instead, which no protocol accepts: the event loop
            // refuses it and strikes its sender like any malformed request, unread.
            Err(error) if error.kind() == io::ErrorKind::InvalidData => Ok(Vec::new()),
            read => read,
        }
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

    #[tokio::test]
    async fn an_over_long_request_reads_as_the_empty_request() {
        let protocol = StreamProtocol::new("/test/1");
        let mut codec = FrameCodec::new(16);
        let mut huge = Cursor::new(vec![0, 0, 0, 17, 1, 2, 3]);
        let request = codec.read_request(&protocol, &mut huge).await.unwrap();
        assert!(request.is_empty());
        // A truncated request stays an error (a broken stream, not a malformed message), and an
        // over-long response too (the requester's own request fails).
        let mut short = Cursor::new(vec![0, 0, 0, 9, 1, 2]);
        assert!(codec.read_request(&protocol, &mut short).await.is_err());
        let mut huge = Cursor::new(vec![0, 0, 0, 17, 1, 2, 3]);
        assert!(codec.read_response(&protocol, &mut huge).await.is_err());
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

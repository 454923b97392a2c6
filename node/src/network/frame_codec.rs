//! Framing for request-response protocols: one message per stream direction, as a 4-byte
//! big-endian length followed by that many bytes, capped before anything is allocated.
//! Decoding the bytes into protocol messages happens in the event loop, where the sending peer is
//! known and can be penalised for malformed input. The frame format itself is
//! [`super::frame`].

use std::io;

use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;

use super::frame::{read_frame, write_frame};

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
}

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

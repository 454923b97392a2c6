//! The request-response frame (`FrameCodec`): a 4-byte big-endian length and that many bytes,
//! read one after the other from a stream as a peer sends them.
//!
//! `node/src/network/frame.rs` is compiled here as it is (it names nothing of the node), so
//! the target runs the node's own code without building libp2p.
//!
//! The first two bytes give the cap; the rest is the stream. Properties: nothing panics and no
//! frame exceeds the cap (a length beyond it is refused before any allocation, which libFuzzer's
//! malloc limit would catch); the frames read, written back with `write_frame`, are exactly the
//! bytes consumed; the read that ends the stream fails for the reason its bytes give.
#![no_main]

#[path = "../../node/src/network/frame.rs"]
mod frame;

use std::io;

use frame::{read_frame, write_frame};
use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((max, stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(u16::from_le_bytes(*max));
    let mut reader = Cursor::new(stream);
    let mut written = Vec::new();
    let error = loop {
        let at = reader.position() as usize;
        match block_on(read_frame(&mut reader, max)) {
            Ok(bytes) => {
                assert!(bytes.len() <= max);
                let mut one = Cursor::new(Vec::new());
                block_on(write_frame(&mut one, &bytes, max)).expect("a frame read writes back");
                assert_eq!(
                    one.get_ref().as_slice(),
                    &stream[at..reader.position() as usize]
                );
                written.extend_from_slice(one.get_ref());
            }
            Err(error) => break (at, error),
        }
    };
    assert_eq!(written.as_slice(), &stream[..error.0]);
    let rest = &stream[error.0..];
    match rest.split_first_chunk::<4>() {
        None => assert_eq!(error.1.kind(), io::ErrorKind::UnexpectedEof),
        Some((len, body)) => {
            let len = u32::from_be_bytes(*len) as usize;
            if len > max {
                assert_eq!(error.1.kind(), io::ErrorKind::InvalidData);
            } else {
                assert!(body.len() < len);
                assert_eq!(error.1.kind(), io::ErrorKind::UnexpectedEof);
            }
        }
    }
});

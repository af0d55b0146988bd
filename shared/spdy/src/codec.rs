//! Frames to and from bytes, with the connection's header compression: one zlib stream per
//! direction, both primed with the SPDY/3 dictionary, every header block ending in a sync
//! flush (so each frame's block is complete and the stream goes on in the next). A decoder
//! and an encoder are separate values because each direction has its own zlib stream.

use crate::Frame;
use crate::dictionary::DICTIONARY;
use crate::frame::{FrameError, FrameHead, Headers, VERSION, parse_control, write_frame};
use bytes::{Buf, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The largest frame payload read (a header block or a DATA frame): 16 MiB - 1 is what the
/// 24-bit length allows; anything a streaming client sends is far smaller.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// The largest decompressed header block accepted.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Reads frames from bytes, inflating header blocks.
pub struct FrameDecoder {
    inflate: Decompress,
    max_frame: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        Self { inflate: Decompress::new(true), max_frame }
    }

    /// Inflates one header block (the continuation of this direction's zlib stream).
    pub fn inflate(&mut self, block: &[u8]) -> Result<Headers, FrameError> {
        let bad = |e: &dyn std::fmt::Display| FrameError::Compression(e.to_string());
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let before = self.inflate.total_in();
            let result = self.inflate.decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - before) as usize;
            input = &input[consumed..];
            match result {
                Ok(Status::StreamEnd) => return Err(bad(&"the peer ended its header stream")),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(DICTIONARY).map_err(|e| bad(&e))?;
                    continue;
                }
                Err(e) => return Err(bad(&e)),
            }
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if out.len() >= MAX_HEADER_BLOCK {
                return Err(FrameError::Headers(format!("block inflates past {MAX_HEADER_BLOCK} bytes")));
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(256));
            } else if consumed == 0 {
                return Err(bad(&"no progress inflating a header block"));
            }
        }
        Headers::decode(&out)
    }
}

impl tokio_util::codec::Decoder for FrameDecoder {
    type Item = Frame;
    type Error = crate::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, crate::Error> {
        if src.len() < 8 {
            return Ok(None);
        }
        let mut head = [0u8; 8];
        head.copy_from_slice(&src[..8]);
        let head = FrameHead::parse(head);
        if head.len() > self.max_frame {
            return Err(FrameError::TooLarge(head.len()).into());
        }
        if src.len() < 8 + head.len() {
            src.reserve(8 + head.len() - src.len());
            return Ok(None);
        }
        src.advance(8);
        let payload = src.split_to(head.len());
        let frame = match head {
            FrameHead::Data { stream_id, flags, .. } => Frame::Data { stream_id, flags, data: payload.freeze() },
            FrameHead::Control { version, kind, flags, .. } => {
                if version != VERSION {
                    return Err(FrameError::Version(version).into());
                }
                parse_control(kind, flags, &payload, &mut |block| self.inflate(block))?
            }
        };
        Ok(Some(frame))
    }
}

/// Writes frames to bytes, deflating header blocks.
pub struct FrameEncoder {
    deflate: Compress,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameEncoder {
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // A fresh stream always takes a dictionary; this cannot fail before the first byte.
        let _ = deflate.set_dictionary(DICTIONARY);
        Self { deflate }
    }

    /// Deflates one header block, ending with a sync flush.
    pub fn deflate(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        let mut plain = BytesMut::new();
        headers.encode(&mut plain);
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(256));
        }
    }
}

impl tokio_util::codec::Encoder<Frame> for FrameEncoder {
    type Error = crate::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), crate::Error> {
        write_frame(&frame, dst, &mut |h| self.deflate(h))?;
        Ok(())
    }
}

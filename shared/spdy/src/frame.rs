//! SPDY/3.1 frames as values, and their wire layout (SPDY draft 3.1, section 2.2 and 2.6).
//! Header blocks appear here uncompressed ([`Headers`]); `codec` compresses them with the
//! connection's zlib streams. Every control frame carries version 3; frames of an unknown
//! type are read as [`Frame::Unknown`] (the spec says to ignore them).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The version every control frame carries.
pub const VERSION: u16 = 3;
/// The largest payload a frame's 24-bit length can state.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;

/// FLAG_FIN on SYN_STREAM, SYN_REPLY, HEADERS and DATA: the sender's last frame on the stream.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM: the recipient may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS on SETTINGS.
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

/// Control frame types.
pub mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const UNSUPPORTED_VERSION: u32 = 4;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// SETTINGS ids used here.
pub mod setting {
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
}

/// A header block: names lowercase on the wire, several values of one name joined by NUL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Adds a header; the name is lowercased as SPDY requires.
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// The first value of `name` (compared without case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }

    /// The uncompressed block: a 32-bit count, then each name and value with a 32-bit length.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.0.len() as u32);
        for (name, value) in &self.0 {
            out.put_u32(name.len() as u32);
            out.put_slice(name.as_bytes());
            out.put_u32(value.len() as u32);
            out.put_slice(value.as_bytes());
        }
    }

    /// Reads an uncompressed block; names and values must be UTF-8.
    pub fn decode(mut block: &[u8]) -> Result<Self, FrameError> {
        let bad = |why: &str| FrameError::Headers(why.to_string());
        if block.remaining() < 4 {
            return Err(bad("no pair count"));
        }
        let count = block.get_u32() as usize;
        let mut pairs = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let name = take_string(&mut block).ok_or_else(|| bad("truncated name"))?;
            if name.is_empty() {
                return Err(bad("empty name"));
            }
            let value = take_string(&mut block).ok_or_else(|| bad("truncated value"))?;
            pairs.push((name.to_ascii_lowercase(), value));
        }
        Ok(Self(pairs))
    }
}

fn take_string(block: &mut &[u8]) -> Option<String> {
    if block.remaining() < 4 {
        return None;
    }
    let len = block.get_u32() as usize;
    if block.remaining() < len {
        return None;
    }
    let (s, rest) = block.split_at(len);
    *block = rest;
    String::from_utf8(s.to_vec()).ok()
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// A frame, header blocks uncompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type this crate does not know (ignored, as the spec says).
    Unknown {
        kind: u16,
    },
}

/// A frame the peer sent that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("control frame type {kind} with {len} bytes of payload is malformed")]
    Malformed { kind: u16, len: usize },
    #[error("frame payload of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("bad header block: {0}")]
    Headers(String),
    #[error("header compression: {0}")]
    Compression(String),
}

/// The 8 bytes that start every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameHead {
    Control { version: u16, kind: u16, flags: u8, len: usize },
    Data { stream_id: u32, flags: u8, len: usize },
}

impl FrameHead {
    pub fn parse(head: [u8; 8]) -> Self {
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if first & 0x8000_0000 != 0 {
            FrameHead::Control { version: ((first >> 16) & 0x7fff) as u16, kind: (first & 0xffff) as u16, flags, len }
        } else {
            FrameHead::Data { stream_id: first & 0x7fff_ffff, flags, len }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            FrameHead::Control { len, .. } | FrameHead::Data { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) fn put_control_head(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    out.put_uint(len as u64, 3);
}

pub(crate) fn put_data_head(out: &mut BytesMut, stream_id: u32, flags: u8, len: usize) {
    out.put_u32(stream_id & 0x7fff_ffff);
    out.put_u8(flags);
    out.put_uint(len as u64, 3);
}

/// Reads a control frame's fixed fields; `block` is the (still compressed) header block of
/// SYN_STREAM, SYN_REPLY and HEADERS, handed to `inflate`.
pub(crate) fn parse_control(
    kind: u16,
    flags: u8,
    mut p: &[u8],
    inflate: &mut dyn FnMut(&[u8]) -> Result<Headers, FrameError>,
) -> Result<Frame, FrameError> {
    let malformed = FrameError::Malformed { kind, len: p.len() };
    let id31 = |v: u32| v & 0x7fff_ffff;
    Ok(match kind {
        kind::SYN_STREAM => {
            if p.len() < 10 {
                return Err(malformed);
            }
            let stream_id = id31(p.get_u32());
            let associated_to = id31(p.get_u32());
            let priority = p.get_u8() >> 5;
            let _slot = p.get_u8();
            Frame::SynStream { stream_id, associated_to, priority, flags, headers: inflate(p)? }
        }
        kind::SYN_REPLY | kind::HEADERS => {
            if p.len() < 4 {
                return Err(malformed);
            }
            let stream_id = id31(p.get_u32());
            let headers = inflate(p)?;
            if kind == kind::SYN_REPLY {
                Frame::SynReply { stream_id, flags, headers }
            } else {
                Frame::Headers { stream_id, flags, headers }
            }
        }
        kind::RST_STREAM => {
            if p.len() != 8 {
                return Err(malformed);
            }
            Frame::RstStream { stream_id: id31(p.get_u32()), status: p.get_u32() }
        }
        kind::SETTINGS => {
            if p.len() < 4 {
                return Err(malformed);
            }
            let count = p.get_u32() as usize;
            if p.len() != count.saturating_mul(8) {
                return Err(malformed);
            }
            let entries = (0..count)
                .map(|_| {
                    let flag_id = p.get_u32();
                    Setting { flags: (flag_id >> 24) as u8, id: flag_id & 0x00ff_ffff, value: p.get_u32() }
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        kind::PING => {
            if p.len() != 4 {
                return Err(malformed);
            }
            Frame::Ping { id: p.get_u32() }
        }
        kind::GOAWAY => {
            // SPDY/2's GOAWAY had no status; accept its 4 bytes too.
            if p.len() != 8 && p.len() != 4 {
                return Err(malformed);
            }
            let last_good_stream_id = id31(p.get_u32());
            let status = if p.len() == 4 { p.get_u32() } else { goaway::OK };
            Frame::GoAway { last_good_stream_id, status }
        }
        kind::WINDOW_UPDATE => {
            if p.len() != 8 {
                return Err(malformed);
            }
            Frame::WindowUpdate { stream_id: id31(p.get_u32()), delta: id31(p.get_u32()) }
        }
        other => Frame::Unknown { kind: other },
    })
}

/// Writes `frame`; `deflate` compresses a header block.
pub(crate) fn write_frame(
    frame: &Frame,
    out: &mut BytesMut,
    deflate: &mut dyn FnMut(&Headers) -> Result<Vec<u8>, FrameError>,
) -> Result<(), FrameError> {
    match frame {
        Frame::SynStream { stream_id, associated_to, priority, flags, headers } => {
            let block = deflate(headers)?;
            put_control_head(out, kind::SYN_STREAM, *flags, 10 + block.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(associated_to & 0x7fff_ffff);
            out.put_u8((priority & 0x07) << 5);
            out.put_u8(0);
            out.put_slice(&block);
        }
        Frame::SynReply { stream_id, flags, headers } | Frame::Headers { stream_id, flags, headers } => {
            let block = deflate(headers)?;
            let kind = if matches!(frame, Frame::SynReply { .. }) { kind::SYN_REPLY } else { kind::HEADERS };
            put_control_head(out, kind, *flags, 4 + block.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_slice(&block);
        }
        Frame::RstStream { stream_id, status } => {
            put_control_head(out, kind::RST_STREAM, 0, 8);
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::Settings { flags, entries } => {
            put_control_head(out, kind::SETTINGS, *flags, 4 + 8 * entries.len());
            out.put_u32(entries.len() as u32);
            for e in entries {
                out.put_u32((u32::from(e.flags) << 24) | (e.id & 0x00ff_ffff));
                out.put_u32(e.value);
            }
        }
        Frame::Ping { id } => {
            put_control_head(out, kind::PING, 0, 4);
            out.put_u32(*id);
        }
        Frame::GoAway { last_good_stream_id, status } => {
            put_control_head(out, kind::GOAWAY, 0, 8);
            out.put_u32(last_good_stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            put_control_head(out, kind::WINDOW_UPDATE, 0, 8);
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(delta & 0x7fff_ffff);
        }
        Frame::Data { stream_id, flags, data } => {
            if data.len() > MAX_PAYLOAD {
                return Err(FrameError::TooLarge(data.len()));
            }
            put_data_head(out, *stream_id, *flags, data.len());
            out.put_slice(data);
        }
        Frame::Unknown { kind } => {
            put_control_head(out, *kind, 0, 0);
        }
    }
    Ok(())
}

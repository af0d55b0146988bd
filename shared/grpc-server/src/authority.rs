//! Any `:authority` a gRPC client sends on a unix socket, accepted.
//!
//! grpc-core clients (Python, C++, Ruby), grpc-java and others dialling `unix:///run/x.sock`
//! send the socket path, percent-encoded or not, as the HTTP/2 `:authority`; h2 (under hyper
//! and tonic) refuses any value that is not a URI authority and resets the stream with
//! `PROTOCOL_ERROR`, where grpc-go's server (containerd's) takes it. [`AuthorityFix`] sits
//! between the socket and h2 and, in the bytes the client sends, gives every request whose
//! `:authority` is not a valid one (a path, `%2F...`, empty) `localhost` instead, which is what
//! grpc-go clients send on unix sockets. Nothing else changes.
//!
//! How: the adapter follows the HTTP/2 frame layer of the client's half of the connection.
//! Frames other than HEADERS/CONTINUATION pass through untouched. Every header block is HPACK-
//! decoded with the client's dynamic table, so the adapter always knows what a block says. Until
//! a request needs fixing, blocks pass through unchanged (h2's table then mirrors the client's).
//! From the first fix on, every block is re-encoded with the adapter's own encoder, the first
//! one starting with a dynamic table size update to 0 and back, which empties h2's table so that
//! it mirrors the encoder's. A connection that does not open with the HTTP/2 preface, or whose
//! header blocks cannot be decoded, is passed through or closed as h2 would.

use bytes::{Buf, BufMut, BytesMut};
use httlib_hpack::{Decoder, Encoder};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's initial value).
const MIN_MAX_FRAME: usize = 16_384;
/// The largest compressed header block held; h2's own header-list limit is far below it.
const MAX_BLOCK: usize = 1 << 20;
/// The HPACK table size the server behind the adapter decodes with: SETTINGS_HEADER_TABLE_SIZE's
/// initial value, which tonic servers keep and the proxy sets explicitly.
pub const HEADER_TABLE_SIZE: u32 = 4096;
const TABLE_SIZE: usize = HEADER_TABLE_SIZE as usize;
/// What a request whose authority is not valid gets instead.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// An I/O stream (a server's accepted connection) whose incoming HTTP/2 requests all carry a
/// valid `:authority`. See the module documentation.
pub struct AuthorityFix<S> {
    inner: S,
    state: Box<State>,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        let decoder = Decoder::with_dynamic_size(TABLE_SIZE as u32);
        Self {
            inner,
            state: Box::new(State {
                raw: BytesMut::with_capacity(8192),
                out: BytesMut::with_capacity(8192),
                preface: 0,
                forward: 0,
                passthrough: false,
                block: None,
                decoder,
                encoder: None,
            }),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

struct State {
    /// Read from the client, not yet looked at.
    raw: BytesMut,
    /// Ready for h2.
    out: BytesMut,
    /// Bytes of the preface checked so far.
    preface: usize,
    /// Payload bytes of the current frame still to pass through.
    forward: usize,
    /// Not HTTP/2 with prior knowledge: everything passes through.
    passthrough: bool,
    /// A header block waiting for its CONTINUATION frames.
    block: Option<Block>,
    decoder: Decoder<'static>,
    /// Set from the first request that needed fixing on.
    encoder: Option<Encoder<'static>>,
}

struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn encode_error(err: httlib_hpack::EncoderError) -> io::Error {
    io::Error::other(format!("cannot encode a header block: {err:?}"))
}

fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

impl State {
    /// Moves what can be moved from `raw` to `out`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            if self.passthrough {
                let all = self.raw.split();
                self.out.unsplit(all);
                return Ok(());
            }
            if self.preface < PREFACE.len() {
                let n = (PREFACE.len() - self.preface).min(self.raw.len());
                if n == 0 {
                    return Ok(());
                }
                if self.raw[..n] != PREFACE[self.preface..self.preface + n] {
                    self.passthrough = true;
                    continue;
                }
                self.preface += n;
                let preface = self.raw.split_to(n);
                self.out.unsplit(preface);
                continue;
            }
            if self.forward > 0 {
                let n = self.forward.min(self.raw.len());
                if n == 0 {
                    return Ok(());
                }
                self.forward -= n;
                let payload = self.raw.split_to(n);
                self.out.unsplit(payload);
                continue;
            }
            if self.raw.len() < FRAME_HEADER {
                return Ok(());
            }
            let length = (usize::from(self.raw[0]) << 16) | (usize::from(self.raw[1]) << 8) | usize::from(self.raw[2]);
            let kind = self.raw[3];
            let flags = self.raw[4];
            let stream_id = u32::from_be_bytes([self.raw[5], self.raw[6], self.raw[7], self.raw[8]]) & 0x7fff_ffff;
            if kind != HEADERS && kind != CONTINUATION {
                if self.block.is_some() {
                    return Err(protocol_error("a header block was interrupted by another frame"));
                }
                self.forward = length;
                let header = self.raw.split_to(FRAME_HEADER);
                self.out.unsplit(header);
                continue;
            }
            if length > MAX_BLOCK {
                return Err(protocol_error("header block too large"));
            }
            if self.raw.len() < FRAME_HEADER + length {
                self.raw.reserve(FRAME_HEADER + length - self.raw.len());
                return Ok(());
            }
            let mut frame = self.raw.split_to(FRAME_HEADER + length);
            frame.advance(FRAME_HEADER);
            if kind == HEADERS {
                if self.block.is_some() {
                    return Err(protocol_error("a header block was interrupted by another frame"));
                }
                let pad = if flags & PADDED != 0 {
                    if frame.is_empty() {
                        return Err(protocol_error("HEADERS frame too short"));
                    }
                    usize::from(frame.get_u8())
                } else {
                    0
                };
                let priority = if flags & PRIORITY != 0 {
                    if frame.len() < 5 {
                        return Err(protocol_error("HEADERS frame too short"));
                    }
                    let mut p = [0; 5];
                    frame.copy_to_slice(&mut p);
                    Some(p)
                } else {
                    None
                };
                if pad > frame.len() {
                    return Err(protocol_error("HEADERS padding longer than the frame"));
                }
                frame.truncate(frame.len() - pad);
                self.block =
                    Some(Block { stream_id, end_stream: flags & END_STREAM != 0, priority, fragment: frame.to_vec() });
            } else {
                match &mut self.block {
                    Some(block) if block.stream_id == stream_id => {
                        if block.fragment.len() + frame.len() > MAX_BLOCK {
                            return Err(protocol_error("header block too large"));
                        }
                        block.fragment.extend_from_slice(&frame);
                    }
                    _ => return Err(protocol_error("CONTINUATION frame without its HEADERS")),
                }
            }
            if flags & END_HEADERS != 0
                && let Some(block) = self.block.take()
            {
                self.finish(block)?;
            }
        }
    }

    /// Decodes one whole header block and passes it on, fixed if it needs to be.
    fn finish(&mut self, mut block: Block) -> io::Result<()> {
        let mut input = block.fragment.clone();
        let mut headers = Vec::with_capacity(16);
        self.decoder
            .decode(&mut input, &mut headers)
            .map_err(|err| protocol_error(format!("cannot decode a header block: {err:?}")))?;
        let mut fixed = false;
        for (name, value, _) in &mut headers {
            if name.as_slice() == b":authority" && !valid_authority(value) {
                tracing::trace!(authority = %String::from_utf8_lossy(value), "replacing an invalid :authority");
                *value = REPLACEMENT_AUTHORITY.to_vec();
                fixed = true;
            }
        }
        let fragment = match &mut self.encoder {
            None if !fixed => std::mem::take(&mut block.fragment),
            encoder => {
                let mut fragment = Vec::with_capacity(block.fragment.len() + 16);
                let encoding = encoder.is_none();
                let encoder = encoder.get_or_insert_with(Encoder::default);
                if encoding {
                    // h2's table is emptied, as the new encoder's is: sizes 0, then the default.
                    encoder.update_max_dynamic_size(0, &mut fragment).map_err(encode_error)?;
                    encoder.update_max_dynamic_size(TABLE_SIZE as u32, &mut fragment).map_err(encode_error)?;
                }
                for (name, value, flags) in headers {
                    let how = if flags & Decoder::NEVER_INDEXED != 0 {
                        Encoder::NEVER_INDEXED
                    } else {
                        Encoder::BEST_FORMAT | Encoder::WITH_INDEXING
                    };
                    encoder.encode((name, value, how), &mut fragment).map_err(encode_error)?;
                }
                fragment
            }
        };
        self.write_block(&block, &fragment);
        Ok(())
    }

    /// Frames a header block as HEADERS and CONTINUATION frames no larger than every peer takes.
    fn write_block(&mut self, block: &Block, fragment: &[u8]) {
        let priority_len = if block.priority.is_some() { 5 } else { 0 };
        let first = fragment.len().min(MIN_MAX_FRAME - priority_len);
        let (head, mut rest) = fragment.split_at(first);
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame_header(head.len() + priority_len, HEADERS, flags, block.stream_id);
        if let Some(priority) = &block.priority {
            self.out.put_slice(priority);
        }
        self.out.put_slice(head);
        while !rest.is_empty() {
            let n = rest.len().min(MIN_MAX_FRAME);
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            self.frame_header(n, CONTINUATION, flags, block.stream_id);
            self.out.put_slice(chunk);
        }
    }

    fn frame_header(&mut self, length: usize, kind: u8, flags: u8, stream_id: u32) {
        // Lengths here are at most MIN_MAX_FRAME: three bytes hold them.
        self.out.put_slice(&(length as u32).to_be_bytes()[1..]);
        self.out.put_u8(kind);
        self.out.put_u8(flags);
        self.out.put_u32(stream_id);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            let state = &mut *this.state;
            if !state.out.is_empty() {
                let n = state.out.len().min(buf.remaining());
                buf.put_slice(&state.out[..n]);
                state.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if state.raw.capacity() - state.raw.len() < 4096 {
                state.raw.reserve(8192);
            }
            let before = state.raw.len();
            ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut state.raw))?;
            if state.raw.len() == before {
                // End of the stream: whatever is left goes to h2 as it is, for it to judge.
                let rest = state.raw.split();
                state.out.unsplit(rest);
                if state.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            state.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The connections a unix listener accepts, each behind an [`AuthorityFix`]: what a tonic
/// server's `serve_with_incoming` takes.
pub struct UnixListenerStream {
    inner: tokio_stream::wrappers::UnixListenerStream,
}

impl UnixListenerStream {
    pub fn new(listener: tokio::net::UnixListener) -> Self {
        Self { inner: tokio_stream::wrappers::UnixListenerStream::new(listener) }
    }
}

impl tokio_stream::Stream for UnixListenerStream {
    type Item = io::Result<AuthorityFix<tokio::net::UnixStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|next| next.map(|accepted| accepted.map(AuthorityFix::new)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream_id.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", b"grpc-python/1.76"),
        ]
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
    }

    /// A client's header block: with indexing and Huffman, as grpc-core sends them.
    fn encode(encoder: &mut Encoder<'static>, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in headers {
            let flags = Encoder::BEST_FORMAT | Encoder::WITH_INDEXING | Encoder::HUFFMAN_VALUE;
            encoder.encode((name.clone(), value.clone(), flags), &mut block).unwrap();
        }
        block
    }

    /// Feeds `client` through the adapter; returns what h2 would read.
    async fn through(client: Vec<u8>) -> io::Result<Vec<u8>> {
        let (mut near, far) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            // Dribbled in small writes: frames arrive split anywhere.
            for chunk in client.chunks(7) {
                near.write_all(chunk).await.unwrap();
            }
            near.shutdown().await.unwrap();
            near
        });
        let mut fixed = AuthorityFix::new(far);
        let mut out = Vec::new();
        let result = fixed.read_to_end(&mut out).await;
        let _near = writer.await.unwrap();
        result.map(|_| out)
    }

    /// Splits h2's view into frames and decodes each header block as h2 would.
    type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;
    /// A frame as h2 would see it: type, flags, stream, decoded headers, payload.
    type SeenFrame = (u8, u8, u32, HeaderList, Vec<u8>);

    fn read_back(bytes: &[u8]) -> Vec<SeenFrame> {
        assert_eq!(&bytes[..24], PREFACE);
        let mut rest = &bytes[24..];
        let mut decoder = Decoder::default();
        let mut frames = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let length = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream_id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = &rest[9..9 + length];
            rest = &rest[9 + length..];
            if kind == HEADERS || kind == CONTINUATION {
                let skip = if flags & PRIORITY != 0 && kind == HEADERS { 5 } else { 0 };
                block.extend_from_slice(&payload[skip..]);
                if flags & END_HEADERS != 0 {
                    let mut decoded = Vec::new();
                    decoder.decode(&mut block, &mut decoded).unwrap();
                    let headers = decoded.into_iter().map(|(n, v, _)| (n, v)).collect();
                    block.clear();
                    frames.push((HEADERS, flags, stream_id, headers, vec![]));
                }
            } else {
                frames.push((kind, flags, stream_id, vec![], payload.to_vec()));
            }
        }
        frames
    }

    fn authority_of(headers: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
        &headers.iter().find(|(n, _)| n == b":authority").unwrap().1
    }

    #[tokio::test]
    async fn socket_paths_as_authority_become_localhost_and_the_rest_is_unchanged() {
        let mut encoder = Encoder::default();
        let mut client = PREFACE.to_vec();
        client.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        let mut stream = 1;
        let authorities: [&[u8]; 6] = [
            b"localhost",
            b"/run/crisp/crisp.sock",
            b"%2Frun%2Fcrisp%2Fcrisp.sock",
            b"",
            b"/run/crisp/crisp.sock",
            b"localhost:10",
        ];
        for authority in authorities {
            let block = encode(&mut encoder, &request(authority));
            // The fourth request comes in a padded, prioritised HEADERS and a CONTINUATION.
            if authority.is_empty() {
                let (a, b) = block.split_at(3);
                let mut payload = vec![2u8];
                payload.extend_from_slice(&[0, 0, 0, 0, 16]);
                payload.extend_from_slice(a);
                payload.extend_from_slice(&[0, 0]);
                client.extend(frame(HEADERS, PADDED | PRIORITY, stream, &payload));
                client.extend(frame(CONTINUATION, END_HEADERS, stream, b));
            } else {
                client.extend(frame(HEADERS, END_HEADERS, stream, &block));
            }
            client.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\x05hello"));
            stream += 2;
        }
        let frames = read_back(&through(client).await.unwrap());
        let requests: Vec<_> = frames.iter().filter(|f| f.0 == HEADERS).collect();
        let seen: Vec<&[u8]> = requests.iter().map(|f| authority_of(&f.3)).collect();
        assert_eq!(seen, [&b"localhost"[..], b"localhost", b"localhost", b"localhost", b"localhost", b"localhost:10"]);
        for request in &requests {
            let expected = request.3.iter().filter(|(n, _)| n != b":authority").count();
            assert_eq!(expected, 6);
            assert!(request.3.contains(&(b":path".to_vec(), b"/runtime.v1.RuntimeService/Version".to_vec())));
        }
        assert_eq!(requests[3].1 & PRIORITY, PRIORITY);
        let data: Vec<_> = frames.iter().filter(|f| f.0 == 0).collect();
        assert_eq!(data.len(), 6);
        assert!(data.iter().all(|f| f.4 == b"\0\0\0\0\x05hello" && f.1 == END_STREAM));
        assert_eq!(frames[0].0, 0x4);
    }

    #[tokio::test]
    async fn valid_requests_pass_byte_for_byte() {
        let mut encoder = Encoder::default();
        let mut client = PREFACE.to_vec();
        for stream in [1u32, 3, 5] {
            let block = encode(&mut encoder, &request(b"localhost"));
            client.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        }
        assert_eq!(through(client.clone()).await.unwrap(), client);
    }

    #[tokio::test]
    async fn not_http2_passes_through() {
        let client = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through(client.clone()).await.unwrap(), client);
    }

    #[tokio::test]
    async fn an_undecodable_header_block_closes_the_connection() {
        let mut client = PREFACE.to_vec();
        client.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
        assert!(through(client).await.is_err());
    }
}

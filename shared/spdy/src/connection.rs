//! The server side of a SPDY/3.1 connection over any byte stream: the peer opens streams
//! (odd ids), each is answered with SYN_REPLY at once and handed out by [`Incoming`] as a
//! [`Stream`] that reads and writes like a socket (FIN on shutdown, RST on [`Stream::reset`]).
//!
//! - Flow control: every stream has a 64 KiB receive window (refilled with WINDOW_UPDATE as the
//!   application reads, per stream and for the session). Sending honours the peer's windows
//!   once the peer shows it keeps them (it sent a WINDOW_UPDATE or an initial window setting):
//!   Go's spdystream, which the kubelet and kubectl use, never does, and would stall forever if
//!   a server waited for its updates.
//! - A stream whose reader falls behind holds only its own frames once the peer keeps windows;
//!   from a peer that does not, the connection stops reading (TCP pushes back) while that
//!   stream's buffer is full.
//! - PING from the peer is answered; GOAWAY stops new streams; an idle connection (no frame
//!   either way for `idle_timeout`) is closed with GOAWAY.
//! - The connection lives as long as its [`Connection`] value: dropping it (or
//!   [`Connection::close`]) sends GOAWAY, flushes and closes the transport.

use crate::codec::{FrameDecoder, FrameEncoder};
use crate::frame::{FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, Headers, goaway, rst, setting};
use crate::window::Window;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

/// SPDY/3's default initial window.
pub const DEFAULT_WINDOW: u32 = 64 * 1024;

/// How a connection behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// Each stream's receive window (and the session's).
    pub receive_window: u32,
    /// Streams open at once before new ones are refused.
    pub max_concurrent_streams: usize,
    /// Close after this long without a frame in either direction.
    pub idle_timeout: Option<Duration>,
    /// The largest DATA frame sent.
    pub max_data_frame: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            receive_window: DEFAULT_WINDOW,
            max_concurrent_streams: 1000,
            idle_timeout: None,
            max_data_frame: 32 * 1024,
        }
    }
}

enum Inbound {
    Data(Bytes),
    Reset(u32),
}

struct Entry {
    data: Option<mpsc::UnboundedSender<Inbound>>,
    recv_buffer: Arc<Window>,
    send_window: Arc<Window>,
    cancel: CancellationToken,
    local_done: bool,
}

struct Shared {
    config: Config,
    control: mpsc::UnboundedSender<Command>,
    data: mpsc::Sender<Command>,
    streams: Mutex<HashMap<u32, Entry>>,
    /// The peer keeps flow-control windows (see the module header).
    peer_flow_control: AtomicBool,
    session_send: Window,
    session_unacked: AtomicU64,
    initial_send_window: Mutex<i64>,
    closed: CancellationToken,
    started: Instant,
    last_activity_ms: AtomicU64,
}

impl Shared {
    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn touch(&self) {
        self.last_activity_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn control(&self, frame: Frame) {
        let _ = self.control.send(Command::Frame(frame));
    }

    /// Our side of stream `id` is finished (FIN sent or reset).
    fn local_done(&self, id: u32) {
        let mut streams = self.streams();
        if let Some(entry) = streams.get_mut(&id) {
            entry.local_done = true;
            if entry.data.is_none() {
                streams.remove(&id);
            }
        }
    }

    fn remote_done(streams: &mut HashMap<u32, Entry>, id: u32) {
        if let Some(entry) = streams.get_mut(&id) {
            entry.data = None;
            if entry.local_done {
                streams.remove(&id);
            }
        }
    }
}

enum Command {
    Frame(Frame),
    /// Close the connection with this GOAWAY.
    Shutdown(Frame),
}

/// The handle that keeps a connection open.
pub struct Connection {
    shared: Arc<Shared>,
}

/// Streams the peer opens, in order.
pub struct Incoming {
    rx: mpsc::Receiver<Stream>,
}

impl Incoming {
    /// The next stream; `None` once the peer sent GOAWAY or the connection ended.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.rx.recv().await
    }
}

impl Connection {
    /// Serves the server side of a connection on `io` (the bytes after the HTTP upgrade).
    pub fn server<T>(io: T, config: Config) -> (Connection, Incoming)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(16);
        let (incoming_tx, incoming_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            session_send: Window::new(i64::from(DEFAULT_WINDOW)),
            initial_send_window: Mutex::new(i64::from(DEFAULT_WINDOW)),
            config,
            control: control_tx,
            data: data_tx,
            streams: Mutex::new(HashMap::new()),
            peer_flow_control: AtomicBool::new(false),
            session_unacked: AtomicU64::new(0),
            closed: CancellationToken::new(),
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
        });
        tokio::spawn(write_loop(FramedWrite::new(write, FrameEncoder::new()), control_rx, data_rx, shared.clone()));
        tokio::spawn(read_loop(FramedRead::new(read, FrameDecoder::default()), incoming_tx, shared.clone()));
        (Connection { shared }, Incoming { rx: incoming_rx })
    }

    /// Sends GOAWAY, flushes what is queued and closes the transport.
    pub fn close(&self) {
        let last = self.shared.streams().keys().max().copied().unwrap_or(0);
        let _ = self
            .shared
            .control
            .send(Command::Shutdown(Frame::GoAway { last_good_stream_id: last, status: goaway::OK }));
    }

    /// Resolves when the connection has ended (peer gone, idle, or closed).
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let token = self.shared.closed.clone();
        async move { token.cancelled().await }
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

async fn write_loop<W: AsyncWrite + Unpin + Send + 'static>(
    mut sink: FramedWrite<W, FrameEncoder>,
    mut control: mpsc::UnboundedReceiver<Command>,
    mut data: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
) {
    let closed = shared.closed.clone();
    drop(shared);
    let mut goaway = None;
    'frames: loop {
        let command = tokio::select! {
            biased;
            _ = closed.cancelled() => break,
            Some(c) = control.recv() => c,
            Some(c) = data.recv() => c,
            else => break,
        };
        let mut next = Some(command);
        // Write everything queued, then flush once.
        while let Some(command) = next.take() {
            match command {
                Command::Frame(frame) => {
                    if sink.feed(frame).await.is_err() {
                        break 'frames;
                    }
                }
                Command::Shutdown(frame) => {
                    goaway = Some(frame);
                    break 'frames;
                }
            }
            next = control.try_recv().or_else(|_| data.try_recv()).ok();
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    if let Some(frame) = goaway {
        // Closing: the data already queued goes out first, then GOAWAY.
        while let Ok(Command::Frame(f)) = data.try_recv() {
            if sink.feed(f).await.is_err() {
                break;
            }
        }
        let _ = sink.feed(frame).await;
    }
    let _ = sink.flush().await;
    let _ = sink.get_mut().shutdown().await;
    closed.cancel();
}

use tokio::io::AsyncWriteExt;

async fn read_loop<R: AsyncRead + Unpin + Send + 'static>(
    mut frames: FramedRead<R, FrameDecoder>,
    incoming: mpsc::Sender<Stream>,
    shared: Arc<Shared>,
) {
    let mut incoming = Some(incoming);
    let mut last_stream = 0u32;
    let idle = shared.config.idle_timeout;
    let closed = shared.closed.clone();
    // Whether the loop ended because the peer went away (else the writer closes, after GOAWAY).
    let mut peer_gone = true;
    loop {
        let next = tokio::select! {
            _ = closed.cancelled() => break,
            next = frames.next() => next,
            _ = idle_expired(&shared, idle) => {
                tracing::debug!("SPDY connection idle, closing");
                let _ = shared.control.send(Command::Shutdown(Frame::GoAway { last_good_stream_id: last_stream, status: goaway::OK }));
                peer_gone = false;
                break;
            }
        };
        let frame = match next {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "SPDY connection: unreadable frame");
                let frame = Frame::GoAway { last_good_stream_id: last_stream, status: goaway::PROTOCOL_ERROR };
                let _ = shared.control.send(Command::Shutdown(frame));
                peer_gone = false;
                break;
            }
            None => break,
        };
        shared.touch();
        match frame {
            Frame::SynStream { stream_id, flags, headers, .. } => {
                let Some(tx) = incoming.as_ref() else {
                    shared.control(Frame::RstStream { stream_id, status: rst::REFUSED_STREAM });
                    continue;
                };
                if stream_id % 2 == 0 || stream_id <= last_stream {
                    shared.control(Frame::RstStream { stream_id, status: rst::PROTOCOL_ERROR });
                    continue;
                }
                last_stream = stream_id;
                if shared.streams().len() >= shared.config.max_concurrent_streams {
                    shared.control(Frame::RstStream { stream_id, status: rst::REFUSED_STREAM });
                    continue;
                }
                let stream = open_stream(&shared, stream_id, flags, headers);
                if tx.send(stream).await.is_err() {
                    incoming = None;
                }
            }
            Frame::Data { stream_id, flags, data } => {
                let len = data.len();
                let target = {
                    let streams = shared.streams();
                    streams.get(&stream_id).map(|e| (e.data.clone(), e.recv_buffer.clone()))
                };
                match target {
                    Some((Some(tx), buffer)) => {
                        if len > 0 {
                            // Wait (the peer ignores windows) while this stream's buffer is full.
                            tokio::select! {
                                _ = buffer.overdraw(len) => {}
                                _ = closed.cancelled() => break,
                            }
                            let _ = tx.send(Inbound::Data(data));
                        }
                        if flags & FLAG_FIN != 0 {
                            Shared::remote_done(&mut shared.streams(), stream_id);
                        }
                    }
                    Some((None, _)) => {
                        shared.control(Frame::RstStream { stream_id, status: rst::STREAM_ALREADY_CLOSED });
                    }
                    None => {
                        shared.control(Frame::RstStream { stream_id, status: rst::INVALID_STREAM });
                    }
                }
            }
            Frame::RstStream { stream_id, status } => {
                if let Some(entry) = shared.streams().remove(&stream_id) {
                    // Writers first: once a reader has seen the reset, no write may still succeed.
                    entry.cancel.cancel();
                    if let Some(tx) = entry.data {
                        let _ = tx.send(Inbound::Reset(status));
                    }
                }
            }
            Frame::Settings { entries, .. } => {
                for entry in entries {
                    if entry.id == setting::INITIAL_WINDOW_SIZE {
                        shared.peer_flow_control.store(true, Ordering::Relaxed);
                        let value = i64::from(entry.value);
                        let delta = {
                            let mut initial =
                                shared.initial_send_window.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                            let delta = value - *initial;
                            *initial = value;
                            delta
                        };
                        for e in shared.streams().values() {
                            e.send_window.add(delta);
                        }
                    }
                }
            }
            Frame::Ping { id } => {
                // The peer's pings have odd ids (it is the client); ours (none yet) even.
                if id % 2 == 1 {
                    shared.control(Frame::Ping { id });
                }
            }
            Frame::GoAway { .. } => {
                incoming = None;
            }
            Frame::WindowUpdate { stream_id, delta } => {
                shared.peer_flow_control.store(true, Ordering::Relaxed);
                if stream_id == 0 {
                    shared.session_send.add(i64::from(delta));
                } else if let Some(e) = shared.streams().get(&stream_id) {
                    e.send_window.add(i64::from(delta));
                }
            }
            Frame::Headers { stream_id, flags, .. } => {
                if flags & FLAG_FIN != 0 {
                    Shared::remote_done(&mut shared.streams(), stream_id);
                }
            }
            Frame::SynReply { .. } | Frame::Unknown { .. } => {}
        }
    }
    // The peer is gone (or we are closing): every reader sees the end, every writer fails.
    for (_, entry) in shared.streams().drain() {
        entry.cancel.cancel();
    }
    if peer_gone {
        closed.cancel();
    }
}

async fn idle_expired(shared: &Shared, idle: Option<Duration>) {
    let Some(idle) = idle else { return std::future::pending().await };
    loop {
        let last = Duration::from_millis(shared.last_activity_ms.load(Ordering::Relaxed));
        let since = shared.started.elapsed().saturating_sub(last);
        if since >= idle {
            return;
        }
        tokio::time::sleep(idle - since).await;
    }
}

fn open_stream(shared: &Arc<Shared>, id: u32, flags: u8, headers: Headers) -> Stream {
    let (tx, rx) = mpsc::unbounded_channel();
    let initial = *shared.initial_send_window.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let recv_buffer = Arc::new(Window::new(i64::from(shared.config.receive_window)));
    let send_window = Arc::new(Window::new(initial));
    let cancel = shared.closed.child_token();
    let remote_fin = flags & FLAG_FIN != 0;
    let local_fin = flags & FLAG_UNIDIRECTIONAL != 0;
    if !(remote_fin && local_fin) {
        shared.streams().insert(
            id,
            Entry {
                data: (!remote_fin).then(|| tx.clone()),
                recv_buffer: recv_buffer.clone(),
                send_window: send_window.clone(),
                cancel: cancel.clone(),
                local_done: local_fin,
            },
        );
    }
    drop(tx);
    shared.control(Frame::SynReply { stream_id: id, flags: 0, headers: Headers::new() });
    Stream {
        id,
        headers,
        recv: RecvStream { id, rx, buf: Bytes::new(), buffer: recv_buffer, unacked: 0, shared: shared.clone() },
        send: SendStream {
            id,
            window: send_window,
            cancel,
            shared: shared.clone(),
            pending: None,
            finished: local_fin,
        },
    }
}

/// A stream the peer opened.
pub struct Stream {
    id: u32,
    headers: Headers,
    recv: RecvStream,
    send: SendStream,
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The headers of the peer's SYN_STREAM.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Ends the stream both ways at once with RST_STREAM `status` (see `frame::rst`).
    pub fn reset(self, status: u32) {
        self.send.reset(status);
    }

    pub fn split(self) -> (RecvStream, SendStream) {
        (self.recv, self.send)
    }
}

/// The reading half of a stream: the peer's DATA, then end of file at its FIN (an error if it
/// reset the stream or the connection ended first).
pub struct RecvStream {
    id: u32,
    rx: mpsc::UnboundedReceiver<Inbound>,
    buf: Bytes,
    buffer: Arc<Window>,
    unacked: u32,
    shared: Arc<Shared>,
}

impl RecvStream {
    fn consumed(&mut self, n: usize) {
        self.buffer.add(n as i64);
        let half = self.shared.config.receive_window / 2;
        self.unacked += n as u32;
        if self.unacked >= half {
            self.shared.control(Frame::WindowUpdate { stream_id: self.id, delta: self.unacked });
            self.unacked = 0;
        }
        let session = self.shared.session_unacked.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if session >= u64::from(half)
            && self.shared.session_unacked.compare_exchange(session, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.shared.control(Frame::WindowUpdate { stream_id: 0, delta: session as u32 });
        }
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        // Nobody reads this stream any more: what the peer still sends is dropped, never
        // waited for.
        self.buffer.add(1 << 40);
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(out.remaining());
                out.put_slice(&self.buf.split_to(n));
                self.consumed(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(Inbound::Data(data)) => self.buf = data,
                Some(Inbound::Reset(status)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("the peer reset the stream (status {status})"),
                    )));
                }
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

type SendFuture = Pin<Box<dyn Future<Output = io::Result<usize>> + Send>>;

/// The writing half of a stream: DATA frames within the peer's windows; shutdown sends FIN.
/// Dropping it without shutdown sends FIN too.
pub struct SendStream {
    id: u32,
    window: Arc<Window>,
    cancel: CancellationToken,
    shared: Arc<Shared>,
    pending: Option<SendFuture>,
    finished: bool,
}

impl SendStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Ends the stream both ways with RST_STREAM `status`.
    pub fn reset(mut self, status: u32) {
        self.finished = true;
        self.shared.control(Frame::RstStream { stream_id: self.id, status });
        if let Some(entry) = self.shared.streams().remove(&self.id) {
            entry.cancel.cancel();
        }
    }

    fn send(&self, data: Bytes, fin: bool) -> SendFuture {
        let (id, window, cancel, shared) = (self.id, self.window.clone(), self.cancel.clone(), self.shared.clone());
        Box::pin(async move {
            let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the stream was reset or the connection ended");
            // A stream reset (or a connection gone) before this write fails it, whatever else is
            // ready: `select!` below picks among ready branches at random.
            if cancel.is_cancelled() {
                return Err(gone());
            }
            let mut n = data.len().min(shared.config.max_data_frame);
            if shared.peer_flow_control.load(Ordering::Relaxed) && n > 0 {
                n = tokio::select! {
                    n = window.take_up_to(n) => n,
                    _ = cancel.cancelled() => return Err(gone()),
                };
                let session = tokio::select! {
                    s = shared.session_send.take_up_to(n) => s,
                    _ = cancel.cancelled() => return Err(gone()),
                };
                if session < n {
                    window.add((n - session) as i64);
                    n = session;
                }
            }
            let fin = fin && n == data.len();
            let frame = Frame::Data { stream_id: id, flags: if fin { FLAG_FIN } else { 0 }, data: data.slice(..n) };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(gone()),
                sent = shared.data.send(Command::Frame(frame)) => sent.map_err(|_| gone())?,
            }
            shared.touch();
            Ok(n)
        })
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.finished {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the stream was closed")));
        }
        if self.pending.is_none() {
            let future = self.send(Bytes::copy_from_slice(buf), false);
            self.pending = Some(future);
        }
        let result = ready!(self.pending.as_mut().map_or(Poll::Ready(Ok(0)), |f| f.as_mut().poll(cx)));
        self.pending = None;
        Poll::Ready(result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(future) = self.pending.as_mut() {
            let result = ready!(future.as_mut().poll(cx));
            self.pending = None;
            result?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.finished && self.pending.is_none() {
            return Poll::Ready(Ok(()));
        }
        if self.pending.is_none() {
            let future = self.send(Bytes::new(), true);
            self.pending = Some(future);
            self.finished = true;
        }
        let result = ready!(self.pending.as_mut().map_or(Poll::Ready(Ok(0)), |f| f.as_mut().poll(cx)));
        self.pending = None;
        if !self.finished {
            // A write was pending when shutdown came: it is done now; send the FIN next.
            return self.poll_shutdown(cx);
        }
        self.shared.local_done(self.id);
        Poll::Ready(result.map(|_| ()))
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        if !self.finished {
            let frame = Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() };
            // Queued behind this stream's data; if the queue is full, the control queue
            // (the peer may then see FIN before the last queued frame: rare and harmless
            // to a half-closed stream).
            if let Err(mpsc::error::TrySendError::Full(c)) = self.shared.data.try_send(Command::Frame(frame)) {
                let _ = self.shared.control.send(c);
            }
            self.shared.local_done(self.id);
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, out)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

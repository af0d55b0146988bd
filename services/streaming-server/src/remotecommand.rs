//! The remote command protocols (exec and attach) on either transport, as one [`Session`]:
//! stdin to read, stdout and stderr to write, terminal sizes, and the final status.
//!
//! - SPDY: the client opens one stream per `streamType` (`error`, `stdin`, `stdout`, `stderr`,
//!   `resize` with a TTY from v3 on); the session starts once every expected stream is open,
//!   or fails after the stream creation timeout. Resize streams carry JSON
//!   `{"Width":W,"Height":H}` objects back to back.
//! - WebSocket: one binary message per write, its first byte the channel (0 stdin, 1 stdout,
//!   2 stderr, 3 error, 4 resize); the base64 protocols send text messages, the channel as an
//!   ASCII digit and the data in base64. `v5.channel.k8s.io` adds channel 255: `[255, c]`
//!   closes channel `c` (stdin's end of file). An empty message on the lowest writable channel
//!   tells the client the session is up.
//! - Status: from v4 (and on v5) JSON `metav1.Status` on the error stream (`Success`, or
//!   `Failure` with reason `NonZeroExitCode` and the code as cause `ExitCode`); before v4 only
//!   a failure is written, as text.

use bytes::Bytes;
use crisp_spdy::Connection;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

/// SPDY subprotocols, most preferred first (v5 is v4 on SPDY: its close signal is WebSocket's).
pub const SPDY_PROTOCOLS: &[&str] =
    &["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];
/// WebSocket subprotocols; "" is a client that named none (binary channels).
pub const WEBSOCKET_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "",
];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Which streams the request asked for.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A terminal size from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// How the session ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Exited(u32),
    Failed(String),
}

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// One exec or attach session, whatever the transport.
pub struct Session {
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    pub stderr: Option<Writer>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    error: Option<Writer>,
    json_status: bool,
    /// Cancelled when the client is gone.
    pub gone: CancellationToken,
    /// The client's halves of stdin and resize: kept open until the session ends.
    keep: Vec<crisp_spdy::SendStream>,
    /// Keeps the transport open until the session ends.
    transport: Transport,
}

enum Transport {
    Spdy(Connection),
    WebSocket { writer: mpsc::Sender<Message>, done: tokio::task::JoinHandle<()> },
}

impl Session {
    /// Writes the outcome on the error stream, ends every stream and closes the transport.
    pub async fn finish(mut self, command: &[String], outcome: Outcome) {
        if let Some(out) = self.stdout.as_mut() {
            let _ = out.shutdown().await;
        }
        if let Some(err) = self.stderr.as_mut() {
            let _ = err.shutdown().await;
        }
        if let Some(mut error) = self.error.take() {
            if let Some(message) = status_message(command, &outcome, self.json_status) {
                let _ = error.write_all(message.as_bytes()).await;
            }
            let _ = error.shutdown().await;
        }
        drop((self.stdin.take(), self.stdout.take(), self.stderr.take(), std::mem::take(&mut self.keep)));
        match self.transport {
            Transport::Spdy(connection) => drop(connection),
            Transport::WebSocket { writer, done } => {
                // A normal closure (1000): client-go reads it as the end of every channel.
                let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                let _ = writer.send(Message::Close(Some(frame))).await;
                drop(writer);
                let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
            }
        }
    }
}

/// What the error stream says of `outcome` (nothing for success before v4).
pub fn status_message(command: &[String], outcome: &Outcome, json: bool) -> Option<String> {
    let (text, code) = match outcome {
        Outcome::Exited(0) => {
            return json.then(|| serde_json::json!({"metadata": {}, "status": "Success"}).to_string());
        }
        Outcome::Exited(code) => (
            format!(
                "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
            ),
            Some(*code),
        ),
        Outcome::Failed(message) => (message.clone(), None),
    };
    if !json {
        return Some(text);
    }
    let mut status = serde_json::json!({"metadata": {}, "status": "Failure", "message": text});
    if let Some(code) = code {
        status["reason"] = "NonZeroExitCode".into();
        status["details"] = serde_json::json!({"causes": [{"reason": "ExitCode", "message": code.to_string()}]});
    } else {
        status["reason"] = "InternalError".into();
        status["code"] = 500.into();
    }
    Some(status.to_string())
}

/// Reads JSON sizes from `input` into a channel until it ends.
fn sizes_from(mut input: impl AsyncRead + Send + Unpin + 'static) -> mpsc::Receiver<TermSize> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = match input.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut sizes = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
            let mut parsed = Vec::new();
            let mut bad = false;
            for size in sizes.by_ref() {
                match size {
                    Ok(size) => parsed.push(size),
                    Err(e) if e.is_eof() => break,
                    Err(_) => {
                        bad = true;
                        break;
                    }
                }
            }
            let consumed = sizes.byte_offset();
            if bad {
                return;
            }
            buf.drain(..consumed);
            for size in parsed {
                if tx.send(size).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Waits for the SPDY streams of a session on an upgraded connection.
pub async fn spdy<T>(
    io: T,
    protocol: &str,
    options: Options,
    config: crisp_spdy::Config,
    creation_timeout: Duration,
) -> Result<Session, String>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (connection, mut incoming) = Connection::server(io, config);
    let closed = connection.closed();
    let version = SPDY_PROTOCOLS.iter().position(|p| *p == protocol).unwrap_or(SPDY_PROTOCOLS.len() - 1);
    let json_status = version <= 1;
    let resize_supported = version <= 2;
    let mut expected = 1 + usize::from(options.stdin) + usize::from(options.stdout) + usize::from(options.stderr);
    if options.tty && resize_supported {
        expected += 1;
    }
    let gone = CancellationToken::new();
    let mut session = Session {
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
        error: None,
        json_status,
        gone: gone.clone(),
        keep: Vec::new(),
        transport: Transport::Spdy(connection),
    };
    let deadline = tokio::time::sleep(creation_timeout);
    tokio::pin!(deadline);
    let mut received = 0;
    while received < expected {
        let stream = tokio::select! {
            s = incoming.accept() => s.ok_or("the client went away before opening its streams")?,
            _ = &mut deadline => return Err("timed out waiting for client to create streams".into()),
        };
        let kind = stream.headers().get("streamtype").unwrap_or("").to_string();
        let (recv, send) = stream.split();
        match kind.as_str() {
            "error" => session.error = Some(Box::pin(send)),
            "stdout" => session.stdout = Some(Box::pin(send)),
            "stderr" => session.stderr = Some(Box::pin(send)),
            "stdin" => {
                session.stdin = Some(Box::pin(recv));
                session.keep.push(send);
            }
            "resize" => {
                session.resize = Some(sizes_from(recv));
                session.keep.push(send);
            }
            other => {
                tracing::debug!(stream_type = other, "unexpected stream type");
                continue;
            }
        }
        received += 1;
    }
    tokio::spawn(async move {
        closed.await;
        gone.cancel();
    });
    Ok(session)
}

/// Serves the channel protocol on an upgraded WebSocket.
pub fn websocket<S>(ws: WebSocketStream<S>, protocol: &str, options: Options, idle: Duration) -> Session
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let base64 = protocol.contains("base64");
    let json_status = protocol.starts_with("v4.") || protocol.starts_with("v5.");
    let close_channel = protocol.starts_with("v5.");
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(32);
    let gone = CancellationToken::new();

    // Traffic either way keeps the session; `idle` without any closes it.
    let activity = std::sync::Arc::new(Activity::new());
    // Writer: every channel's messages, in order, then the close.
    let writer_gone = gone.clone();
    let writer_activity = activity.clone();
    let done = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            writer_activity.touch();
            let closing = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() {
                writer_gone.cancel();
                return;
            }
            if closing {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let (stdin_tx, stdin_rx) = tokio::io::duplex(64 * 1024);
    let (resize_tx, resize_rx) = mpsc::channel(8);
    let reader_gone = gone.clone();
    tokio::spawn(async move {
        let mut stdin = Some(stdin_tx);
        loop {
            let message = tokio::select! {
                m = source.next() => m,
                _ = activity.idle_for(idle) => {
                    tracing::debug!("WebSocket session idle, closing");
                    None
                }
            };
            let Some(message) = message else { break };
            activity.touch();
            let (channel, data) = match message {
                Ok(Message::Binary(data)) if !data.is_empty() && !base64 => (data[0], data.slice(1..)),
                Ok(Message::Text(text)) if base64 && !text.is_empty() => {
                    let bytes = text.as_bytes();
                    let Some(channel) = bytes[0].checked_sub(b'0') else { continue };
                    use base64::Engine;
                    match base64::engine::general_purpose::STANDARD.decode(&bytes[1..]) {
                        Ok(decoded) => (channel, Bytes::from(decoded)),
                        Err(_) => continue,
                    }
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            match channel {
                STDIN => {
                    if let Some(w) = stdin.as_mut()
                        && w.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                RESIZE => {
                    if let Ok(size) = serde_json::from_slice::<TermSize>(&data) {
                        let _ = resize_tx.send(size).await;
                    }
                }
                CLOSE if close_channel && data.first() == Some(&STDIN) => {
                    if let Some(mut w) = stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {}
            }
        }
        reader_gone.cancel();
    });

    let channel = |c: u8| -> Writer { Box::pin(ChannelWriter::new(c, base64, out_tx.clone())) };
    // The session is up: an empty message on the lowest writable channel.
    let first = if options.stdout {
        STDOUT
    } else if options.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out_tx.try_send(frame(first, &[], base64));
    Session {
        stdin: options.stdin.then(|| Box::pin(stdin_rx) as Reader),
        stdout: options.stdout.then(|| channel(STDOUT)),
        stderr: options.stderr.then(|| channel(STDERR)),
        resize: options.tty.then_some(resize_rx),
        error: Some(channel(ERROR)),
        json_status,
        gone,
        keep: Vec::new(),
        transport: Transport::WebSocket { writer: out_tx, done },
    }
}

/// When a session last carried anything.
struct Activity {
    start: tokio::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { start: tokio::time::Instant::now(), last_ms: std::sync::atomic::AtomicU64::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves once nothing happened for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
            let since = self.start.elapsed().saturating_sub(last);
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    }
}

fn frame(channel: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        use base64::Engine;
        let mut text = String::from((b'0' + channel) as char);
        text.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
        Message::Text(text.into())
    } else {
        let mut bytes = Vec::with_capacity(data.len() + 1);
        bytes.push(channel);
        bytes.extend_from_slice(data);
        Message::Binary(bytes.into())
    }
}

/// Writes to one WebSocket channel: each write one message; shutdown sends v5's close signal
/// is not needed from the server (the connection's close ends every channel).
struct ChannelWriter {
    channel: u8,
    base64: bool,
    tx: tokio_util::sync::PollSender<Message>,
}

impl ChannelWriter {
    fn new(channel: u8, base64: bool, tx: mpsc::Sender<Message>) -> Self {
        Self { channel, base64, tx: tokio_util::sync::PollSender::new(tx) }
    }
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the WebSocket is closed");
        std::task::ready!(self.tx.poll_reserve(cx)).map_err(|_| gone())?;
        let message = frame(self.channel, buf, self.base64);
        self.tx.send_item(message).map_err(|_| gone())?;
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_of_each_outcome_is_what_client_go_decodes() {
        let cmd = vec!["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        assert_eq!(status_message(&cmd, &Outcome::Exited(0), true).unwrap(), r#"{"metadata":{},"status":"Success"}"#);
        assert_eq!(status_message(&cmd, &Outcome::Exited(0), false), None);
        let failure: serde_json::Value =
            serde_json::from_str(&status_message(&cmd, &Outcome::Exited(3), true).unwrap()).unwrap();
        assert_eq!(failure["status"], "Failure");
        assert_eq!(failure["reason"], "NonZeroExitCode");
        assert_eq!(failure["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "3"}));
        assert!(failure["message"].as_str().unwrap().contains("non-zero exit code"));
        let text = status_message(&cmd, &Outcome::Failed("no such thing".into()), false).unwrap();
        assert_eq!(text, "no such thing");
    }

    #[tokio::test]
    async fn sizes_split_across_reads_and_back_to_back_are_all_read() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut sizes = sizes_from(rx);
        tx.write_all(br#"{"Width":80,"Hei"#).await.unwrap();
        tx.write_all(br#"ght":24}{"Width":100,"Height":50}"#).await.unwrap();
        assert_eq!(sizes.recv().await, Some(TermSize { width: 80, height: 24 }));
        assert_eq!(sizes.recv().await, Some(TermSize { width: 100, height: 50 }));
        drop(tx);
        assert_eq!(sizes.recv().await, None);
    }
}

//! Shared by the streaming tests: servers inside a pod's network namespace, the HTTP upgrade
//! done by hand, a SPDY client (frames through crisp-spdy's codec, itself checked against
//! another zlib in its unit tests), and `crictl` as the real client-go client.

#![allow(dead_code)]

use bytes::Bytes;
use crisp_spdy::codec::{FrameDecoder, FrameEncoder};
use crisp_spdy::frame::FLAG_FIN;
use crisp_spdy::{Frame, Headers};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

/// A TCP listener on `127.0.0.1:<port>` inside the network namespace pinned at `netns` (the
/// host's when `None`; port 0 picks one), made by a thread that enters the namespace.
pub fn listen_in(netns: Option<&Path>, port: u16) -> tokio::net::TcpListener {
    let netns = netns.map(Path::to_path_buf);
    let listener = std::thread::spawn(move || {
        if let Some(netns) = netns {
            let file = std::fs::File::open(netns).unwrap();
            rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                .unwrap();
        }
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap()
    })
    .join()
    .unwrap();
    listener.set_nonblocking(true).unwrap();
    tokio::net::TcpListener::from_std(listener).unwrap()
}

/// Serves an echo on `listener`: every connection gets back what it sends, then a close when it
/// half-closes.
pub fn echo(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    })
}

/// The response head of an upgrade request and the connection after it.
pub struct Upgraded {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub socket: TcpStream,
}

impl Upgraded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `method` to `url` with `headers` and reads the response head.
pub async fn request(url: &str, method: &str, headers: &[(&str, &str)]) -> Upgraded {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut socket = TcpStream::connect(authority).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut byte)).await.unwrap().unwrap();
        assert!(n == 1, "connection closed in the response head: {}", String::from_utf8_lossy(&raw));
        raw.push(byte[0]);
    }
    let text = String::from_utf8(raw).unwrap();
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    Upgraded { status, headers, socket }
}

/// A SPDY/3.1 client on an upgraded connection: opens streams, sends data, collects each
/// stream's data until its FIN.
pub struct SpdyClient {
    frames: FramedRead<OwnedReadHalf, FrameDecoder>,
    sink: FramedWrite<OwnedWriteHalf, FrameEncoder>,
    next_id: u32,
    pub received: HashMap<u32, Vec<u8>>,
    pub finished: HashMap<u32, bool>,
    pub resets: HashMap<u32, u32>,
    pub replied: HashMap<u32, bool>,
    pub goaway: bool,
}

impl SpdyClient {
    pub fn new(socket: TcpStream) -> Self {
        let (r, w) = socket.into_split();
        Self {
            frames: FramedRead::new(r, FrameDecoder::default()),
            sink: FramedWrite::new(w, FrameEncoder::new()),
            next_id: 1,
            received: HashMap::new(),
            finished: HashMap::new(),
            resets: HashMap::new(),
            replied: HashMap::new(),
            goaway: false,
        }
    }

    pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let headers = headers.iter().fold(Headers::new(), |h, (n, v)| h.with(n, v));
        self.sink
            .send(Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, flags: 0, headers })
            .await
            .unwrap();
        id
    }

    pub async fn send(&mut self, id: u32, data: &[u8], fin: bool) {
        let flags = if fin { FLAG_FIN } else { 0 };
        self.sink.send(Frame::Data { stream_id: id, flags, data: Bytes::copy_from_slice(data) }).await.unwrap();
    }

    pub async fn ping(&mut self, id: u32) {
        self.sink.send(Frame::Ping { id }).await.unwrap();
    }

    /// Reads one frame and files it; false at the end of the connection.
    pub async fn pump(&mut self) -> bool {
        let next = tokio::time::timeout(Duration::from_secs(20), self.frames.next()).await.expect("a frame in time");
        let Some(frame) = next else { return false };
        match frame.unwrap() {
            Frame::SynReply { stream_id, .. } => {
                self.replied.insert(stream_id, true);
            }
            Frame::Data { stream_id, flags, data } => {
                self.received.entry(stream_id).or_default().extend_from_slice(&data);
                if flags & FLAG_FIN != 0 {
                    self.finished.insert(stream_id, true);
                }
            }
            Frame::RstStream { stream_id, status } => {
                self.resets.insert(stream_id, status);
            }
            Frame::GoAway { .. } => self.goaway = true,
            _ => {}
        }
        true
    }

    /// Everything stream `id` carried, once it is finished (FIN or reset).
    pub async fn read_to_end(&mut self, id: u32) -> Vec<u8> {
        while !self.finished.contains_key(&id) && !self.resets.contains_key(&id) {
            assert!(self.pump().await, "the connection ended before stream {id} did");
        }
        self.received.remove(&id).unwrap_or_default()
    }
}

/// Whether `crictl` (the real client-go client; not a Debian package: built by
/// `../shared/conformance/build-cri-tools.sh`) is installed. The tests that drive it say they
/// are skipped where it is not; the SPDY and WebSocket clients written in the tests still run.
pub fn crictl_installed() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join("crictl").is_file());
    if !found {
        eprintln!("SKIPPED: crictl is not installed (../shared/conformance/build-cri-tools.sh builds it)");
    }
    found
}

/// `crictl <args>` against the proxy socket at `proxy`, its stdin, stdout and stderr piped;
/// killed when dropped.
pub fn crictl(proxy: &Path, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("crictl")
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", proxy.display()))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("crictl runs")
}

/// `crictl port-forward` against the stack's proxy: the local address it listens on and the
/// process (killed when dropped).
pub struct Crictl {
    pub child: tokio::process::Child,
    pub local: String,
}

impl Crictl {
    pub async fn port_forward(proxy: &Path, pod: &str, remote_port: u16, transport: &str) -> Crictl {
        Crictl::port_forward_with(proxy, pod, remote_port, transport, &[]).await
    }

    /// With `extra` flags of `crictl port-forward` (TLS).
    pub async fn port_forward_with(
        proxy: &Path,
        pod: &str,
        remote_port: u16,
        transport: &str,
        extra: &[&str],
    ) -> Crictl {
        use tokio::io::AsyncBufReadExt;
        let remote = format!(":{remote_port}");
        let args: Vec<&str> = ["port-forward", "--transport", transport]
            .into_iter()
            .chain(extra.iter().copied())
            .chain([pod, &*remote])
            .collect();
        let mut child = crictl(proxy, &args);
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = child.stderr.take().unwrap();
        let local = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // "Forwarding from 127.0.0.1:41235 -> 8080"
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    return format!("127.0.0.1:{}", rest.split(' ').next().unwrap());
                }
            }
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err).await;
            panic!("crictl ended without forwarding: {err}");
        })
        .await
        .expect("crictl forwards in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Crictl { child, local }
    }
}

/// Sends `message` on a fresh connection to `addr`, half-closes, and reads the answer to its end.
pub async fn round_trip(addr: &str, message: &[u8]) -> Vec<u8> {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(message).await.unwrap();
    socket.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut answer)).await.unwrap().unwrap();
    answer
}

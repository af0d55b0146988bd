//! A scripted HTTP/1.1 server on loopback: each request (method, path) gets the answer a
//! test's function gives, on a connection closed after it. For registries and token servers
//! that misbehave in ways `docker-registry` does not. Every request's head is recorded
//! (`requests`), so a test can see which headers a host received.

use crisp_testkit::images::BuiltImage;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One answer: status, headers, body (sent with its `Content-Length`).
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply { status, headers: Vec::new(), body: body.into() }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A request's head as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// The server; it stops when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(handler: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> anyhow::Result<FakeServer> {
        FakeServer::start_on("127.0.0.1", move |request| handler(&request.method, &request.path)).await
    }

    /// A server on `ip` (any of 127.0.0.0/8: `127.0.0.2` is another host than `127.0.0.1`)
    /// whose handler sees the request's headers too.
    pub async fn start_on(
        ip: &str,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> anyhow::Result<FakeServer> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let handler: Arc<Handler> = Arc::new(handler);
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let record = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let handler = handler.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let mut first = text.lines().next().unwrap_or_default().split(' ');
                    let (method, target) = (first.next().unwrap_or_default(), first.next().unwrap_or_default());
                    let path = target.split('?').next().unwrap_or_default();
                    let headers = text
                        .lines()
                        .skip(1)
                        .take_while(|line| !line.is_empty())
                        .filter_map(|line| line.split_once(':'))
                        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
                        .collect();
                    let request = Recorded { method: method.to_string(), path: path.to_string(), headers };
                    record.lock().unwrap().push(request.clone());
                    let reply = handler(&request);
                    let (status, length) = (reply.status, reply.body.len());
                    let mut out =
                        format!("HTTP/1.1 {status} Fake\r\nContent-Length: {length}\r\nConnection: close\r\n");
                    for (name, value) in &reply.headers {
                        out.push_str(&format!("{name}: {value}\r\n"));
                    }
                    out.push_str("\r\n");
                    let mut bytes = out.into_bytes();
                    bytes.extend_from_slice(&reply.body);
                    let _ = stream.write_all(&bytes).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(FakeServer { addr, requests, task })
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// `<ip>:<port>`, as an image name's registry part.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A registry serving `image` as `test/app:v1` (manifest by tag and digest, config and layers
/// by digest), recording every request.
pub async fn serve_image(image: &BuiltImage) -> anyhow::Result<FakeServer> {
    let manifest = image.manifest.clone();
    let blobs: Vec<_> = image.layers.iter().chain([&image.config]).cloned().collect();
    FakeServer::start_on("127.0.0.1", move |request: &Recorded| {
        let path = request.path.as_str();
        if path == "/v2/" {
            return Reply::new(200, "{}");
        }
        let manifest_paths =
            ["/v2/test/app/manifests/v1".to_string(), format!("/v2/test/app/manifests/{}", manifest.digest)];
        if manifest_paths.iter().any(|p| p == path) {
            return Reply::new(200, manifest.data.clone())
                .header("Content-Type", &manifest.media_type)
                .header("Docker-Content-Digest", &manifest.digest);
        }
        match blobs.iter().find(|b| path == format!("/v2/test/app/blobs/{}", b.digest)) {
            Some(blob) => Reply::new(200, blob.data.clone()).header("Docker-Content-Digest", &blob.digest),
            None => Reply::new(404, r#"{"errors":[{"code":"NOT_FOUND"}]}"#),
        }
    })
    .await
}

//! The node-wide bound on layer downloads in flight: many pulls of different images at once
//! never have more blob GETs open at the registry than `image.max_downloads_in_flight`, and
//! every pull still completes (the waiting ones queue, they do not fail or stall).

mod image_support;

use crisp_testkit::StackOptions;
use crisp_testkit::images::{Format, ImageBuilder};
use crisp_testkit::registry::Registry;
use image_support::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

/// A loopback HTTP/1.1 relay in front of the registry that passes answers on slowly and counts
/// the blob GETs whose answer has not been passed on whole yet: the downloads in flight.
struct BlobGauge {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    blob_gets: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// Per connection: the request being answered (reqwest does not pipeline).
#[derive(Default)]
struct Exchange {
    head_request: bool,
    blob_get: bool,
}

impl BlobGauge {
    async fn start(upstream: SocketAddr, bytes_per_slice: usize) -> anyhow::Result<BlobGauge> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let blob_gets = Arc::new(AtomicUsize::new(0));
        let (o, m, b) = (open.clone(), most.clone(), blob_gets.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (open, most, blob_gets) = (o.clone(), m.clone(), b.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let exchange = Arc::new(Mutex::new(Exchange::default()));
                    let request_side = exchange.clone();
                    let (open_up, most_up, gets_up) = (open.clone(), most.clone(), blob_gets.clone());
                    let up = tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            // Requests carry no body here: each read starting with a method is
                            // a new request's head.
                            let text = String::from_utf8_lossy(&buf[..n]);
                            if let Some(line) = text.lines().next()
                                && (line.starts_with("GET ") || line.starts_with("HEAD "))
                            {
                                let mut ex = request_side.lock().await;
                                ex.head_request = line.starts_with("HEAD ");
                                ex.blob_get = line.starts_with("GET ") && line.contains("/blobs/");
                                if ex.blob_get {
                                    gets_up.fetch_add(1, Ordering::SeqCst);
                                    let now = open_up.fetch_add(1, Ordering::SeqCst) + 1;
                                    most_up.fetch_max(now, Ordering::SeqCst);
                                }
                            }
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                    });
                    // Answers: a head with Content-Length, then that many body bytes.
                    let mut pending: Vec<u8> = Vec::new();
                    let mut body_left: Option<usize> = None;
                    let mut buf = vec![0u8; bytes_per_slice];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        loop {
                            match body_left {
                                None => {
                                    let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else { break };
                                    let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                                    pending.drain(..end + 4);
                                    let length = head
                                        .lines()
                                        .find_map(|l| l.strip_prefix("content-length:"))
                                        .and_then(|v| v.trim().parse::<usize>().ok())
                                        .unwrap_or(0);
                                    let head_request = exchange.lock().await.head_request;
                                    body_left = Some(if head_request { 0 } else { length });
                                }
                                Some(left) => {
                                    let take = left.min(pending.len());
                                    pending.drain(..take);
                                    if left > take {
                                        body_left = Some(left - take);
                                        break;
                                    }
                                    body_left = None;
                                    if std::mem::take(&mut exchange.lock().await.blob_get) {
                                        open.fetch_sub(1, Ordering::SeqCst);
                                    }
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    // A connection closed mid-answer ends that download too.
                    if std::mem::take(&mut exchange.lock().await.blob_get) {
                        open.fetch_sub(1, Ordering::SeqCst);
                    }
                    let _ = client_write.shutdown().await;
                    up.abort();
                });
            }
        });
        Ok(BlobGauge { addr, open, most, blob_gets, task })
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for BlobGauge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn concurrent_pulls_never_have_more_downloads_in_flight_than_the_node_bound() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    // 32 KiB every 20 ms per connection: a 512 KiB layer takes about a third of a second.
    let gauge = BlobGauge::start(registry.addr(), 32 * 1024).await?;
    let mut images = Vec::new();
    for i in 0..5u64 {
        let image = ImageBuilder::new(Format::Oci)
            .data_layer(512 << 10, 100 + 3 * i)
            .data_layer(512 << 10, 101 + 3 * i)
            .data_layer(512 << 10, 102 + 3 * i)
            .build()?;
        registry.push(&format!("test/bound{i}"), "v1", &image).await?;
        images.push((format!("{}/test/bound{i}:v1", gauge.host()), image.id()));
    }
    // Three layers each pull may download at once, three in flight on the node.
    let stack = crisp_testkit::Stack::start_with(StackOptions {
        extra_config: "[image]\nmax_concurrent_downloads = 3\nmax_downloads_in_flight = 3\n".into(),
        ..Default::default()
    })
    .await?;

    let mut pulls = Vec::new();
    for (name, id) in images.clone() {
        let mut client = stack.image_client();
        pulls.push(tokio::spawn(async move { anyhow::Ok((pull(&mut client, &name).await?, id)) }));
    }
    for p in pulls {
        let (pulled, id) = p.await??;
        assert_eq!(pulled, id);
    }
    let most = gauge.most.load(Ordering::SeqCst);
    assert_eq!(gauge.blob_gets.load(Ordering::SeqCst), 15 + 5, "one GET per layer and config");
    assert!(most <= 3, "{most} blob GETs were open at once; the bound is 3");
    // The bound was reached: the pulls did overlap (15 layers, 3 at a time).
    assert_eq!(most, 3, "the pulls never overlapped");
    assert_eq!(gauge.open.load(Ordering::SeqCst), 0);
    assert_eq!(ctr_images(&stack)?.len(), 5 * 3);
    assert_no_leases(&stack).await?;
    Ok(())
}

//! Port-forward sessions (`portforward.k8s.io` over SPDY, also tunnelled through a WebSocket).
//! Per forwarded connection the client opens two streams with the same `requestID` header: an
//! `error` stream and a `data` stream, both carrying the `port` header. Once both are open, the
//! server connects to that port on the pod's loopback (inside its network namespace) and
//! copies bytes both ways, half-closes passed on; a failure is written as text on the error
//! stream. Many connections run at once in one session. A pair not completed within the
//! stream creation timeout is dropped with an error.

use crate::lookup::Pod;
use crate::netns;
use crisp_spdy::{Connection, Stream};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol of the SPDY tunnel.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
    since: Option<Instant>,
}

/// Serves one port-forward session on an upgraded connection until the client goes away.
pub async fn serve<T>(io: T, pod: Pod, spdy: crisp_spdy::Config, creation_timeout: Duration)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (connection, mut incoming) = Connection::server(io, spdy);
    let connection = Arc::new(connection);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1).min(creation_timeout));
    loop {
        tokio::select! {
            stream = incoming.accept() => {
                let Some(stream) = stream else { break };
                let headers = stream.headers();
                let kind = headers.get("streamtype").unwrap_or("").to_string();
                if headers.get("port").is_none() || !matches!(kind.as_str(), "error" | "data") {
                    tracing::debug!(stream = stream.id(), kind, "port-forward stream without a port or of an unknown type");
                    stream.reset(crisp_spdy::frame::rst::PROTOCOL_ERROR);
                    continue;
                }
                // Old clients send no requestID: the data stream follows its error stream (id + 2).
                let id = match headers.get("requestid") {
                    Some(id) => id.to_string(),
                    None if kind == "error" => stream.id().to_string(),
                    None => stream.id().saturating_sub(2).to_string(),
                };
                let pair = pairs.entry(id.clone()).or_default();
                pair.since.get_or_insert_with(Instant::now);
                let slot = if kind == "error" { &mut pair.error } else { &mut pair.data };
                if slot.is_some() {
                    stream.reset(crisp_spdy::frame::rst::PROTOCOL_ERROR);
                    continue;
                }
                *slot = Some(stream);
                if pair.error.is_some()
                    && pair.data.is_some()
                    && let Some(Pair { error: Some(error), data: Some(data), .. }) = pairs.remove(&id)
                {
                    forwards.spawn(forward(pod.clone(), error, data));
                }
            }
            _ = sweep.tick() => {
                let expired: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| p.since.is_some_and(|t| t.elapsed() >= creation_timeout))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    if let Some(pair) = pairs.remove(&id) {
                        tracing::debug!(request = id, "port-forward: timed out waiting for the stream pair");
                        if let Some(error) = pair.error {
                            let (_, mut send) = error.split();
                            let _ = send.write_all(format!("timed out waiting for streams of request {id}").as_bytes()).await;
                            let _ = send.shutdown().await;
                        }
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    // The client said GOAWAY or went away: let running forwards finish (each ends when either
    // side closes), then close.
    while forwards.join_next().await.is_some() {}
    drop(connection);
}

async fn forward(pod: Pod, error: Stream, data: Stream) {
    let port = data.headers().get("port").unwrap_or("").to_string();
    let (_, mut error_out) = error.split();
    let result = match port.parse::<u16>() {
        Ok(p) if p > 0 => copy(&pod, p, data).await,
        _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("invalid port {port:?}"))),
    };
    if let Err(e) = result {
        tracing::debug!(pod = pod.id, port, error = %e, "port-forward connection failed");
        let message = format!("error forwarding port {port} to pod {}, uid : {e}", pod.id);
        let _ = error_out.write_all(message.as_bytes()).await;
    }
    let _ = error_out.shutdown().await;
}

/// Copies between the data stream and the pod's port until the pod's side ends (or either
/// side fails); the client's half-close is passed on as the socket's.
async fn copy(pod: &Pod, port: u16, data: Stream) -> std::io::Result<()> {
    let socket = netns::connect(pod.netns.as_deref(), port).await?;
    let (mut from_client, mut to_client) = data.split();
    let (mut from_pod, mut to_pod) = socket.into_split();
    let upstream = async {
        tokio::io::copy(&mut from_client, &mut to_pod).await?;
        to_pod.shutdown().await
    };
    let downstream = async {
        tokio::io::copy(&mut from_pod, &mut to_client).await?;
        to_client.shutdown().await
    };
    tokio::pin!(upstream, downstream);
    tokio::select! {
        done = &mut downstream => {
            // The pod closed: whatever the client still sends has nowhere to go.
            done
        }
        up = &mut upstream => {
            match up {
                // The client half-closed: the pod may still answer.
                Ok(()) => downstream.await,
                Err(e) => Err(e),
            }
        }
    }
}

//! The image service replicas, as one service.
//!
//! Each replica's gRPC health (`grpc.health.v1.Health/Check` for `runtime.v1.ImageService`) is
//! checked every interval: a replica that fails the check is taken out of the rotation and put
//! back when it answers SERVING again. Calls go round-robin over the healthy replicas. A call
//! whose replica cannot be reached (connection refused, broken) is tried on the next one at once
//! (the request is held whole for this), so a replica that dies between two health checks costs
//! no call; that replica leaves the rotation. Nothing else counts against a replica: a gRPC
//! error it answers, a stream it resets, or a call whose caller's deadline passes (the caller's
//! own doing; the layer above drops the call) leave its health as it was.

use crate::backend::BackendError;
use crate::{Backend, Call, ProxyMetrics, Response, clone_call};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct Replica {
    backend: Backend,
    healthy: AtomicBool,
    /// `crisp_proxy_image_replica_healthy` of this replica, when the proxy serves metrics.
    gauge: Option<Gauge>,
}

impl Replica {
    fn set_healthy(&self, healthy: bool, why: &str) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if let Some(gauge) = &self.gauge {
                gauge.set(i64::from(healthy));
            }
            if healthy {
                tracing::info!(backend = %self.backend.describe(), "image service replica is back in rotation");
            } else {
                tracing::warn!(backend = %self.backend.describe(), reason = why, "image service replica taken out of rotation");
            }
        }
    }
}

/// See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct ImagePool {
    replicas: Arc<Vec<Replica>>,
    next: Arc<AtomicUsize>,
    /// `crisp_proxy_image_retries_total`, when the proxy serves metrics.
    retries: Option<Counter>,
}

impl ImagePool {
    pub fn new(backends: Vec<Backend>) -> Self {
        Self::with_metrics(backends, None)
    }

    /// [`ImagePool::new`], keeping each replica's health and the retries in `metrics`.
    pub fn with_metrics(backends: Vec<Backend>, metrics: Option<&ProxyMetrics>) -> Self {
        let replicas = backends
            .into_iter()
            .enumerate()
            // Healthy until a check or a call says otherwise: the first call need not wait.
            .map(|(i, backend)| {
                let gauge = metrics.map(|m| m.replica_healthy(i));
                if let Some(gauge) = &gauge {
                    gauge.set(1);
                }
                Replica { backend, healthy: AtomicBool::new(true), gauge }
            })
            .collect();
        Self {
            replicas: Arc::new(replicas),
            next: Arc::new(AtomicUsize::new(0)),
            retries: metrics.map(ProxyMetrics::image_retries),
        }
    }

    /// How many replicas are in the rotation now.
    pub fn healthy_replicas(&self) -> usize {
        self.replicas.iter().filter(|r| r.healthy.load(Ordering::Relaxed)).count()
    }

    /// The order to try replicas in for one call: the healthy ones from the next turn of the
    /// rotation, then the others (a replica may have come back since its last check).
    fn order(&self) -> Vec<usize> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let rotation = (0..n).map(|i| (start + i) % n);
        let (mut healthy, unhealthy): (Vec<_>, Vec<_>) =
            rotation.partition(|&i| self.replicas[i].healthy.load(Ordering::Relaxed));
        healthy.extend(unhealthy);
        healthy
    }

    /// Forwards one call to a replica.
    pub async fn call(&self, call: Call) -> Result<Response, tonic::Status> {
        let order = self.order();
        let mut failures = Vec::new();
        let mut call = Some(call);
        for (tried, &index) in order.iter().enumerate() {
            let replica = &self.replicas[index];
            // The last replica to try takes the call itself; the others a copy.
            let this = if tried + 1 == order.len() { call.take() } else { call.as_ref().map(clone_call) };
            let Some(this) = this else { break };
            match replica.backend.call(this).await {
                Ok(response) => {
                    replica.set_healthy(true, "");
                    return Ok(response);
                }
                Err(BackendError::Unreachable(status)) => {
                    replica.set_healthy(false, status.message());
                    failures.push(status.message().to_string());
                    if tried + 1 < order.len()
                        && let Some(retries) = &self.retries
                    {
                        retries.inc();
                    }
                }
                Err(BackendError::Reset(status)) => return Err(status),
            }
        }
        Err(tonic::Status::unavailable(format!("no image service replica is available: {}", failures.join("; "))))
    }

    /// Checks every replica's health every `interval`, for as long as the runtime runs.
    pub fn spawn_health_checks(&self, interval: Duration, connect_timeout: Duration) {
        for index in 0..self.replicas.len() {
            let replicas = self.replicas.clone();
            tokio::spawn(async move {
                let replica = &replicas[index];
                let channel = crisp_grpc_server::unix_channel(replica.backend.socket(), connect_timeout);
                let mut client = HealthClient::new(channel);
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let request = HealthCheckRequest { service: crisp_proto::IMAGE_SERVICE_NAME.into() };
                    let outcome =
                        tokio::time::timeout(interval.max(Duration::from_secs(1)), client.check(request)).await;
                    match outcome {
                        Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => {
                            replica.set_healthy(true, "")
                        }
                        Ok(Ok(response)) => {
                            replica.set_healthy(false, &format!("health status {}", response.get_ref().status))
                        }
                        Ok(Err(status)) => replica.set_healthy(false, status.message()),
                        Err(_) => replica.set_healthy(false, "health check timed out"),
                    }
                }
            });
        }
    }
}

impl crate::deadline::Named for ImagePool {
    fn name(&self) -> &str {
        "image service"
    }
}

impl tower::Service<Call> for ImagePool {
    type Response = Response;
    type Error = tonic::Status;
    type Future = Pin<Box<dyn Future<Output = Result<Response, tonic::Status>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let pool = self.clone();
        Box::pin(async move { ImagePool::call(&pool, call).await })
    }
}

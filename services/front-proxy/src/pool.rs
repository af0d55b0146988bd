//! The image service replicas.
//!
//! Each replica's gRPC health (`grpc.health.v1.Health/Check` for `runtime.v1.ImageService`) is
//! checked every interval: a replica that fails is taken out of the rotation and put back when
//! it answers SERVING again. Calls go round-robin over the healthy replicas. A call that cannot
//! reach its replica is tried on the next one at once (CRI image requests are small and are
//! held in memory for this), so a replica that dies between two health checks costs no call.

use crate::{Backend, Response};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct Replica {
    backend: Backend,
    healthy: AtomicBool,
}

impl Replica {
    fn set_healthy(&self, healthy: bool, why: &str) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
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
}

impl ImagePool {
    pub fn new(backends: Vec<Backend>) -> Self {
        let replicas = backends
            .into_iter()
            // Healthy until a check or a call says otherwise: the first call need not wait.
            .map(|backend| Replica { backend, healthy: AtomicBool::new(true) })
            .collect();
        Self { replicas: Arc::new(replicas), next: Arc::new(AtomicUsize::new(0)) }
    }

    /// The order to try replicas in for one call: the healthy ones from the next turn of the
    /// rotation, then the others (a replica may have come back since its last check).
    fn order(&self) -> Vec<&Replica> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let rotation = (0..n).map(|i| &self.replicas[(start + i) % n]);
        let (mut healthy, unhealthy): (Vec<_>, Vec<_>) = rotation.partition(|r| r.healthy.load(Ordering::Relaxed));
        healthy.extend(unhealthy);
        healthy
    }

    /// Forwards one call whose body has been read into `body`.
    pub async fn call(&self, head: &http::request::Parts, body: Bytes) -> Result<Response, tonic::Status> {
        let mut failures = Vec::new();
        for replica in self.order() {
            let request = rebuild(head, body.clone());
            match replica.backend.call(request).await {
                Ok(response) => {
                    replica.set_healthy(true, "");
                    return Ok(response);
                }
                Err(status) => {
                    replica.set_healthy(false, status.message());
                    failures.push(status.message().to_string());
                }
            }
        }
        Err(tonic::Status::unavailable(format!("no image service replica is available: {}", failures.join("; "))))
    }

    /// Checks every replica's health every `interval`, for as long as the runtime runs.
    pub fn spawn_health_checks(&self, interval: Duration) {
        for index in 0..self.replicas.len() {
            let replicas = self.replicas.clone();
            tokio::spawn(async move {
                let replica = &replicas[index];
                let mut client = HealthClient::new(replica.backend.channel());
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let request = HealthCheckRequest { service: crisp_proto::IMAGE_SERVICE_NAME.into() };
                    let outcome = tokio::time::timeout(interval, client.check(request)).await;
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

fn rebuild(head: &http::request::Parts, body: Bytes) -> http::Request<tonic::body::Body> {
    let mut request = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(body)));
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request
}

//! Concurrent pulls of one image in this process share one pull. The pull runs in its own
//! task; it is cancelled when the last caller waiting for it goes away (its deadline passed or
//! it hung up).

use crate::error::PullError;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A pull's outcome: the image's id.
pub type PullResult = Result<crisp_image_model::ImageId, Arc<PullError>>;

struct Flight {
    id: u64,
    result: watch::Receiver<Option<PullResult>>,
    waiters: usize,
    cancel: CancellationToken,
    /// The span the pull task runs in (a child of the span of the call that started it).
    span: tracing::Span,
}

#[derive(Clone, Default)]
pub struct Coalescer {
    flights: Arc<Mutex<HashMap<String, Flight>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

/// One caller's wait on a flight; dropping it leaves the flight.
struct Waiter {
    coalescer: Coalescer,
    key: String,
    id: u64,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut flights = self.coalescer.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get_mut(&self.key).filter(|f| f.id == self.id) {
            flight.waiters -= 1;
            if flight.waiters == 0 {
                flight.cancel.cancel();
                flights.remove(&self.key);
            }
        }
    }
}

/// The image part of a coalescing key (`<reference>#<credentials hash>`), for logs.
fn image_of(key: &str) -> &str {
    key.split_once('#').map_or(key, |(image, _)| image)
}

impl Coalescer {
    /// Joins the pull for `key`, starting it with `start` when none runs. The pull task runs
    /// in a child span of the caller's current span (the one that starts it); a caller joining
    /// a running pull has its span marked as following from the pull's.
    pub async fn join<F, Fut>(&self, key: &str, start: F) -> PullResult
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = PullResult> + Send + 'static,
    {
        let (mut result, waiter) = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get_mut(key) {
                Some(flight) => {
                    flight.waiters += 1;
                    crate::metrics::METRICS.coalesced.inc();
                    tracing::info!(image = image_of(key), waiters = flight.waiters, "joining a pull already running");
                    tracing::Span::current().follows_from(&flight.span);
                    let waiter = Waiter { coalescer: self.clone(), key: key.to_string(), id: flight.id };
                    (flight.result.clone(), waiter)
                }
                None => {
                    let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let cancel = CancellationToken::new();
                    let (sender, receiver) = watch::channel(None);
                    let pull = start(cancel.clone());
                    let flights_ref = self.flights.clone();
                    let key_owned = key.to_string();
                    let parent = tracing::Span::current();
                    let span = tracing::info_span!(parent: &parent, "pull_task", image = image_of(key));
                    let task_span = span.clone();
                    tokio::spawn(
                        async move {
                            let outcome = pull.await;
                            // Later callers start afresh (and find the image in containerd).
                            {
                                let mut flights = flights_ref.lock().unwrap_or_else(|p| p.into_inner());
                                if flights.get(&key_owned).is_some_and(|f| f.id == id) {
                                    flights.remove(&key_owned);
                                }
                            }
                            let _ = sender.send(Some(outcome));
                        }
                        .instrument(task_span),
                    );
                    flights.insert(key.to_string(), Flight { id, result: receiver.clone(), waiters: 1, cancel, span });
                    (receiver, Waiter { coalescer: self.clone(), key: key.to_string(), id })
                }
            }
        };
        let outcome = loop {
            if let Some(outcome) = result.borrow_and_update().clone() {
                break outcome;
            }
            if result.changed().await.is_err() {
                break Err(Arc::new(PullError::Internal("the pull task ended without a result".into())));
            }
        };
        drop(waiter);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_joins_share_one_pull() {
        let coalescer = Coalescer::default();
        let starts = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let coalescer = coalescer.clone();
            let starts = starts.clone();
            tasks.push(tokio::spawn(async move {
                coalescer
                    .join("img", |_| {
                        starts.fetch_add(1, Ordering::SeqCst);
                        async {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Ok(crisp_image_model::ImageId::of_config(crisp_image_model::Digest::sha256_of(b"x")))
                        }
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().digest(), &crisp_image_model::Digest::sha256_of(b"x"));
        }
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn last_waiter_leaving_cancels() {
        let coalescer = Coalescer::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let joined = coalescer.join("img", |cancel| async move {
            cancel.cancelled().await;
            let _ = tx.send(());
            Err(Arc::new(PullError::Cancelled))
        });
        assert!(tokio::time::timeout(Duration::from_millis(100), joined).await.is_err());
        tokio::time::timeout(Duration::from_secs(1), rx).await.unwrap().unwrap();
    }
}

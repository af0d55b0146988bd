//! A pull's progress: bytes downloaded and blobs/layers finished, watched in a sliding window
//! so that a connection trickling a few bytes now and then still counts as stalled.

use crate::error::PullError;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Less than this many bytes in a whole window (with no blob or layer finished) is a stall.
pub const MIN_BYTES_PER_WINDOW: u64 = 64 * 1024;
/// How often a pull logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Progress {
    /// Bytes downloaded (or written by another writer we wait for).
    pub bytes: AtomicU64,
    /// Bytes the pull has to download in all (known once the manifest is read).
    pub total: AtomicU64,
    /// Blobs stored and layers unpacked: each is progress too.
    pub steps: AtomicU64,
    /// Layer unpacks running now (containerd's diff apply reports nothing while it works).
    pub unpacking: AtomicU64,
    /// Layer downloads waiting for the node's bound on downloads in flight: waiting for other
    /// pulls is no stall.
    pub queued: AtomicU64,
}

impl Progress {
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        crate::metrics::METRICS.bytes.inc_by(n);
    }

    pub fn step(&self) {
        self.steps.fetch_add(1, Ordering::Relaxed);
    }

    fn sample(&self) -> (u64, u64, bool) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.steps.load(Ordering::Relaxed),
            self.unpacking.load(Ordering::Relaxed) > 0 || self.queued.load(Ordering::Relaxed) > 0,
        )
    }
}

/// Resolves with `Stalled` once a window passes without progress; logs progress meanwhile.
pub async fn watchdog(progress: &Progress, window: Duration, image: &str) -> PullError {
    let tick = (window / 10).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut samples: VecDeque<(Instant, u64, u64, bool)> = VecDeque::new();
    let mut last_log = Instant::now();
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        let now = Instant::now();
        let (bytes, steps, unpacking) = progress.sample();
        samples.push_back((now, bytes, steps, unpacking));
        // Keep the oldest sample that is still at least a window old, and everything after.
        while samples.len() > 1 && now.duration_since(samples[1].0) >= window {
            samples.pop_front();
        }
        if now.duration_since(last_log) >= LOG_EVERY {
            last_log = now;
            let total = progress.total.load(Ordering::Relaxed);
            tracing::info!(image, bytes_done = bytes, bytes_total = total, "pull progress: {bytes}/{total} bytes");
        }
        let (oldest_at, oldest_bytes, oldest_steps, _) = samples[0];
        if now.duration_since(oldest_at) < window {
            continue;
        }
        let busy = samples.iter().any(|s| s.3);
        if !busy && bytes - oldest_bytes < MIN_BYTES_PER_WINDOW && steps == oldest_steps {
            return PullError::Stalled { window, min_bytes: MIN_BYTES_PER_WINDOW };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Adds `bytes` of progress every 100 ms until aborted.
    fn feed(progress: &Arc<Progress>, bytes: u64) -> tokio::task::JoinHandle<()> {
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                progress.add_bytes(bytes);
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_a_stall() {
        let progress = Arc::new(Progress::default());
        let feeder = feed(&progress, 10);
        let started = Instant::now();
        let err = watchdog(&progress, Duration::from_secs(2), "x").await;
        assert!(matches!(err, PullError::Stalled { .. }));
        assert!(started.elapsed() >= Duration::from_secs(2) && started.elapsed() < Duration::from_secs(3));
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn steady_progress_is_no_stall() {
        let progress = Arc::new(Progress::default());
        let feeder = feed(&progress, 16 * 1024);
        let result =
            tokio::time::timeout(Duration::from_secs(10), watchdog(&progress, Duration::from_secs(2), "x")).await;
        assert!(result.is_err(), "watchdog fired on a steady download");
        feeder.abort();
    }
}

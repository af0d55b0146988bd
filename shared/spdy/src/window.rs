//! A flow-control window: a byte count that senders wait on while it is spent and that
//! WINDOW_UPDATEs (or a reader draining its buffer) refill.

use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Debug)]
pub(crate) struct Window {
    avail: Mutex<i64>,
    notify: Notify,
}

impl Window {
    pub(crate) fn new(initial: i64) -> Self {
        Self { avail: Mutex::new(initial), notify: Notify::new() }
    }

    fn with<R>(&self, f: impl FnOnce(&mut i64) -> R) -> R {
        let mut avail = self.avail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut avail)
    }

    #[cfg(test)]
    pub(crate) fn available(&self) -> i64 {
        self.with(|a| *a)
    }

    /// Adds `delta` (negative after a smaller SETTINGS initial window) and wakes waiters.
    pub(crate) fn add(&self, delta: i64) {
        self.with(|a| *a = a.saturating_add(delta));
        self.notify.notify_waiters();
    }

    /// Waits until the window is open, then takes up to `want` bytes of it.
    pub(crate) async fn take_up_to(&self, want: usize) -> usize {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken = self.with(|a| {
                if *a > 0 {
                    let n = (*a).min(want as i64);
                    *a -= n;
                    n as usize
                } else {
                    0
                }
            });
            if taken > 0 || want == 0 {
                return taken;
            }
            notified.await;
        }
    }

    /// Waits until the window is open, then takes all of `n` (it may go negative): a buffer
    /// that admits one more chunk whenever it is not full.
    pub(crate) async fn overdraw(&self, n: usize) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.with(|a| {
                if *a > 0 {
                    *a -= n as i64;
                    true
                } else {
                    false
                }
            }) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_spent_window_holds_the_sender_until_it_is_refilled() {
        let window = Arc::new(Window::new(10));
        assert_eq!(window.take_up_to(4).await, 4);
        assert_eq!(window.take_up_to(100).await, 6);
        let waiting = tokio::spawn({
            let window = window.clone();
            async move { window.take_up_to(5).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        window.add(3);
        assert_eq!(waiting.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn an_open_buffer_admits_one_chunk_past_its_size() {
        let window = Window::new(4);
        window.overdraw(10).await;
        assert_eq!(window.available(), -6);
        let blocked = tokio::time::timeout(Duration::from_millis(20), window.overdraw(1)).await;
        assert!(blocked.is_err());
        window.add(7);
        window.overdraw(1).await;
        assert_eq!(window.available(), 0);
    }
}

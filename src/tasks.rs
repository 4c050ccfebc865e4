//! A set of tokio tasks that its owner can wait for: each task holds a
//! guard for its whole life (a panic unwinds through it too), and
//! [`TaskSet::wait_empty`] blocks a plain thread until every task is gone or
//! a deadline passes. Shutdown awaits the set instead of polling a global
//! counter.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Inner {
    live: AtomicUsize,
    lock: Mutex<()>,
    emptied: Condvar,
}

/// Tasks spawned through this set; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct TaskSet {
    inner: Arc<Inner>,
}

/// Counts one task for as long as it lives.
#[derive(Debug)]
pub struct TaskGuard(Arc<Inner>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let inner = &self.0;
        let _guard = inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        if inner.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            inner.emptied.notify_all();
        }
    }
}

impl TaskSet {
    pub fn new() -> TaskSet {
        TaskSet::default()
    }

    /// A guard counted in this set: hold it for the life of a task.
    pub fn guard(&self) -> TaskGuard {
        self.inner.live.fetch_add(1, Ordering::SeqCst);
        TaskGuard(self.inner.clone())
    }

    /// Spawns `future` on `runtime`, counted until it ends (or panics).
    pub fn spawn<F>(&self, runtime: &tokio::runtime::Handle, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let guard = self.guard();
        runtime.spawn(async move {
            let _guard = guard;
            future.await
        })
    }

    /// Tasks alive now.
    pub fn len(&self) -> usize {
        self.inner.live.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Blocks until no task is left or `timeout` passes; true if empty.
    /// Never call it from a runtime thread.
    pub fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let inner = &self.inner;
        let mut guard = inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        while inner.live.load(Ordering::SeqCst) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = inner.emptied.wait_timeout(guard, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_tasks_and_counts_panicking_ones_out() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let tasks = TaskSet::new();
        tasks.spawn(runtime.handle(), async { tokio::time::sleep(Duration::from_millis(50)).await });
        tasks.spawn(runtime.handle(), async { panic!("a task that panics still leaves the set") });
        assert!(!tasks.is_empty());
        assert!(tasks.wait_empty(Duration::from_secs(5)));
        assert!(tasks.is_empty());
        let stuck = tasks.guard();
        assert!(!tasks.wait_empty(Duration::from_millis(20)));
        drop(stuck);
        assert!(tasks.wait_empty(Duration::from_millis(20)));
    }
}

//! One shutdown signal, made in `main` and cloned into every stage.
//!
//! Dropping or triggering the [`Trigger`] is the signal. A [`Shutdown`] can be
//! polled, waited on with a timeout from a plain thread, or awaited from
//! async code, so the media threads, the HTTP tasks and every other task
//! stop on the same event. [`Shutdown::child`] makes a signal of its own
//! that the parent's triggers too (an on-demand source stops alone, or with
//! everything).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

#[derive(Debug, Default)]
struct Inner {
    stopped: AtomicBool,
    lock: Mutex<()>,
    condvar: Condvar,
    notify: tokio::sync::Notify,
    /// Signals made by `child`, triggered with this one.
    children: Mutex<Vec<Weak<Inner>>>,
}

impl Inner {
    fn trigger(&self) {
        // Setting the flag under the lock means a waiter that checked the
        // flag and then waits on the condvar cannot miss the wake-up.
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.stopped.store(true, Ordering::SeqCst);
        drop(guard);
        self.condvar.notify_all();
        self.notify.notify_waiters();
        let children = std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        for child in children.iter().filter_map(Weak::upgrade) {
            child.trigger();
        }
    }
}

/// Starts the shutdown; dropping it does too.
#[derive(Debug)]
pub struct Trigger(Arc<Inner>);

/// Observes the shutdown.
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<Inner>);

/// A linked trigger and observer.
pub fn channel() -> (Trigger, Shutdown) {
    let inner = Arc::new(Inner::default());
    (Trigger(inner.clone()), Shutdown(inner))
}

impl Trigger {
    pub fn trigger(&self) {
        self.0.trigger();
    }

    pub fn observer(&self) -> Shutdown {
        Shutdown(self.0.clone())
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.trigger();
    }
}

impl Shutdown {
    /// A new signal of its own, also triggered when this one is.
    pub fn child(&self) -> (Trigger, Shutdown) {
        let (trigger, shutdown) = channel();
        let mut children = self.0.children.lock().unwrap_or_else(|e| e.into_inner());
        children.retain(|c| c.strong_count() > 0);
        children.push(Arc::downgrade(&shutdown.0));
        drop(children);
        if self.is_triggered() {
            trigger.trigger();
        }
        (trigger, shutdown)
    }

    pub fn is_triggered(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    /// Blocks up to `timeout`; true if shutdown was triggered.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let inner = &self.0;
        let guard = inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (_guard, _) = inner
            .condvar
            .wait_timeout_while(guard, timeout, |_| !inner.stopped.load(Ordering::SeqCst))
            .unwrap_or_else(|e| e.into_inner());
        self.is_triggered()
    }

    /// Resolves once shutdown is triggered.
    pub async fn wait(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_waiting_thread_wakes_when_triggered() {
        let (trigger, shutdown) = channel();
        let waiter = std::thread::spawn(move || shutdown.wait_timeout(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        let started = Instant::now();
        trigger.trigger();
        assert!(waiter.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_child_stops_alone_or_with_its_parent() {
        let (parent_trigger, parent) = channel();
        let (child_trigger, child) = parent.child();
        child_trigger.trigger();
        assert!(child.is_triggered() && !parent.is_triggered());
        let (_second_trigger, second) = parent.child();
        parent_trigger.trigger();
        assert!(second.wait_timeout(Duration::from_secs(1)));
        let (_late, late) = parent.child();
        assert!(late.is_triggered(), "a child of a stopped parent starts stopped");
    }

    #[test]
    fn dropping_the_trigger_is_the_signal() {
        let (trigger, shutdown) = channel();
        assert!(!shutdown.wait_timeout(Duration::from_millis(1)));
        drop(trigger);
        assert!(shutdown.is_triggered());
    }
}

//! The state one `BatchQueue` shares between its producers and its consumer.
//!
//! Hot path: a put is one `ArrayQueue::push` (lock-free) plus a counter and a look at the
//! consumer's `sleeping` flag; the consumer is unparked only when it sleeps, so a busy
//! consumer costs producers no system call. Slow paths (a full queue, `join`) wait on a
//! Condvar in slices, without the GIL, and the consumer notifies it only when someone waits.
//!
//! Locks: `pending` and `control` are only taken with the GIL held, for a few instructions,
//! never across a call into Python (and no Python object is dropped under them), so they are
//! free at `fork()` time; `progress` and `parker` are taken without the GIL and never wait for
//! it. A forked child replaces the whole `Shared` (see `BatchQueue::_after_fork`).

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::sync::{Parker, Unparker};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

/// `stop` modes: keep consuming; finish what is queued, then end; end after the event in hand.
pub const RUN: u8 = 0;
pub const DRAIN: u8 = 1;
pub const STOP_NOW: u8 = 2;

/// Lock a mutex whose data stays consistent even if a holder panicked (none of ours can
/// leave it half-updated), instead of unwrapping a poison error.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Slow-path state of the queue's lifecycle.
#[derive(Default)]
pub struct Control {
    /// The consumer's `threading.Thread`, from `start()` until `stop()` joins it.
    pub worker: Option<Py<PyAny>>,
    /// The exception that stopped the background consumer, until re-raised.
    pub error: Option<PyErr>,
    /// The thread holding the consumer role (the worker once it runs, or a `drain()` caller).
    pub consumer: Option<ThreadId>,
}

/// What a producer waiting for room got.
pub enum Room {
    Pushed,
    Waiting(Py<PyAny>),
}

pub struct Shared {
    pub events: ArrayQueue<Py<PyAny>>,
    /// The consumer's current batch, consulted before `events`; only the role holder uses it.
    pub pending: Mutex<VecDeque<Py<PyAny>>>,
    pub pending_len: AtomicUsize,
    /// Incremented just before each push attempt and taken back if it fails, so `join` never
    /// misses an event pushed before it was called.
    pub put_count: AtomicU64,
    /// Events handed to the dispatcher (a failing one counts). Written only by the role holder.
    pub dispatched: AtomicU64,
    /// Events whose dispatch has finished (what `join` waits for): the dispatcher asked for the
    /// next one, or the batch ended. Published after the consumer's exception is kept, so a
    /// `join` that sees it also sees the exception.
    pub completed: AtomicU64,
    pub closed: AtomicBool,
    /// `control.error` is set (changed only with `control` held, so the two always agree).
    pub failed: AtomicBool,
    pub stop: AtomicU8,
    /// The consumer role: held by the started consumer for its whole run, or by one `drain()`.
    pub consuming: AtomicBool,
    /// From `start()` until the worker's consumer loop has returned.
    pub worker_active: AtomicBool,
    sleeping: AtomicBool,
    parker: Mutex<Parker>,
    unparker: Unparker,
    waiters: AtomicUsize,
    progress: Mutex<()>,
    progress_cv: Condvar,
    pub control: Mutex<Control>,
}

impl Shared {
    pub fn new(capacity: usize) -> Self {
        let parker = Parker::new();
        let unparker = parker.unparker().clone();
        Self {
            events: ArrayQueue::new(capacity),
            pending: Mutex::new(VecDeque::new()),
            pending_len: AtomicUsize::new(0),
            put_count: AtomicU64::new(0),
            dispatched: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            stop: AtomicU8::new(RUN),
            consuming: AtomicBool::new(false),
            worker_active: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            parker: Mutex::new(parker),
            unparker,
            waiters: AtomicUsize::new(0),
            progress: Mutex::new(()),
            progress_cv: Condvar::new(),
            control: Mutex::new(Control::default()),
        }
    }

    /// Events put and not yet dispatched.
    pub fn len(&self) -> usize {
        self.events.len() + self.pending_len.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.pending_len.load(Relaxed) == 0 && self.events.is_empty()
    }

    /// Push without waiting; hands the event back when the queue is full.
    pub fn try_push(&self, event: Py<PyAny>) -> Result<(), Py<PyAny>> {
        self.put_count.fetch_add(1, SeqCst);
        match self.events.push(event) {
            Ok(()) => {
                // The push was a SeqCst CAS; the consumer sets `sleeping` (SeqCst) before it
                // looks at the queue, so one of us sees the other.
                if self.sleeping.load(SeqCst) {
                    self.unparker.unpark();
                }
                Ok(())
            }
            Err(event) => {
                self.put_count.fetch_sub(1, SeqCst);
                Err(event)
            }
        }
    }

    /// Push without counting it yet: the caller holds the GIL until it calls `count_pushed`
    /// (see `producer`), so no one can observe the gap.
    pub fn push_uncounted(&self, event: Py<PyAny>) -> Result<(), Py<PyAny>> {
        self.events.push(event)
    }

    /// Count `pushed` events pushed with `push_uncounted`, and wake the consumer if it sleeps.
    pub fn count_pushed(&self, pushed: u64) {
        if pushed > 0 {
            self.put_count.fetch_add(pushed, SeqCst);
            if self.sleeping.load(SeqCst) {
                self.unparker.unpark();
            }
        }
    }

    /// Without the GIL: push `event` as soon as there is room, waiting at most `slice`.
    pub fn push_or_wait(&self, event: Py<PyAny>, slice: Duration) -> Room {
        self.waiters.fetch_add(1, SeqCst);
        fence(SeqCst);
        let guard = lock(&self.progress);
        let outcome = match self.push_unless_closed(event) {
            Ok(()) => Room::Pushed,
            Err(event) if self.gave_up() => Room::Waiting(event),
            Err(event) => {
                let (guard, _) = self
                    .progress_cv
                    .wait_timeout(guard, slice)
                    .unwrap_or_else(PoisonError::into_inner);
                let pushed = self.push_unless_closed(event);
                drop(guard);
                match pushed {
                    Ok(()) => Room::Pushed,
                    Err(event) => Room::Waiting(event),
                }
            }
        };
        self.waiters.fetch_sub(1, SeqCst);
        outcome
    }

    /// Without the GIL: wait at most `slice` for `done()` to hold.
    pub fn wait_until(&self, slice: Duration, done: impl Fn() -> bool) {
        self.waiters.fetch_add(1, SeqCst);
        fence(SeqCst);
        let guard = lock(&self.progress);
        if !done() && !self.gave_up() {
            drop(self.progress_cv.wait_timeout(guard, slice));
        }
        self.waiters.fetch_sub(1, SeqCst);
    }

    /// `try_push`, unless the queue was closed or the consumer failed (checked under
    /// `progress`, like `close` sets it).
    fn push_unless_closed(&self, event: Py<PyAny>) -> Result<(), Py<PyAny>> {
        if self.gave_up() {
            return Err(event);
        }
        self.try_push(event)
    }

    /// Closed, or the consumer failed: waiters should stop waiting and look.
    pub fn gave_up(&self) -> bool {
        self.closed.load(SeqCst) || self.failed.load(SeqCst)
    }

    /// The end of a batch (after keeping the consumer's exception, if any): everything handed
    /// to the dispatcher is done; wake `join` callers.
    pub fn finish_batch(&self) {
        self.completed.store(self.dispatched.load(SeqCst), SeqCst);
        self.notify_waiters();
    }

    /// Wake producers and `join` callers, if any wait (call after any change they wait for).
    pub fn notify_waiters(&self) {
        fence(SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            let _guard = lock(&self.progress);
            self.progress_cv.notify_all();
        }
    }

    /// Without the GIL, by the role holder: sleep until a put or a stop request (or `idle`).
    pub fn park_idle(&self, idle: Duration) {
        self.sleeping.store(true, SeqCst);
        if self.events.is_empty() && self.stop.load(SeqCst) == RUN {
            lock(&self.parker).park_timeout(idle);
        }
        self.sleeping.store(false, SeqCst);
    }

    /// `stop()`: refuse puts from now on and tell the consumer how to end. Under `progress`,
    /// so no producer waiting for room can push after it (fast-path puts hold the GIL, as the
    /// caller does).
    pub fn close(&self, mode: u8) {
        {
            let _guard = lock(&self.progress);
            self.closed.store(true, SeqCst);
            self.stop.fetch_max(mode, SeqCst);
            self.progress_cv.notify_all();
        }
        self.unparker.unpark();
    }

    /// Take the consumer's exception, if it left one (rule 3: it is raised once).
    ///
    /// `failed` is changed only under `control`, with the error: cleared after the lock, an
    /// error stored in between (by a consumer started meanwhile) would be kept with `failed`
    /// false, and never raised.
    pub fn take_error(&self) -> Option<PyErr> {
        if !self.failed.load(SeqCst) {
            return None;
        }
        let mut control = lock(&self.control);
        self.failed.store(false, SeqCst);
        control.error.take() // dropped by the caller, after the lock
    }

    /// Keep the consumer's exception (the first one, if somehow two come).
    pub fn store_error(&self, error: PyErr) {
        let rejected = {
            let mut control = lock(&self.control);
            let rejected = match control.error {
                None => {
                    control.error = Some(error);
                    None
                }
                Some(_) => Some(error),
            };
            self.failed.store(true, SeqCst); // under the lock, as `take_error` clears it
            rejected
        };
        drop(rejected); // after the lock: dropping a PyErr may run Python code
    }

    /// For the GC: visit every event waiting in the ring buffer. Producers push without the
    /// GIL only under `progress`; holding it (and the GIL, which the collector holds) nothing
    /// else can touch the ring, so its events are taken out, visited and put back in order.
    /// If a producer holds `progress` right now, nothing is visited (the events merely stay
    /// uncollected this time).
    pub fn visit_events(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(_guard) = self.progress.try_lock() else {
            return Ok(());
        };
        let mut events = Vec::with_capacity(self.events.len());
        while let Some(event) = self.events.pop() {
            events.push(event);
        }
        let visited = events.iter().try_for_each(|event| visit.call(event));
        for event in events {
            if let Err(event) = self.events.push(event) {
                std::mem::forget(event); // cannot happen (same capacity); never drop in traverse
            }
        }
        if self.sleeping.load(SeqCst) {
            self.unparker.unpark(); // it may have seen the ring empty meanwhile
        }
        visited
    }

    /// Take every event still queued (ring buffer and the consumer's batch).
    pub fn take_all(&self) -> Vec<Py<PyAny>> {
        let mut events: Vec<Py<PyAny>> = std::mem::take(&mut *lock(&self.pending)).into();
        self.pending_len.store(0, Relaxed);
        while let Some(event) = self.events.pop() {
            events.push(event);
        }
        events
    }

    pub fn on_consumer_thread(&self) -> bool {
        lock(&self.control).consumer == Some(std::thread::current().id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::exceptions::PyValueError;
    use std::time::Instant;

    /// `failed` is what tells `take_error` to look (rule 3 relies on it): whenever `control`
    /// is free, it must say whether `control.error` is set. One thread stores errors, one takes
    /// them, and a third checks that, holding the lock, for a bounded time. With `failed`
    /// changed after the lock was released, this sees thousands of disagreements; one of them
    /// (take: error taken, lock released; store: error kept, `failed` set; take: `failed`
    /// cleared) loses the second error for good.
    #[test]
    fn failed_says_whether_an_error_is_kept_whenever_the_lock_is_free() {
        let shared = Shared::new(1);
        let done = AtomicBool::new(false);
        let mut mismatches = 0u64;
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(SeqCst) {
                    shared.store_error(PyValueError::new_err("consumer failed"));
                }
            });
            s.spawn(|| {
                while !done.load(SeqCst) {
                    drop(shared.take_error());
                }
            });
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                let control = lock(&shared.control);
                if control.error.is_some() != shared.failed.load(SeqCst) {
                    mismatches += 1;
                }
                drop(control);
            }
            done.store(true, SeqCst);
        });
        assert_eq!(mismatches, 0, "`failed` disagreed with the kept error");
    }
}

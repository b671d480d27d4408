//! The consumer side: the consumer role, batches fed lazily into the dispatch loop, `drain`,
//! and the loop of the background consumer.
//!
//! A batch is topped up from the ring buffer into the consumer's `pending` buffer, then fed
//! one event at a time to `Dispatcher::run` (no Python list is built). Whatever the dispatcher
//! did not take (it raised, or `stop(drain=False)` came) is put back at the front.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt};

use super::args::type_name;
use super::shared::{lock, Shared, DRAIN, RUN, STOP_NOW};
use crate::dispatcher::Dispatcher;
use crate::errors::add_note;

/// How long an idle consumer sleeps before looking again (a backstop: puts wake it).
const IDLE_WAKE: Duration = Duration::from_millis(250);
const CONSUMER_NOTE: &str = "domainbus: raised in the BatchQueue consumer thread";
pub const BUSY: &str =
    "this BatchQueue is already being consumed (by its started consumer or a drain() call)";

/// The dispatcher a queue feeds: the Rust `Dispatcher` (fed directly) or any object with a
/// `dispatch_batch` method (fed a `BatchFeed` iterator).
pub struct Target<'a, 'py> {
    pub dispatcher: &'a Bound<'py, PyAny>,
    pub fast: bool,
}

/// Claim the consumer role without naming the thread (`start()` does it for its worker).
pub fn claim(shared: &Shared) -> bool {
    shared
        .consuming
        .compare_exchange(false, true, SeqCst, SeqCst)
        .is_ok()
}

/// The consumer role held by the current thread; released on drop.
pub struct Role<'a> {
    shared: &'a Shared,
}

impl<'a> Role<'a> {
    /// Claim the role for the calling thread (`drain()`).
    pub fn acquire(shared: &'a Shared) -> PyResult<Self> {
        if !claim(shared) {
            return Err(PyRuntimeError::new_err(BUSY));
        }
        Ok(Self::adopt(shared))
    }

    /// Take over, on the worker thread, the role `start()` claimed for it.
    pub fn adopt(shared: &'a Shared) -> Self {
        lock(&shared.control).consumer = Some(std::thread::current().id());
        Self { shared }
    }
}

impl Drop for Role<'_> {
    fn drop(&mut self) {
        lock(&self.shared.control).consumer = None;
        self.shared.consuming.store(false, SeqCst);
    }
}

/// The events taken out for one dispatch; on drop, what is left goes back to the front.
struct Batch<'a> {
    shared: &'a Shared,
    items: VecDeque<Py<PyAny>>,
}

impl<'a> Batch<'a> {
    fn take(shared: &'a Shared, limit: usize) -> Self {
        let mut items = std::mem::take(&mut *lock(&shared.pending));
        let mut freed = false;
        while items.len() < limit {
            let Some(event) = shared.events.pop() else {
                break;
            };
            items.push_back(event);
            freed = true;
        }
        shared.pending_len.store(items.len(), Relaxed);
        if freed {
            shared.notify_waiters(); // producers waiting for room
        }
        Self { shared, items }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let mut pending = lock(&self.shared.pending);
        let mut rest = std::mem::take(&mut self.items);
        rest.append(&mut pending);
        self.shared.pending_len.store(rest.len(), Relaxed);
        *pending = rest;
    }
}

/// The iterator handed to a Python `dispatch_batch`: pops the batch lazily, like the Rust path.
#[pyclass(frozen, module = "domainbus.rust")]
pub struct BatchFeed {
    items: Mutex<(VecDeque<Py<PyAny>>, usize)>,
    shared: Arc<Shared>,
    interruptible: bool,
}

#[pymethods]
impl BatchFeed {
    fn __traverse__(&self, visit: pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Ok(items) = self.items.try_lock() {
            for event in items.0.iter() {
                visit.call(event)?;
            }
        }
        Ok(())
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self) -> Option<Py<PyAny>> {
        if self.interruptible && self.shared.stop.load(Relaxed) == STOP_NOW {
            return None;
        }
        let (event, left) = {
            let mut items = lock(&self.items);
            if items.1 == 0 {
                return None;
            }
            let event = items.0.pop_front()?;
            items.1 -= 1;
            (event, items.0.len())
        };
        let before = self.shared.dispatched.fetch_add(1, Release);
        self.shared.completed.store(before, Release); // the dispatcher is done with the previous ones
        self.shared.pending_len.store(left, Relaxed);
        Some(event)
    }
}

/// Hand up to `limit` queued events to the dispatcher; returns the events taken and its result
/// (handler calls). The caller calls `finish_batch` once it has dealt with an error.
/// `interruptible`: stop early when `stop(drain=False)` is asked (the background consumer).
pub fn dispatch_some(
    py: Python<'_>,
    target: &Target<'_, '_>,
    shared: &Arc<Shared>,
    limit: usize,
    interruptible: bool,
) -> (u64, PyResult<u64>) {
    let mut batch = Batch::take(shared, limit);
    if batch.items.is_empty() {
        return (0, Ok(0));
    }
    let before = shared.dispatched.load(Relaxed);
    let result = if target.fast {
        let dispatcher = match target.dispatcher.cast::<Dispatcher>() {
            Ok(dispatcher) => dispatcher,
            Err(err) => return (0, Err(err.into())),
        };
        let (mut count, mut left) = (before, limit);
        let items = &mut batch.items;
        let events = std::iter::from_fn(|| {
            if left == 0 || (interruptible && shared.stop.load(Relaxed) == STOP_NOW) {
                return None;
            }
            let event = items.pop_front()?;
            left -= 1;
            shared.completed.store(count, Release); // the dispatcher is done with the previous ones
            count += 1;
            shared.dispatched.store(count, Release); // the role holder is the only writer
            shared.pending_len.store(items.len(), Relaxed);
            Some(Ok(event.into_bound(py)))
        });
        dispatcher.get().run(py, events, true)
    } else {
        feed_python(
            py,
            target.dispatcher,
            shared,
            &mut batch,
            limit,
            interruptible,
        )
    };
    let taken = shared.dispatched.load(Relaxed) - before;
    (taken, result)
}

fn feed_python(
    py: Python<'_>,
    dispatcher: &Bound<'_, PyAny>,
    shared: &Arc<Shared>,
    batch: &mut Batch<'_>,
    limit: usize,
    interruptible: bool,
) -> PyResult<u64> {
    let feed = Bound::new(
        py,
        BatchFeed {
            items: Mutex::new((std::mem::take(&mut batch.items), limit)),
            shared: Arc::clone(shared),
            interruptible,
        },
    )?;
    let result = crate::unwind::call_method(
        dispatcher,
        pyo3::intern!(py, "dispatch_batch"),
        &[feed.as_any()],
    );
    batch.items = std::mem::take(&mut lock(&feed.get().items).0);
    let calls = result?;
    if calls.is_instance_of::<PyInt>() && !calls.is_instance_of::<PyBool>() {
        if let Ok(calls) = calls.extract::<u64>() {
            return Ok(calls);
        }
    }
    Err(PyTypeError::new_err(format!(
        "dispatch_batch() must return an int, not {}",
        type_name(&calls)?
    )))
}

/// Dispatch what is queued (at most `max_events`) in the calling thread; returns handler calls.
pub fn drain(
    py: Python<'_>,
    target: &Target<'_, '_>,
    shared: &Arc<Shared>,
    batch_size: usize,
    max_events: u64,
) -> PyResult<u64> {
    let _role = Role::acquire(shared)?;
    let (mut left, mut calls) = (max_events, 0u64);
    while left > 0 {
        let limit = usize::try_from(left).map_or(batch_size, |left| left.min(batch_size));
        let (taken, result) = dispatch_some(py, target, shared, limit, false);
        shared.finish_batch();
        calls = calls.saturating_add(result?);
        if taken == 0 {
            break;
        }
        left = left.saturating_sub(taken);
    }
    Ok(calls)
}

/// The background consumer's loop: sleep (GIL released) while empty, dispatch batches, end
/// when `stop` asks, or return the exception that stopped a batch (rule 3) with its note. The
/// caller keeps it, then calls `finish_batch`, so a `join` that sees the batch done raises it.
pub fn consume(
    py: Python<'_>,
    target: &Target<'_, '_>,
    shared: &Arc<Shared>,
    batch_size: usize,
) -> Option<PyErr> {
    loop {
        let mode = shared.stop.load(SeqCst);
        if mode == STOP_NOW {
            return None;
        }
        if shared.is_empty() {
            if mode != RUN {
                debug_assert_eq!(mode, DRAIN);
                return None;
            }
            crate::unwind::detach(py, || shared.park_idle(IDLE_WAKE));
            continue;
        }
        let (_, result) = dispatch_some(py, target, shared, batch_size, true);
        if let Err(err) = result {
            drop(add_note(py, &err, CONSUMER_NOTE)); // kept even if the note cannot be added
            return Some(err);
        }
        shared.finish_batch();
    }
}

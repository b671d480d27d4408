//! `domainbus.rust.BatchQueue`: a bounded multi-producer queue whose single consumer feeds
//! batches straight into the dispatch loop. Behaves exactly like `domainbus.pure.BatchQueue`;
//! see that module for the contract (rules 1-6).
//!
//! - `shared`: the lock-free ring buffer, counters and wake-ups shared by producers and consumer;
//! - `producer`: `put` and `put_many`, and waiting for room;
//! - `consumer`: the consumer role, batches, `drain` and the background consumer's loop;
//! - `args`: argument checks and the `queue.Full` / `QueueClosed` exceptions;
//! - `worker`: the background consumer's thread (start, stop);
//! - `lifecycle`: the fork and interpreter-exit hooks.
//!
//! The background consumer runs on a Python `threading.Thread` (a daemon) that calls back into
//! `_consume`, so no Rust thread ever attaches to the interpreter (safe at shutdown, PyO3
//! #5317) and exceptions surface exactly as in the pure backend.

mod args;
mod consumer;
mod lifecycle;
mod producer;
mod shared;
mod worker;

use std::ffi::CString;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use pyo3::exceptions::{PyRuntimeError, PyRuntimeWarning, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::{intern, PyTraverseError};

use self::consumer::Target;
use self::producer::{Producer, WAIT_SLICE};
use self::shared::{lock, Shared};
use crate::dispatcher::Dispatcher;
use crate::errors::add_note;

const EXIT_NOTE: &str = "domainbus: raised while stopping a BatchQueue at interpreter exit";

fn capacity_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::size("capacity", value)
}

fn batch_size_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::size("batch_size", value)
}

fn block_arg(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    args::flag("block", value)
}

fn drain_arg(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    args::flag("drain", value)
}

/// A bounded multi-producer queue whose single consumer dispatches events in batches.
#[pyclass(frozen, weakref, module = "domainbus.rust", name = "BatchQueue")]
pub struct BatchQueue {
    dispatcher: Py<PyAny>,
    /// `dispatcher` is exactly a Rust `Dispatcher`: batches go straight into its loop.
    fast: bool,
    capacity: usize,
    batch_size: usize,
    /// Replaced whole in a forked child (`_after_fork`).
    shared: ArcSwap<Shared>,
    /// The exit hook has reported what is left: freeing the queue later says nothing more.
    reported: AtomicBool,
}

const FREED_NOTE: &str = "undispatched event(s)";

/// Rule 7: a queue freed with events still queued reports them (it is never silent).
fn warn_freed(py: Python<'_>, left: usize) {
    let message = format!("domainbus: a BatchQueue was freed with {left} {FREED_NOTE}");
    let Ok(message) = CString::new(message) else {
        return;
    };
    if let Err(err) = PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &message, 1) {
        err.write_unraisable(py, None);
    }
}

impl Drop for BatchQueue {
    fn drop(&mut self) {
        let left = self.shared.load().len();
        if left > 0 && !self.reported.load(SeqCst) {
            Python::try_attach(|py| warn_freed(py, left));
        }
    }
}

fn raise_error(shared: &Shared) -> PyResult<()> {
    shared.take_error().map_or(Ok(()), Err)
}

impl BatchQueue {
    fn target<'a, 'py>(&'a self, py: Python<'py>) -> Target<'a, 'py>
    where
        'py: 'a,
    {
        Target {
            dispatcher: self.dispatcher.bind(py),
            fast: self.fast,
        }
    }

    fn producer<'a>(
        &self,
        shared: &'a Shared,
        block: bool,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Producer<'a>> {
        Ok(Producer {
            shared,
            capacity: self.capacity,
            block,
            deadline: args::deadline(timeout)?,
        })
    }

    fn drain_all(&self, py: Python<'_>, max_events: u64) -> PyResult<u64> {
        let shared = self.shared.load_full();
        consumer::drain(py, &self.target(py), &shared, self.batch_size, max_events)
    }

    fn stop_impl(&self, py: Python<'_>, drain: bool, deadline: Option<Instant>) -> PyResult<bool> {
        let shared = self.shared.load_full();
        match worker::stop(py, &shared, drain, deadline)? {
            worker::Stopped::Running => return Ok(false),
            worker::Stopped::Joined => {}
            worker::Stopped::NoWorker => {
                if drain && !shared.failed.load(SeqCst) {
                    self.drain_all(py, u64::MAX)?;
                }
            }
        }
        raise_error(&shared)?;
        Ok(true)
    }
}

#[pymethods]
impl BatchQueue {
    #[new]
    #[pyo3(signature = (dispatcher, *, capacity = 65536, batch_size = 1024))]
    fn new(
        py: Python<'_>,
        dispatcher: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = capacity_arg)] capacity: usize,
        #[pyo3(from_py_with = batch_size_arg)] batch_size: usize,
    ) -> PyResult<Py<Self>> {
        let method = match dispatcher.getattr(intern!(py, "dispatch_batch")) {
            Ok(method) => Some(method),
            Err(err) if err.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => None,
            Err(err) => return Err(err),
        };
        if !method.is_some_and(|method| method.is_callable()) {
            return Err(PyTypeError::new_err(format!(
                "BatchQueue needs a dispatcher with a dispatch_batch() method, not {}",
                args::type_name(dispatcher)?
            )));
        }
        let queue = Py::new(
            py,
            Self {
                dispatcher: dispatcher.clone().unbind(),
                fast: dispatcher.get_type().is(py.get_type::<Dispatcher>()),
                capacity,
                batch_size,
                shared: ArcSwap::from_pointee(Shared::new(capacity)),
                reported: AtomicBool::new(false),
            },
        )?;
        lifecycle::track(queue.bind(py).as_any())?;
        Ok(queue)
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.capacity
    }

    /// True once `stop()` was called: `put` raises QueueClosed.
    #[getter]
    fn closed(&self) -> bool {
        self.shared.load().closed.load(SeqCst)
    }

    /// Events accepted by `put`/`put_many` so far.
    #[getter]
    fn put_count(&self) -> u64 {
        self.shared.load().put_count.load(SeqCst)
    }

    /// Events handed to the dispatcher so far (a failing event counts).
    #[getter]
    fn dispatched_count(&self) -> u64 {
        self.shared.load().dispatched.load(SeqCst)
    }

    /// Events put and not yet dispatched (waiting, or in the consumer's batch).
    fn __len__(&self) -> usize {
        self.shared.load().len()
    }

    /// Queue `event`. When full: wait for room (up to `timeout` seconds, then raise
    /// `queue.Full`), or raise `queue.Full` at once when `block` is False.
    ///
    /// Raises QueueClosed after `stop()`, or the consumer's pending exception (rule 3); the
    /// event is not queued then.
    // (The wait releases the GIL.)
    #[pyo3(signature = (event, *, block = true, timeout = None))]
    fn put(
        &self,
        py: Python<'_>,
        event: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = block_arg)] block: bool,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let shared = self.shared.load();
        self.producer(&shared, block, timeout)?
            .put(py, event.clone().unbind())
    }

    /// Queue every event of `events` in order, as `put` would; returns how many.
    ///
    /// `timeout` bounds the whole call. The `queue.Full` or QueueClosed it raises has an
    /// `accepted` attribute: the events before that index went in; the one at that index
    /// was taken from the iterable but not queued. Any other exception gets a note saying
    /// how many went in. A list or tuple is copied in slices under the lock; any other
    /// iterable is read one event at a time outside it (its code may use the queue).
    // (Here "the lock" is the GIL: a list or tuple is pushed without running Python code.)
    #[pyo3(signature = (events, *, block = true, timeout = None))]
    fn put_many(
        &self,
        py: Python<'_>,
        events: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = block_arg)] block: bool,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let shared = self.shared.load();
        self.producer(&shared, block, timeout)?.put_many(py, events)
    }

    /// Dispatch what is queued (at most `max_events`) in the calling thread, in batches;
    /// returns the handler calls made. A handler's exception propagates (rule 3).
    ///
    /// The return value counts handler calls, not events (as `dispatch_batch` does): an event
    /// with three handlers adds 3, one with none adds 0. `max_events` counts events; so does
    /// `dispatched_count` (read it before and after for the events this call took).
    ///
    /// Raises RuntimeError while the started consumer or another `drain()` is consuming.
    #[pyo3(signature = (max_events = None))]
    fn drain(&self, py: Python<'_>, max_events: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let max_events = args::max_events(max_events)?;
        self.drain_all(py, max_events)
    }

    /// Start the background consumer (a daemon thread that sleeps while the queue is
    /// empty and dispatches batches as they come).
    ///
    /// Raises the consumer's pending exception (rule 3), RuntimeError if already started,
    /// after `stop()`, or while a `drain()` is running.
    fn start(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let shared = this.shared.load_full();
        raise_error(&shared)?;
        if shared.closed.load(SeqCst) {
            return Err(PyRuntimeError::new_err(
                "a stopped BatchQueue cannot be started again",
            ));
        }
        if shared
            .worker_active
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_err()
        {
            return Err(PyRuntimeError::new_err(
                "this BatchQueue is already started",
            ));
        }
        worker::launch(slf.as_any(), &shared)
            .inspect_err(|_| shared.worker_active.store(false, SeqCst))
    }

    /// Close the queue (`put` raises QueueClosed from now on), then wait for the consumer.
    ///
    /// `drain=True`: what is queued is dispatched first (by the consumer, or by the calling
    /// thread when none is started); `drain=False`: the consumer ends after the event in hand
    /// and the rest stays queued for `drain()`. Returns False if the consumer was still busy
    /// after `timeout` seconds (call `stop()` again to wait more) or when called from the
    /// consumer's own thread; True once it has finished. Raises the consumer's pending
    /// exception (rule 3) after closing.
    #[pyo3(signature = (*, drain = true, timeout = None))]
    fn stop(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = drain_arg)] drain: bool,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let deadline = args::deadline(timeout)?;
        self.stop_impl(py, drain, deadline)
    }

    /// Wait until every event put before the call has been dispatched, its handlers done
    /// (by the consumer or by `drain()` in other threads). Returns False if `timeout` seconds
    /// passed first.
    ///
    /// Raises the consumer's pending exception (rule 3), and RuntimeError from the thread
    /// consuming this queue (it would wait for itself).
    #[pyo3(signature = (timeout = None))]
    fn join(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let deadline = args::deadline(timeout)?;
        let shared = self.shared.load_full();
        raise_error(&shared)?;
        if shared.on_consumer_thread() {
            return Err(PyRuntimeError::new_err(
                "join() called from the thread consuming this BatchQueue would wait for itself",
            ));
        }
        // put_count counts every event pushed before this call (see `producer`), and may also
        // count a push in flight that then fails and is taken back: hence the min with its
        // later value.
        let target = shared.put_count.load(SeqCst);
        let done = || shared.completed.load(SeqCst) >= target.min(shared.put_count.load(SeqCst));
        loop {
            let done_now = done();
            raise_error(&shared)?; // after: an exception kept with the last batch is seen
            if done_now {
                return Ok(true);
            }
            let Some(wait) = args::next_wait(deadline, WAIT_SLICE) else {
                return Ok(false);
            };
            crate::unwind::detach(py, || shared.wait_until(wait, done));
            crate::unwind::check_signals(py)?;
        }
    }

    fn __enter__(slf: &Bound<'_, Self>) -> PyResult<Py<Self>> {
        Self::start(slf)?;
        Ok(slf.clone().unbind())
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _traceback: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.stop_impl(py, true, None).map(drop)
    }

    /// The worker thread's target: run the consumer loop, keep its exception (rule 3).
    fn _consume(&self, py: Python<'_>) -> PyResult<()> {
        let shared = self.shared.load_full();
        let role = consumer::Role::adopt(&shared);
        let failure = consumer::consume(py, &self.target(py), &shared, self.batch_size);
        // Free before the exception shows: whoever sees it may start() or drain() at once.
        drop(role);
        shared.worker_active.store(false, SeqCst);
        if let Some(err) = failure {
            shared.store_error(err);
        }
        shared.finish_batch();
        Ok(())
    }

    /// In a forked child: a fresh, empty, stopped state (rule 5). The parent's state is leaked
    /// on purpose: a thread of the parent may have been inside a push or holding a lock.
    fn _after_fork(&self) {
        let parents = self.shared.swap(Arc::new(Shared::new(self.capacity)));
        std::mem::forget(parents);
    }

    /// At interpreter exit (rule 6): stop a started queue with drain, report what is left.
    fn _at_exit(&self, py: Python<'_>) -> PyResult<()> {
        let started = lock(&self.shared.load().control).worker.is_some();
        if started {
            if let Err(err) = self.stop_impl(py, true, None) {
                drop(add_note(py, &err, EXIT_NOTE));
                py.import(intern!(py, "traceback"))?
                    .call_method1(intern!(py, "print_exception"), (err.value(py),))?;
            }
        }
        let left = self.shared.load().len();
        if left > 0 {
            let message = format!(
                "domainbus: a BatchQueue still held {left} undispatched event(s) at interpreter exit"
            );
            let message =
                CString::new(message).map_err(|e| PyValueError::new_err(e.to_string()))?;
            self.reported.store(true, SeqCst);
            PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &message, 1)?;
        }
        self.reported.store(true, SeqCst);
        Ok(())
    }

    /// The dispatcher, the worker, the consumer's batch and the events in the ring buffer.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.dispatcher)?;
        let shared = self.shared.load();
        if let Ok(control) = shared.control.try_lock() {
            visit.call(&control.worker)?;
        }
        if let Ok(pending) = shared.pending.try_lock() {
            for event in pending.iter() {
                visit.call(event)?;
            }
        }
        shared.visit_events(&visit)
    }

    /// Breaking a reference cycle through queued events: they are dropped, and reported.
    fn __clear__(&self, py: Python<'_>) {
        let events = self.shared.load().take_all();
        if !events.is_empty() && !self.reported.swap(true, SeqCst) {
            warn_freed(py, events.len());
        }
        drop(events);
    }
}

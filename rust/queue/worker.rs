//! The background consumer's thread: a daemon `threading.Thread` whose target is
//! `BatchQueue._consume`; started by `start()`, closed and joined by `stop()`.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Instant;

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::IntoPyDict;

use super::args;
use super::consumer;
use super::producer::WAIT_SLICE;
use super::shared::{lock, Shared, DRAIN, STOP_NOW};
use crate::unwind;

/// Start the worker thread of `queue` (whose `start()` checked the queue and set
/// `worker_active`): join the thread of a failed run, claim the consumer role for the new one.
pub fn launch(queue: &Bound<'_, PyAny>, shared: &Shared) -> PyResult<()> {
    let py = queue.py();
    let finished = lock(&shared.control).worker.take();
    if let Some(finished) = finished {
        finished.bind(py).call_method0(intern!(py, "join"))?; // it is ending
    }
    if !consumer::claim(shared) {
        return Err(PyRuntimeError::new_err(consumer::BUSY));
    }
    let thread = (|| {
        let kwargs = [
            ("target", queue.getattr(intern!(py, "_consume"))?),
            ("name", "domainbus-BatchQueue".into_pyobject(py)?.into_any()),
            ("daemon", true.into_pyobject(py)?.to_owned().into_any()),
        ]
        .into_py_dict(py)?;
        py.import(intern!(py, "threading"))?
            .getattr(intern!(py, "Thread"))?
            .call((), Some(&kwargs))
    })();
    let thread = match thread {
        Ok(thread) => thread,
        Err(err) => {
            shared.consuming.store(false, SeqCst);
            return Err(err);
        }
    };
    lock(&shared.control).worker = Some(thread.clone().unbind());
    if let Err(err) = thread.call_method0(intern!(py, "start")) {
        let worker = lock(&shared.control).worker.take();
        drop(worker); // after the lock: dropping it may run Python code
        shared.consuming.store(false, SeqCst);
        return Err(err);
    }
    Ok(())
}

/// What `stop()` found.
pub enum Stopped {
    /// The worker has ended (and was forgotten).
    Joined,
    /// Still running at the deadline, or `stop()` was called on the consuming thread itself.
    Running,
    /// No worker: the caller drains if asked to.
    NoWorker,
}

/// Close the queue (`drain`: let the consumer finish what is queued), then wait for the worker.
pub fn stop(
    py: Python<'_>,
    shared: &Shared,
    drain: bool,
    deadline: Option<Instant>,
) -> PyResult<Stopped> {
    shared.close(if drain { DRAIN } else { STOP_NOW });
    let (worker, on_consumer) = {
        let control = lock(&shared.control);
        let worker = control.worker.as_ref().map(|worker| worker.clone_ref(py));
        let on_consumer = control.consumer == Some(std::thread::current().id());
        (worker, on_consumer)
    };
    if on_consumer {
        return Ok(Stopped::Running);
    }
    let Some(worker) = worker else {
        return Ok(Stopped::NoWorker);
    };
    if !wait_finished(py, shared, deadline)? {
        return Ok(Stopped::Running);
    }
    let finished = {
        let mut control = lock(&shared.control);
        match &control.worker {
            Some(current) if current.is(&worker) => control.worker.take(),
            _ => None,
        }
    };
    drop(finished);
    Ok(Stopped::Joined)
}

/// Wait (GIL released, in slices that check signals) until the worker's consumer loop has
/// finished; false if `deadline` passed first. Our own state, not `Thread.is_alive()`: on
/// CPython 3.11 a `join()` interrupted by Ctrl-C leaves `is_alive()` False while the thread
/// still runs.
fn wait_finished(py: Python<'_>, shared: &Shared, deadline: Option<Instant>) -> PyResult<bool> {
    let finished = || !shared.worker_active.load(SeqCst);
    while !finished() {
        let Some(wait) = args::next_wait(deadline, WAIT_SLICE) else {
            return Ok(false);
        };
        unwind::detach(py, || shared.wait_until(wait, finished));
        unwind::check_signals(py)?;
    }
    Ok(true)
}

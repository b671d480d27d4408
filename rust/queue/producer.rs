//! The producer side: pushing one event or many, and waiting (GIL released) for room.
//!
//! `put_count` is normally bumped just before each push and taken back if it fails, so a
//! `join` that reads it (even without the GIL) never misses an event pushed before it. A list
//! or tuple given to `put_many` is read without running Python code, so with the GIL held
//! throughout no one can look in between: its pushes are counted once per run, before anything
//! that may release the GIL (one atomic add instead of one per event).

use std::time::{Duration, Instant};

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use super::args;
use super::shared::{Room, Shared};
use crate::errors::add_note;

/// The longest a caller waits (GIL released) between two checks for signals such as Ctrl-C.
pub const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Raise the consumer's pending exception (rule 3), or QueueClosed after `stop()`.
pub fn check_accepting(py: Python<'_>, shared: &Shared, accepted: Option<u64>) -> PyResult<()> {
    if let Some(err) = shared.take_error() {
        return Err(err);
    }
    if shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(args::closed(py, accepted));
    }
    Ok(())
}

/// One `put` or `put_many` call: where to push, and how to wait when the queue is full.
pub struct Producer<'a> {
    pub shared: &'a Shared,
    pub capacity: usize,
    pub block: bool,
    pub deadline: Option<Instant>,
}

impl Producer<'_> {
    pub fn put(&self, py: Python<'_>, event: Py<PyAny>) -> PyResult<()> {
        check_accepting(py, self.shared, None)?;
        match self.shared.try_push(event) {
            Ok(()) => Ok(()),
            Err(event) => self.wait_for_room(py, event, None),
        }
    }

    /// Queue every event of `events` in order; returns how many. Exceptions other than our
    /// `queue.Full` / `QueueClosed` (which carry `accepted`) get a note saying how many went in.
    pub fn put_many(&self, py: Python<'_>, events: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut accepted = 0u64;
        let result = if let Ok(list) = events.cast::<PyList>() {
            let mut index = 0;
            let next = || {
                let item = (index < list.len()).then(|| list.get_item(index));
                index += 1;
                item
            };
            self.push_all(py, next, true, &mut accepted)
        } else if let Ok(tuple) = events.cast::<PyTuple>() {
            let mut items = tuple.iter();
            self.push_all(py, || items.next().map(Ok), true, &mut accepted)
        } else {
            let iterator = events
                .try_iter()
                .map_err(|err| not_iterable(events, err))?
                .into_any();
            self.push_all(py, || crate::unwind::next(&iterator), false, &mut accepted)
        };
        let Err(err) = result else {
            return Ok(accepted);
        };
        let value = err.value(py);
        let ours = value.hasattr(intern!(py, "accepted"))?
            && (value.is_instance(args::full_type(py)?.as_any())?
                || value.is_instance(args::closed_type(py)?.as_any())?);
        if !ours {
            let note =
                format!("domainbus: put_many() put {accepted} event(s) before this was raised");
            add_note(py, &err, &note)?;
        }
        Err(err)
    }

    /// Push what `next` yields. `plain_reads`: `next` never runs Python code, so pushes are
    /// counted once per run (see the module docs) instead of one by one.
    fn push_all<'py>(
        &self,
        py: Python<'py>,
        mut next: impl FnMut() -> Option<PyResult<Bound<'py, PyAny>>>,
        plain_reads: bool,
        accepted: &mut u64,
    ) -> PyResult<()> {
        let shared = self.shared;
        let mut uncounted = 0u64;
        let result = (|| {
            check_accepting(py, shared, Some(0))?;
            while let Some(event) = next() {
                let mut event = event?.unbind();
                if shared.gave_up() {
                    shared.count_pushed(std::mem::take(&mut uncounted));
                    check_accepting(py, shared, Some(*accepted))?;
                }
                let pushed = if plain_reads {
                    shared.push_uncounted(event).map(|()| uncounted += 1)
                } else {
                    shared.try_push(event)
                };
                match pushed {
                    Ok(()) => {}
                    Err(back) => {
                        shared.count_pushed(std::mem::take(&mut uncounted));
                        event = back;
                        self.wait_for_room(py, event, Some(*accepted))?;
                    }
                }
                *accepted += 1;
            }
            Ok(())
        })();
        shared.count_pushed(uncounted);
        result
    }

    /// The queue was full: wait for room for `event` (rule 4), or raise `queue.Full`.
    fn wait_for_room(
        &self,
        py: Python<'_>,
        mut event: Py<PyAny>,
        accepted: Option<u64>,
    ) -> PyResult<()> {
        let shared = self.shared;
        if !self.block {
            return Err(args::full(py, self.capacity, false, accepted));
        }
        if shared.on_consumer_thread() {
            return Err(args::full(py, self.capacity, true, accepted));
        }
        loop {
            let Some(wait) = args::next_wait(self.deadline, WAIT_SLICE) else {
                return Err(args::full(py, self.capacity, false, accepted));
            };
            match crate::unwind::detach(py, || shared.push_or_wait(event, wait)) {
                Room::Pushed => return Ok(()),
                Room::Waiting(back) => event = back,
            }
            crate::unwind::check_signals(py)?;
            check_accepting(py, shared, accepted)?;
        }
    }
}

fn not_iterable(events: &Bound<'_, PyAny>, err: PyErr) -> PyErr {
    if !err.is_instance_of::<PyTypeError>(events.py()) {
        return err;
    }
    match args::type_name(events) {
        Ok(name) => PyTypeError::new_err(format!(
            "put_many() needs an iterable of events, not {name}"
        )),
        Err(err) => err,
    }
}

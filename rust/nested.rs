//! Per-thread FIFOs for `nested="queue"` dispatchers.
//!
//! While the outermost `dispatch` of a queue-mode dispatcher runs on a thread, that thread
//! has a frame for the dispatcher here; a nested `dispatch` appends to the frame instead of
//! dispatching, and the outermost call drains it after each of its events.
//! The `RefCell` is only borrowed for a push or a pop, never across a call into Python.

use std::cell::RefCell;
use std::collections::VecDeque;

use pyo3::prelude::*;

struct Frame {
    owner: u64,
    fifo: VecDeque<Py<PyAny>>,
    /// `Dispatcher._after_drain` callbacks, called when the FIFO is next empty.
    after: Vec<Py<PyAny>>,
}

thread_local! {
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

fn with_frame<R>(owner: u64, f: impl FnOnce(&mut Frame) -> R) -> Option<R> {
    FRAMES.with(|frames| {
        let mut frames = frames.borrow_mut();
        frames.iter_mut().rev().find(|fr| fr.owner == owner).map(f)
    })
}

/// True when an outermost dispatch of `owner` is running on this thread.
pub fn is_active(owner: u64) -> bool {
    with_frame(owner, |_| ()).is_some()
}

/// Append an event to `owner`'s FIFO on this thread; false (and the event handed back to be
/// dropped by the caller) when no outermost dispatch of `owner` runs here.
pub fn push(owner: u64, event: Py<PyAny>) -> Result<(), Py<PyAny>> {
    let mut event = Some(event);
    with_frame(owner, |frame| frame.fifo.extend(event.take()));
    event.map_or(Ok(()), Err)
}

/// Keep `callback` for when `owner`'s FIFO on this thread is next drained; false (and the
/// callback handed back) when no outermost dispatch of `owner` runs here.
pub fn after_drain(owner: u64, callback: Py<PyAny>) -> Result<(), Py<PyAny>> {
    let mut callback = Some(callback);
    with_frame(owner, |frame| frame.after.extend(callback.take()));
    callback.map_or(Ok(()), Err)
}

/// The callbacks kept by `after_drain` for `owner`'s frame on this thread, now forgotten.
pub fn take_after(owner: u64) -> Vec<Py<PyAny>> {
    with_frame(owner, |frame| std::mem::take(&mut frame.after)).unwrap_or_default()
}

/// Call the callbacks `take_after` returned, in order, with the failure (or None): the
/// twin of `domainbus._async.drained`. The first one that raises stops the rest.
pub fn drained(
    py: Python<'_>,
    callbacks: Vec<Py<PyAny>>,
    failure: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    for callback in callbacks {
        match failure {
            Some(failure) => callback.bind(py).call1((failure,))?,
            None => callback.bind(py).call1((py.None(),))?,
        };
    }
    Ok(())
}

/// `take_after` then `drained` with a `PyErr` (the exception about to propagate).
pub fn drained_by(py: Python<'_>, owner: u64, err: &PyErr) -> PyResult<()> {
    let callbacks = take_after(owner);
    if callbacks.is_empty() {
        return Ok(());
    }
    drained(py, callbacks, Some(err.value(py).as_any()))
}

pub fn pop(owner: u64) -> Option<Py<PyAny>> {
    with_frame(owner, |frame| frame.fifo.pop_front()).flatten()
}

pub fn pending(owner: u64) -> usize {
    with_frame(owner, |frame| frame.fifo.len()).unwrap_or(0)
}

/// The frame of one outermost call; dropping it discards the frame and whatever it still holds.
pub struct FrameGuard {
    owner: u64,
}

impl FrameGuard {
    pub fn enter(owner: u64) -> Self {
        FRAMES.with(|frames| {
            frames.borrow_mut().push(Frame {
                owner,
                fifo: VecDeque::new(),
                after: Vec::new(),
            })
        });
        Self { owner }
    }
}

impl Drop for FrameGuard {
    fn drop(&mut self) {
        let frame = FRAMES.with(|frames| {
            let mut frames = frames.borrow_mut();
            let index = frames.iter().rposition(|fr| fr.owner == self.owner);
            index.map(|i| frames.remove(i))
        });
        drop(frame); // released outside the borrow: dropping events may run Python code
    }
}

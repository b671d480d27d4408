//! The dispatch loop: single events, batches, nested modes and error policies.
//!
//! `Dispatcher::run` is the one loop behind `dispatch` and `dispatch_batch` (and the queue's
//! consumer). Per event it checks the registry version (one atomic load), reuses the last
//! resolved list when the type repeats, and calls each handler with one vectorcall. No Rust
//! lock or borrow is held while Python code runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::Guard;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::dispatcher::{Config, Dispatcher, Nested};
use crate::errors::{self, Policy};
use crate::handled;
use crate::nested::{self, FrameGuard};
use crate::registry::{Reg, Resolved, Snapshot};
use crate::unwind;

/// Events between two looks at pending signals (Ctrl-C) and two chances for other threads to
/// take the GIL: handlers and iterators written in C never give the eval loop either.
const PACE: u32 = 1024;

thread_local! {
    /// Events this thread may still dispatch before the next pause (counted across calls, so
    /// a C loop of single `dispatch` calls pauses too).
    static LEFT: std::cell::Cell<u32> = const { std::cell::Cell::new(PACE) };
}

/// Every `PACE` events dispatched on a thread: run the signal handlers and release the GIL
/// for a moment, as the eval loop does between bytecodes.
struct Pacer;

impl Pacer {
    fn new() -> Self {
        Self
    }

    #[inline(always)]
    fn tick(&mut self, py: Python<'_>) -> PyResult<()> {
        let left = LEFT.with(|left| {
            let now = left.get().saturating_sub(1);
            left.set(if now == 0 { PACE } else { now });
            now
        });
        if left == 0 {
            return Self::pause(py);
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn pause(py: Python<'_>) -> PyResult<()> {
        unwind::check_signals(py)?;
        unwind::yield_gil(py);
        Ok(())
    }
}

/// Slots of the direct-mapped table of types one `run` remembers (a power of two). A batch of
/// mixed types then costs one pointer comparison per event, not a hash lookup in the shared
/// cache.
const LOCAL_SLOTS: usize = 64;

type Seen<'py> = (Bound<'py, PyType>, Resolved);
/// Where one `run` is in the registry: the snapshot it uses and the types it has resolved
/// (holding each type, so its address cannot be reused while remembered).
struct Cursor<'py> {
    version: u64,
    snapshot: Option<Guard<Arc<Snapshot>>>,
    /// The first type seen: all a single `dispatch` or a homogeneous batch needs.
    first: Option<Seen<'py>>,
    /// Allocated once a second type shows up.
    table: Option<Box<[Option<Seen<'py>>]>>,
}

fn slot_of(event_type: &Bound<'_, PyType>) -> usize {
    // type objects are at least 16-byte aligned; mix in higher bits for spread
    let address = event_type.as_ptr() as usize;
    ((address >> 4) ^ (address >> 10)) & (LOCAL_SLOTS - 1)
}

fn seen_is(seen: &Option<Seen<'_>>, event_type: &Bound<'_, PyType>) -> bool {
    matches!(seen, Some((t, _)) if t.is(event_type))
}

impl<'py> Cursor<'py> {
    fn new() -> Self {
        Self {
            version: u64::MAX,
            snapshot: None,
            first: None,
            table: None,
        }
    }

    fn resolve_in_snapshot(&self, event_type: &Bound<'py, PyType>) -> PyResult<Seen<'py>> {
        let regs = match &self.snapshot {
            Some(snapshot) => snapshot.resolve(event_type)?,
            None => Arc::new([]),
        };
        Ok((event_type.clone(), regs))
    }

    /// The resolved registrations for `event_type` under the newest registry (rule 4: a
    /// change made during the previous event is seen by this one).
    fn resolve(
        &mut self,
        owner: &Dispatcher,
        event_type: &Bound<'py, PyType>,
    ) -> PyResult<&Resolved> {
        let version = owner.version.load(Ordering::Acquire);
        if version != self.version || self.snapshot.is_none() {
            self.snapshot = Some(owner.state.load());
            self.version = version;
            self.first = None;
            self.table = None;
        }
        if self.first.is_none() {
            self.first = Some(self.resolve_in_snapshot(event_type)?);
        }
        if !seen_is(&self.first, event_type) {
            let slot = slot_of(event_type);
            if !self
                .table
                .as_ref()
                .is_some_and(|t| seen_is(&t[slot], event_type))
            {
                let seen = self.resolve_in_snapshot(event_type)?;
                let table = self
                    .table
                    .get_or_insert_with(|| (0..LOCAL_SLOTS).map(|_| None).collect());
                table[slot] = Some(seen);
            }
            if let Some(Some((_, regs))) = self.table.as_ref().map(|t| &t[slot]) {
                return Ok(regs);
            }
        }
        match &self.first {
            Some((_, regs)) => Ok(regs),
            None => Err(PyRuntimeError::new_err("type cache lost its entry")),
        }
    }
}

/// `Py_EnterRecursiveCall` for the span of one dispatch, so runaway nested dispatch ends in
/// RecursionError instead of overflowing the C stack.
struct RecursionGuard;

impl RecursionGuard {
    fn enter(py: Python<'_>) -> PyResult<Self> {
        // SAFETY: the GIL is held (we have `py`); the message is a NUL-terminated static.
        if unsafe { ffi::Py_EnterRecursiveCall(c" while dispatching an event".as_ptr()) } != 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(Self)
    }
}

impl Drop for RecursionGuard {
    fn drop(&mut self) {
        // SAFETY: paired with the successful Py_EnterRecursiveCall in `enter`, same thread,
        // GIL still held (the guard never leaves the pymethod that created it).
        unsafe { ffi::Py_LeaveRecursiveCall() }
    }
}

fn is_coroutine(value: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `value` is a live object; PyCoro_CheckExact only reads its type pointer.
    unsafe { ffi::PyCoro_CheckExact(value.as_ptr()) != 0 }
}

/// Rule 9: a coroutine returned to the synchronous loop is closed (no "never awaited"
/// warning) and reported as the handler's TypeError.
#[cold]
#[inline(never)]
fn reject_coroutine(handler: &Bound<'_, PyAny>, coroutine: &Bound<'_, PyAny>) -> PyErr {
    let py = coroutine.py();
    if let Err(err) = unwind::call_method(coroutine, pyo3::intern!(py, "close"), &[]) {
        return err;
    }
    match errors::describe_handler(handler) {
        Ok(name) => PyTypeError::new_err(format!(
            "handler {name} returned a coroutine: async handlers need dispatch_async()"
        )),
        Err(err) => err,
    }
}

impl Dispatcher {
    /// Dispatch `events` in order; the loop behind `dispatch` and `dispatch_batch`.
    pub fn run<'py, I>(&self, py: Python<'py>, events: I, batch: bool) -> PyResult<u64>
    where
        I: Iterator<Item = PyResult<Bound<'py, PyAny>>>,
    {
        let _depth = RecursionGuard::enter(py)?;
        let config = self.config.load();
        if config.nested == Nested::Queue && nested::is_active(self.id) {
            for event in events {
                if nested::push(self.id, event?.unbind()).is_err() {
                    // the outermost call sits below us on this thread, so it cannot have ended
                    return Err(PyRuntimeError::new_err("the nested dispatch queue is gone"));
                }
            }
            return Ok(0);
        }
        let mut failures = matches!(config.on_error, Policy::Collect).then(Vec::new);
        let mut cursor = Cursor::new();
        let mut pacer = Pacer::new();
        let mut calls = 0u64;
        if config.nested == Nested::Immediate {
            for (index, event) in events.enumerate() {
                let index = batch.then_some(index);
                let event = event?;
                let one = self.dispatch_one(&mut cursor, &config, &event, index, &mut failures);
                calls += errors::at_batch_index(py, one, index)?;
                pacer.tick(py)?;
            }
        } else {
            let _frame = FrameGuard::enter(self.id);
            let drain = || -> PyResult<()> {
                for (index, event) in events.enumerate() {
                    let index = batch.then_some(index);
                    let event = event?;
                    let one = self.dispatch_one(&mut cursor, &config, &event, index, &mut failures);
                    calls += errors::at_batch_index(py, one, index)?;
                    pacer.tick(py)?;
                    while let Some(inner) = nested::pop(self.id) {
                        // the events it queued belong to it (rule 8: batch_index)
                        let known = failures.as_ref().map_or(0, Vec::len);
                        let one = self.dispatch_one(
                            &mut cursor,
                            &config,
                            inner.bind(py),
                            None,
                            &mut failures,
                        );
                        calls += errors::at_batch_index(py, one, index)?;
                        if let (Some(failures), Some(index)) = (&failures, index) {
                            for failure in &failures[known..] {
                                errors::set_batch_index(py, failure, index);
                            }
                        }
                        pacer.tick(py)?;
                    }
                }
                Ok(())
            };
            if let Err(err) = drain() {
                let left = nested::pending(self.id);
                if left > 0 {
                    let note = format!("domainbus: {left} queued event(s) were not dispatched");
                    errors::add_note(py, &err, &note)?;
                }
                return Err(err);
            }
        }
        match failures {
            Some(failures) if !failures.is_empty() => Err(errors::exception_group(py, failures)),
            _ => Ok(calls),
        }
    }

    /// Call every handler of one event; returns the calls made.
    #[inline(always)]
    fn dispatch_one<'py>(
        &self,
        cursor: &mut Cursor<'py>,
        config: &Config,
        event: &Bound<'py, PyAny>,
        index: Option<usize>,
        failures: &mut Option<Vec<PyErr>>,
    ) -> PyResult<u64> {
        let py = event.py();
        let event_type = event.get_type();
        let regs = cursor.resolve(self, &event_type)?;
        if regs.is_empty() {
            if let Some(on_unhandled) = &config.on_unhandled {
                unwind::call1(on_unhandled.bind(py), event)?;
            }
            return Ok(0);
        }
        let mut calls = 0;
        for reg in regs.iter() {
            let reg_ref = reg;
            let reg = reg_ref.get();
            // `Dispatcher::take` inlined: a strong handler is borrowed, not cloned (measured
            // ~4 ns an event faster on mixed batches than calling `take`)
            let weak_target;
            let handler = if reg.weak {
                match reg.live_handler(py)? {
                    Some(target) => {
                        weak_target = target;
                        &weak_target
                    }
                    None => continue,
                }
            } else {
                reg.target.bind(py)
            };
            if reg.once && !self.consume(py, reg_ref)? {
                continue;
            }
            calls += 1;
            let failure = match unwind::call1(handler, event) {
                Ok(result) if result.is_none() || !is_coroutine(&result) => continue,
                Ok(coroutine) => reject_coroutine(handler, &coroutine),
                Err(err) => err,
            };
            self.handle_failure(
                py,
                config,
                failure,
                handler,
                event,
                &event_type,
                index,
                failures,
            )?;
        }
        Ok(calls)
    }

    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn handle_failure<'py>(
        &self,
        py: Python<'py>,
        config: &Config,
        err: PyErr,
        handler: &Bound<'py, PyAny>,
        event: &Bound<'py, PyAny>,
        event_type: &Bound<'py, PyType>,
        index: Option<usize>,
        failures: &mut Option<Vec<PyErr>>,
    ) -> PyResult<()> {
        if !errors::is_exception(py, &err) {
            return Err(err); // KeyboardInterrupt, SystemExit...: at once, whatever the policy
        }
        errors::add_note(py, &err, &errors::failure_note(handler, event_type, index)?)?;
        if let Some(index) = index {
            errors::set_batch_index(py, &err, index);
        }
        if let Some(failures) = failures {
            failures.push(err);
            return Ok(());
        }
        match &config.on_error {
            Policy::Callback(callback) => {
                handled::call_on_error(callback.bind(py), err, event, handler).map(drop)
            }
            _ => Err(err),
        }
    }

    /// Claim and unregister a `once` registration; false when someone else claimed it first.
    #[inline(never)]
    pub(crate) fn consume(&self, py: Python<'_>, reg: &Reg) -> PyResult<bool> {
        if !reg.get().claim() {
            return Ok(false);
        }
        self.update(|snapshot| Ok(snapshot.without(py, reg)))?;
        Ok(true)
    }
}

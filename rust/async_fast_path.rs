//! The fast path of `dispatch_async` / `dispatch_batch_async` (sequential, `nested="immediate"`).
//!
//! `AsyncDispatch` is a coroutine object written by hand: each `send` runs the dispatch loop in
//! Rust, calling handlers until one returns an awaitable, then drives that awaitable with
//! `PyIter_Send` (no StopIteration per handler) and yields whatever it yields to the event loop.
//! A handler coroutine that finishes without suspending costs one call and one send, so a
//! batch of async handlers runs at close to a hand-written `for e in events: await h(e)`.
//! The rules are those of `domainbus._async` (the general path, shared with the pure backend,
//! used for `concurrent=True` and `nested="queue"`); the parity tests hold the two together.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyIterator, PyType};
use pyo3::PyTraverseError;

use crate::dispatcher::{Config, Dispatcher};
use crate::errors::{self, Policy};
use crate::metrics::{Counter, Metered};
use crate::registry::Reg;

/// What an awaitable being driven belongs to: a handler's result, or a hook's.
enum Owner {
    Handler(Py<PyAny>),
    Hook,
    /// An `on_error` callback's awaitable: driven while its exception is being handled, as
    /// the general path awaits it inside its `except` block.
    ErrorHook(Py<PyAny>),
}

struct Awaiting {
    iter: Py<PyAny>,
    owner: Owner,
    /// A handler's awaitable while metrics are on: its row and when the handler was called.
    timer: Option<Timer>,
}

/// A handler call being timed (rule 16: until its awaitable is done).
type Timer = (Arc<Counter>, Instant);

/// Count a timed call as over; `failed`: it raised an `Exception`.
fn stop(timer: Option<Timer>, failed: bool) {
    if let Some((counter, start)) = timer {
        counter.end(Some(start), failed);
    }
}

/// The event whose handlers are being called.
struct Current {
    event: Py<PyAny>,
    event_type: Py<PyType>,
    index: Option<usize>,
    next: usize, // position in the registrations of `AsyncDispatch::types[slot]`
}

enum Advance<'py> {
    Yielded(Bound<'py, PyAny>),
    Pending,
    Finished,
}

/// Event types one async dispatch remembers before starting over.
const REMEMBERED_TYPES: usize = 16;

enum Input {
    Send(Py<PyAny>),
    Throw(PyErr),
}

enum Sent<'py> {
    Yielded(Bound<'py, PyAny>),
    Returned,
}

#[pyclass(module = "domainbus.rust")]
pub struct AsyncDispatch {
    dispatcher: Py<Dispatcher>,
    events: Option<Py<PyIterator>>,
    batch: bool,
    next_index: usize,
    /// The batch index of the event being dispatched (None between events and outside a batch).
    in_event: Option<usize>,
    config: Arc<Config>,
    version: u64,
    /// Event types resolved under registry `version` (held, so their addresses stay unique)
    /// and their registrations, each one our own reference (reported to the GC: a handler
    /// unregistered or consumed meanwhile is kept by nothing else), with their counters while
    /// metrics are on; `slot` is the current event's.
    types: Vec<(Py<PyType>, Vec<Reg>, Option<Metered>)>,
    slot: usize,
    current: Option<Current>,
    awaiting: Option<Awaiting>,
    calls: u64,
    /// The exceptions collected under "collect" (as objects, so the GC sees them).
    failures: Option<Vec<Py<PyAny>>>,
    /// An error found when the call was made, raised when first awaited (as a coroutine would).
    pending_error: Option<Py<PyAny>>,
    started: bool,
    done: bool,
}

/// The iterator `await` would drive for `value`, or None when it is not awaitable: what
/// `inspect.isawaitable` (the general path's test) accepts.
fn await_iter<'py>(value: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    // SAFETY: `value` is a live object; PyCoro_CheckExact only reads its type pointer.
    if unsafe { ffi::PyCoro_CheckExact(value.as_ptr()) } != 0 {
        return Ok(Some(value.clone()));
    }
    let py = value.py();
    // SAFETY: as above, PyGen_CheckExact only reads the type pointer.
    if unsafe { ffi::PyGen_CheckExact(value.as_ptr()) } != 0 {
        // a generator-based coroutine (`@types.coroutine`) is awaitable, a plain generator not
        let flags: i32 = value
            .getattr(intern!(py, "gi_code"))?
            .getattr(intern!(py, "co_flags"))?
            .extract()?;
        let iterable_coroutine = flags & ffi::CO_ITERABLE_COROUTINE != 0;
        return Ok(iterable_coroutine.then(|| value.clone()));
    }
    if value.is_none() || !is_awaitable(value)? {
        return Ok(None);
    }
    // what `await value` does with it (the general path awaits it)
    let class = value.get_type();
    let Ok(method) = class.getattr(intern!(py, "__await__")) else {
        return Err(PyTypeError::new_err(format!(
            "object {} can't be used in 'await' expression",
            class.name()?
        )));
    };
    let iter = crate::unwind::call1(&method, value)?;
    // SAFETY: `iter` is a live object; these checks only read its type.
    let (coroutine, iterator) = unsafe {
        (
            ffi::PyCoro_CheckExact(iter.as_ptr()) != 0,
            ffi::PyIter_Check(iter.as_ptr()) != 0,
        )
    };
    if coroutine {
        return Err(PyTypeError::new_err("__await__() returned a coroutine"));
    }
    if !iterator {
        return Err(PyTypeError::new_err(format!(
            "__await__() returned non-iterator of type '{}'",
            iter.get_type().name()?
        )));
    }
    Ok(Some(iter))
}

static IS_AWAITABLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `inspect.isawaitable(value)`: the general path's test (an ABC registration counts, a class
/// whose `__await__` is None does not).
fn is_awaitable(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = value.py();
    let test = IS_AWAITABLE.get_or_try_init(py, || {
        py.import(intern!(py, "inspect"))?
            .getattr(intern!(py, "isawaitable"))
            .map(Bound::unbind)
    })?;
    crate::unwind::call1(test.bind(py), value)?.is_truthy()
}

/// One step of an awaitable: `PyIter_Send`, which reports completion without StopIteration.
fn send_into<'py>(iter: &Bound<'py, PyAny>, value: &Bound<'py, PyAny>) -> PyResult<Sent<'py>> {
    let py = iter.py();
    let (status, result) = crate::unwind::send(iter, value);
    match status {
        ffi::PySendResult::PYGEN_ERROR => Err(PyErr::fetch(py)),
        ffi::PySendResult::PYGEN_NEXT => {
            // SAFETY: PYGEN_NEXT hands us an owned, non-NULL reference to the yielded value.
            Ok(Sent::Yielded(unsafe { Bound::from_owned_ptr(py, result) }))
        }
        ffi::PySendResult::PYGEN_RETURN => {
            // SAFETY: PYGEN_RETURN hands us an owned reference to the return value.
            drop(unsafe { Bound::from_owned_ptr_or_opt(py, result) });
            Ok(Sent::Returned)
        }
    }
}

/// `throw` into an awaitable, mapping StopIteration to completion.
fn throw_into<'py>(iter: &Bound<'py, PyAny>, err: PyErr) -> PyResult<Sent<'py>> {
    let py = iter.py();
    if !iter.hasattr(intern!(py, "throw"))? {
        return Err(err);
    }
    let value = err.into_value(py).into_bound(py).into_any();
    match crate::unwind::call_method(iter, intern!(py, "throw"), &[&value]) {
        Ok(value) => Ok(Sent::Yielded(value)),
        Err(err) if err.is_instance_of::<PyStopIteration>(py) => Ok(Sent::Returned),
        Err(err) => Err(err),
    }
}

impl AsyncDispatch {
    pub fn new(
        dispatcher: &Bound<'_, Dispatcher>,
        events: PyResult<Bound<'_, PyIterator>>,
        batch: bool,
    ) -> Self {
        let (events, pending_error) = match events {
            Ok(events) => (Some(events.unbind()), None),
            Err(err) => (None, Some(err.into_value(dispatcher.py()).into_any())),
        };
        let config = dispatcher.get().config.load_full();
        let failures = matches!(config.on_error, Policy::Collect).then(Vec::new);
        Self {
            dispatcher: dispatcher.clone().unbind(),
            events,
            batch,
            next_index: 0,
            in_event: None,
            config,
            version: u64::MAX,
            types: Vec::new(),
            slot: 0,
            current: None,
            awaiting: None,
            calls: 0,
            failures,
            pending_error,
            started: false,
            done: false,
        }
    }

    /// Run until an awaitable yields (Ok(Some(value)) for the event loop) or all is done.
    fn step<'py>(&mut self, py: Python<'py>, mut input: Input) -> PyResult<Bound<'py, PyAny>> {
        if self.done {
            return Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            ));
        }
        self.started = true;
        if let Some(err) = self.pending_error.take() {
            self.done = true;
            return Err(PyErr::from_value(err.into_bound(py)));
        }
        let outcome = self.run(py, &mut input);
        if let (Err(err), Some(index)) = (&outcome, self.in_event) {
            errors::set_batch_index(py, err, index); // rule 8: which event it escaped from
        }
        if outcome.is_err() {
            self.done = true;
            self.awaiting = None;
            self.current = None;
        }
        outcome
    }

    fn run<'py>(&mut self, py: Python<'py>, input: &mut Input) -> PyResult<Bound<'py, PyAny>> {
        loop {
            if let Some(awaiting) = self.awaiting.take() {
                let iter = awaiting.iter.bind(py);
                let given = std::mem::replace(input, Input::Send(py.None()));
                let sent = {
                    let _handling = match &awaiting.owner {
                        Owner::ErrorHook(exception) => {
                            Some(crate::handled::Handling::enter(exception.bind(py)))
                        }
                        _ => None,
                    };
                    match given {
                        Input::Send(value) => send_into(iter, value.bind(py)),
                        Input::Throw(err) => throw_into(iter, err),
                    }
                };
                match sent {
                    Ok(Sent::Yielded(value)) => {
                        self.awaiting = Some(awaiting);
                        return Ok(value);
                    }
                    Ok(Sent::Returned) => stop(awaiting.timer, false),
                    Err(err) => match awaiting.owner {
                        Owner::Handler(handler) => {
                            stop(awaiting.timer, errors::is_exception(py, &err));
                            self.fail(py, err, handler.bind(py))?
                        }
                        Owner::Hook | Owner::ErrorHook(_) => return Err(err),
                    },
                }
                continue;
            }
            if let Input::Throw(err) = std::mem::replace(input, Input::Send(py.None())) {
                return Err(err); // thrown in while nothing was being awaited
            }
            match self.advance(py)? {
                Advance::Yielded(value) => return Ok(value),
                Advance::Pending => {}
                Advance::Finished => {
                    return match self.failures.take() {
                        Some(failures) if !failures.is_empty() => {
                            let failures = failures
                                .into_iter()
                                .map(|err| PyErr::from_value(err.into_bound(py)))
                                .collect();
                            Err(errors::exception_group(py, failures))
                        }
                        _ => Err(PyStopIteration::new_err((self.calls,))),
                    };
                }
            }
        }
    }

    /// Call handlers (sending into the awaitables they return) until an awaitable yields
    /// (`Yielded`), a hook's awaitable waits in `self.awaiting` (`Pending`), or the events are
    /// exhausted (`Finished`).
    fn advance<'py>(&mut self, py: Python<'py>) -> PyResult<Advance<'py>> {
        loop {
            let Some(current) = self.current.as_mut() else {
                if !self.next_event(py)? {
                    return Ok(Advance::Finished);
                }
                if self.awaiting.is_some() {
                    return Ok(Advance::Pending); // an on_unhandled hook returned an awaitable
                }
                continue;
            };
            let seen = self.types.get(self.slot);
            let Some(reg) = seen.and_then(|(_, regs, _)| regs.get(current.next)) else {
                self.current = None;
                continue;
            };
            let counter = seen
                .and_then(|(_, _, metered)| metered.as_ref())
                .and_then(|counters| counters.get(current.next).cloned());
            current.next += 1;
            let Some(handler) = self.dispatcher.get().take(py, reg)? else {
                continue;
            };
            self.calls += 1;
            let timer = counter.map(|counter| {
                let start = counter.begin_timed();
                (counter, start)
            });
            let result = crate::unwind::call1(&handler, current.event.bind(py))
                .and_then(|r| await_iter(&r))
                .and_then(|iter| match iter {
                    None => Ok(None),
                    Some(iter) => match send_into(&iter, &py.None().into_bound(py))? {
                        Sent::Returned => Ok(None),
                        Sent::Yielded(value) => Ok(Some((iter, value))),
                    },
                });
            match result {
                Ok(None) => stop(timer, false),
                Ok(Some((iter, value))) => {
                    self.awaiting = Some(Awaiting {
                        iter: iter.unbind(),
                        owner: Owner::Handler(handler.unbind()),
                        timer,
                    });
                    return Ok(Advance::Yielded(value));
                }
                Err(err) => {
                    stop(timer, errors::is_exception(py, &err));
                    self.fail(py, err, &handler)?;
                    if self.awaiting.is_some() {
                        return Ok(Advance::Pending); // an on_error callback returned an awaitable
                    }
                }
            }
        }
    }

    /// Take the next event and resolve its handlers; false when the events are exhausted.
    fn next_event(&mut self, py: Python<'_>) -> PyResult<bool> {
        self.in_event = None;
        let Some(events) = self.events.as_ref() else {
            return Ok(false);
        };
        let Some(event) = crate::unwind::next(events.bind(py).as_any()) else {
            self.events = None;
            return Ok(false);
        };
        let event = event?;
        let index = self.batch.then_some(self.next_index);
        self.in_event = index;
        self.next_index += 1;
        let dispatcher = self.dispatcher.get();
        let version = dispatcher.version.load(Ordering::Acquire);
        if version != self.version {
            self.version = version;
            self.types.clear();
        }
        let event_type = event.get_type();
        let is_current = |types: &[(Py<PyType>, Vec<Reg>, Option<Metered>)], slot: usize| {
            types
                .get(slot)
                .is_some_and(|(t, _, _)| t.as_ptr() == event_type.as_ptr())
        };
        if !is_current(&self.types, self.slot) {
            match (0..self.types.len()).find(|&i| is_current(&self.types, i)) {
                Some(slot) => self.slot = slot,
                None => {
                    // resolved in the registry of `version` or a newer one (rule 4 either way)
                    let resolved = dispatcher.state.load().resolve(&event_type)?;
                    let metered = if dispatcher.metrics.enabled() && !resolved.is_empty() {
                        Some(dispatcher.metrics.counters(py, &event_type, &resolved)?)
                    } else {
                        None
                    };
                    let regs = resolved.iter().map(|reg| reg.clone_ref(py)).collect();
                    if self.types.len() == REMEMBERED_TYPES {
                        self.types.clear();
                    }
                    self.types
                        .push((event_type.clone().unbind(), regs, metered));
                    self.slot = self.types.len() - 1;
                }
            }
        }
        if self
            .types
            .get(self.slot)
            .is_none_or(|(_, regs, _)| regs.is_empty())
        {
            if let Some(hook) = &self.config.on_unhandled {
                let result = crate::unwind::call1(hook.bind(py), &event)?;
                if let Some(iter) = await_iter(&result)? {
                    self.awaiting = Some(Awaiting {
                        iter: iter.unbind(),
                        owner: Owner::Hook,
                        timer: None,
                    });
                }
            }
            return Ok(true);
        }
        self.current = Some(Current {
            event: event.unbind(),
            event_type: event_type.unbind(),
            index,
            next: 0,
        });
        Ok(true)
    }

    /// Apply the error policy to a handler failure (rule 8); an awaitable returned by an
    /// `on_error` callback is awaited next.
    fn fail(&mut self, py: Python<'_>, err: PyErr, handler: &Bound<'_, PyAny>) -> PyResult<()> {
        if !errors::is_exception(py, &err) {
            return Err(err);
        }
        let Some(current) = self.current.as_ref() else {
            return Err(err);
        };
        let event_type = current.event_type.bind(py);
        errors::add_note(
            py,
            &err,
            &errors::failure_note(handler, event_type, current.index)?,
        )?;
        if let Some(index) = current.index {
            errors::set_batch_index(py, &err, index);
        }
        if let Some(failures) = self.failures.as_mut() {
            failures.push(err.into_value(py).into_any());
            return Ok(());
        }
        let Policy::Callback(callback) = &self.config.on_error else {
            return Err(err);
        };
        let event = current.event.bind(py);
        let exception = err.into_value(py).into_bound(py).into_any();
        let result = crate::handled::call_handling(callback.bind(py), &exception, event, handler)?;
        if let Some(iter) = await_iter(&result)? {
            self.awaiting = Some(Awaiting {
                iter: iter.unbind(),
                owner: Owner::ErrorHook(exception.unbind()),
                timer: None,
            });
        }
        Ok(())
    }
}

/// Like a coroutine that is dropped without being awaited: a RuntimeWarning, so a forgotten
/// `await` does not go unnoticed (the pure backend's coroutine warns the same way).
impl Drop for AsyncDispatch {
    fn drop(&mut self) {
        if self.started || self.done {
            return;
        }
        Python::try_attach(|py| {
            let message = c"coroutine 'dispatch_async' was never awaited";
            let category = py.get_type::<pyo3::exceptions::PyRuntimeWarning>();
            if let Err(err) = PyErr::warn(py, &category, message, 1) {
                err.write_unraisable(py, None);
            }
        });
    }
}

/// The coroutine's state for one step; a step re-entered from its own handlers (a handler
/// awaiting or sending into the coroutine that runs it) is refused as Python refuses it.
fn running<'py>(slf: &Bound<'py, AsyncDispatch>) -> PyResult<PyRefMut<'py, AsyncDispatch>> {
    slf.try_borrow_mut()
        .map_err(|_| PyValueError::new_err("coroutine already executing"))
}

#[pymethods]
impl AsyncDispatch {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        running(slf)?.step(py, Input::Send(py.None()))
    }

    fn send<'py>(slf: &Bound<'py, Self>, value: Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
        running(slf)?.step(slf.py(), Input::Send(value))
    }

    #[pyo3(signature = (exc, value = None, traceback = None))]
    fn throw<'py>(
        slf: &Bound<'py, Self>,
        exc: &Bound<'py, PyAny>,
        value: Option<&Bound<'py, PyAny>>,
        traceback: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = traceback;
        let py = slf.py();
        let mut this = running(slf)?;
        let err = match value {
            Some(value) if exc.is_instance_of::<PyType>() && !value.is_none() => {
                PyErr::from_value(exc.call1((value,))?)
            }
            _ if exc.is_instance_of::<PyType>() => PyErr::from_value(exc.call0()?),
            _ => PyErr::from_value(exc.clone()),
        };
        if this.done {
            return Err(err);
        }
        this.step(py, Input::Throw(err))
    }

    /// Every Python object this coroutine owns by itself (the config and the resolved lists are
    /// shared with the dispatcher, which reports them).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.dispatcher)?;
        visit.call(&self.events)?;
        for (event_type, regs, _) in &self.types {
            visit.call(event_type)?;
            for reg in regs {
                visit.call(reg)?;
            }
        }
        for err in self.failures.iter().flatten().chain(&self.pending_error) {
            visit.call(err)?;
        }
        if let Some(current) = &self.current {
            visit.call(&current.event)?;
            visit.call(&current.event_type)?;
        }
        if let Some(awaiting) = &self.awaiting {
            visit.call(&awaiting.iter)?;
            match &awaiting.owner {
                Owner::Handler(object) | Owner::ErrorHook(object) => visit.call(object)?,
                Owner::Hook => {}
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.started = true;
        self.events = None;
        self.current = None;
        self.awaiting = None;
        self.types.clear();
        self.failures = None;
        self.pending_error = None;
        self.done = true;
    }

    /// Stop: close the awaitable in progress; the remaining handlers are not called.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let awaiting = {
            let mut this = running(slf)?;
            this.started = true;
            this.done = true;
            this.current = None;
            this.events = None;
            this.awaiting.take()
        };
        if let Some(mut awaiting) = awaiting {
            stop(awaiting.timer.take(), false); // a call cut short, no failure
            let iter = awaiting.iter.bind(py);
            if iter.hasattr(intern!(py, "close"))? {
                crate::unwind::call_method(iter, intern!(py, "close"), &[])?;
            }
        }
        Ok(())
    }
}

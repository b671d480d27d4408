//! Commands on the Rust `Dispatcher`: the twin of `domainbus.pure.commands` (the rules are
//! numbered there). The hot path, `execute`, is one exact-type lookup in a copy-on-write table
//! keyed by the type's address, then one vectorcall of the stored callable (the handler, its
//! dependencies bound by a `functools.partial`, wrapped in the middleware chain when there is
//! one). Registration, dependency resolution, middleware chains and the error texts are built
//! by `domainbus._commands`, shared with the pure backend; none of it runs per `execute`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule, PyTuple, PyType};
use pyo3::PyTraverseError;
use rustc_hash::FxHashMap as HashMap;

use crate::dispatcher::{Dispatcher, Nested, QUEUE};
use crate::errors;
use crate::methods::{install_method, MethodDef};
use crate::nested::{self, FrameGuard};

/// One command type's handler: as registered, with its dependencies, and what `execute` calls.
struct CommandEntry {
    command_type: Py<PyType>, // keeps the key's address from being reused
    handler: Py<PyAny>,
    bound: Py<PyAny>,
    call: Py<PyAny>,
    /// With no middleware: the handler and its dependencies, called with one vectorcall
    /// (`handler(command, name=value, ...)`), not through the partial (whose keywords would
    /// cost a dict copy per call).
    direct: Option<Direct>,
}

struct Direct {
    func: Py<PyAny>,
    kwnames: Option<Py<PyTuple>>,
    values: Box<[Py<PyAny>]>,
}

/// Dependencies up to this count are passed from a stack array.
const STACK_ARGS: usize = 8;

impl Direct {
    /// Split a bound handler (`domainbus._commands.BoundHandler`, or the handler itself when
    /// it needs nothing) into the function and its keyword arguments.
    fn of(handler: &Bound<'_, PyAny>, bound: &Bound<'_, PyAny>) -> PyResult<Self> {
        let py = handler.py();
        if bound.is(handler) {
            return Ok(Self {
                func: handler.clone().unbind(),
                kwnames: None,
                values: Box::new([]),
            });
        }
        let keywords = bound
            .getattr(intern!(py, "keywords"))?
            .cast_into::<PyDict>()?;
        let (mut names, mut values) = (Vec::new(), Vec::new());
        for (name, value) in keywords.iter() {
            names.push(name);
            values.push(value.unbind());
        }
        Ok(Self {
            func: bound.getattr(intern!(py, "func"))?.unbind(),
            kwnames: Some(PyTuple::new(py, names)?.unbind()),
            values: values.into_boxed_slice(),
        })
    }

    /// `func(command, **dependencies)` with one vectorcall.
    #[inline(always)]
    fn call<'py>(
        &self,
        py: Python<'py>,
        command: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let n = self.values.len();
        if n == 0 {
            let mut args = [std::ptr::null_mut(), command.as_ptr()];
            // SAFETY: GIL held; `args[1]` is the live command, `args[0]` writable scratch as
            // PY_VECTORCALL_ARGUMENTS_OFFSET allows; `func` is owned by the entry.
            let raw = unsafe {
                crate::unwind::vectorcall(
                    self.func.as_ptr(),
                    args.as_mut_ptr().add(1),
                    1 | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
                    std::ptr::null_mut(),
                )
            };
            // SAFETY: `raw` is a new reference, or NULL with an exception set.
            return unsafe { Bound::from_owned_ptr_or_err(py, raw) };
        }
        let kwnames = self
            .kwnames
            .as_ref()
            .map_or(std::ptr::null_mut(), |k| k.as_ptr());
        let nargsf = 1 | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET;
        let raw = if n < STACK_ARGS {
            // slot 0 is free for the callee (PY_VECTORCALL_ARGUMENTS_OFFSET), then the command
            // and the dependencies' values
            let mut args = [std::ptr::null_mut(); STACK_ARGS + 2];
            args[1] = command.as_ptr();
            for (slot, value) in args[2..].iter_mut().zip(self.values.iter()) {
                *slot = value.as_ptr();
            }
            // SAFETY: GIL held; `args[1..n + 2]` are borrowed live objects (the command, and
            // values the entry owns for the duration of the call), `args[0]` is writable
            // scratch as the offset flag allows; `kwnames` is a tuple of `n` strings or NULL.
            unsafe {
                crate::unwind::vectorcall(
                    self.func.as_ptr(),
                    args.as_mut_ptr().add(1),
                    nargsf,
                    kwnames,
                )
            }
        } else {
            let mut args = Vec::with_capacity(n + 2);
            args.push(std::ptr::null_mut());
            args.push(command.as_ptr());
            args.extend(self.values.iter().map(|v| v.as_ptr()));
            // SAFETY: as above, with the arguments on the heap.
            unsafe {
                crate::unwind::vectorcall(
                    self.func.as_ptr(),
                    args.as_mut_ptr().add(1),
                    nargsf,
                    kwnames,
                )
            }
        };
        // SAFETY: `raw` is a new reference, or NULL with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(py, raw) }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.func)?;
        visit.call(&self.kwnames)?;
        for value in self.values.iter() {
            visit.call(value)?;
        }
        Ok(())
    }
}

impl CommandEntry {
    fn new(
        command_type: &Bound<'_, PyType>,
        handler: &Bound<'_, PyAny>,
        bound: &Bound<'_, PyAny>,
        middleware: &[Py<PyAny>],
    ) -> PyResult<Self> {
        let py = handler.py();
        let direct = match middleware.is_empty() {
            true => Some(Direct::of(handler, bound)?),
            false => None,
        };
        Ok(Self {
            command_type: command_type.clone().unbind(),
            handler: handler.clone().unbind(),
            bound: bound.clone().unbind(),
            call: chain(py, middleware, bound)?.unbind(),
            direct,
        })
    }
}

/// An immutable state of the command half; replaced whole on every change. The parts are
/// shared between states by `Arc`, so deriving a new state needs no reference counting in
/// Python.
#[derive(Clone, Default)]
struct CommandState {
    table: HashMap<usize, Arc<CommandEntry>>,
    /// A `domainbus._commands.Dependencies`, once something was provided.
    dependencies: Option<Arc<Py<PyAny>>>,
    middleware: Arc<Vec<Py<PyAny>>>,
}

/// What `execute` finds in the read mirror: one entry of the current state. Not a GC
/// container on purpose: the entry's objects are reported once, by the Dispatcher, through
/// the state that holds the same entry.
#[pyclass(frozen, module = "domainbus.rust", name = "_CommandRoute")]
pub struct CommandRoute {
    entry: Arc<CommandEntry>,
}

/// The `commands` field of `Dispatcher`: command handlers, dependencies and middleware.
///
/// `state` is the truth, replaced whole on every change (lock-free, like the event registry).
/// `routes` mirrors its table as a dict {command type: CommandRoute} for `execute`: a dict
/// lookup under the GIL costs less than an ArcSwap load (thread-local debt slots) on this hot
/// path. Every publish re-syncs the mirror before returning.
pub struct CommandRegistry {
    state: ArcSwap<CommandState>,
    routes: Py<PyDict>,
}

impl Default for CommandRegistry {
    fn default() -> Self {
        Self {
            state: ArcSwap::default(),
            routes: Python::attach(|py| PyDict::new(py).unbind()),
        }
    }
}

impl CommandRegistry {
    /// Publish a state derived from the current one (lock-free; `change` is re-run if another
    /// thread published in between). No Rust lock is held while `change` runs Python code.
    fn update(
        &self,
        mut change: impl FnMut(&CommandState) -> PyResult<Option<CommandState>>,
    ) -> PyResult<bool> {
        loop {
            let current = self.state.load_full();
            let Some(next) = change(&current)? else {
                return Ok(false);
            };
            let previous = self.state.compare_and_swap(&current, Arc::new(next));
            if Arc::ptr_eq(&previous, &current) {
                Python::attach(|py| self.sync(py))?;
                return Ok(true);
            }
        }
    }

    /// Make `routes` show the current table. Keys are overwritten or deleted one by one (a
    /// command that stays registered never disappears from the mirror), and the whole pass is
    /// redone if another thread published while it ran (dropping old routes may run Python).
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        let routes = self.routes.bind(py);
        loop {
            let state = self.state.load_full();
            for entry in state.table.values() {
                let route = CommandRoute {
                    entry: Arc::clone(entry),
                };
                routes.set_item(entry.command_type.bind(py), route)?;
            }
            let stale: Vec<_> = routes
                .keys()
                .iter()
                .filter(|key| !state.table.contains_key(&(key.as_ptr() as usize)))
                .collect();
            for key in stale {
                routes.del_item(key)?;
            }
            if Arc::ptr_eq(&state, &self.state.load()) {
                return Ok(());
            }
        }
    }

    /// `clear()`: every command handler goes; dependencies and middleware stay.
    pub(crate) fn clear_handlers(&self) -> PyResult<()> {
        self.update(|state| {
            Ok((!state.table.is_empty()).then(|| CommandState {
                table: HashMap::default(),
                ..state.clone()
            }))
        })
        .map(drop)
    }

    /// The GC's `__clear__`: drop every Python object held.
    pub(crate) fn clear_all(&self) {
        self.state.store(Arc::new(CommandState::default()));
        Python::attach(|py| self.routes.bind(py).clear());
    }

    /// Report every Python object the current state holds.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.routes)?;
        let state = self.state.load();
        for entry in state.table.values() {
            visit.call(&entry.command_type)?;
            visit.call(&entry.handler)?;
            visit.call(&entry.bound)?;
            visit.call(&entry.call)?;
            if let Some(direct) = &entry.direct {
                direct.traverse(visit)?;
            }
        }
        if let Some(dependencies) = &state.dependencies {
            visit.call(&**dependencies)?;
        }
        for layer in state.middleware.iter() {
            visit.call(layer)?;
        }
        Ok(())
    }

    /// An event handler with its dependencies bound (the hook of `register_handler`).
    pub(crate) fn inject<'py>(
        &self,
        handler: &Bound<'py, PyAny>,
        weak: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = handler.py();
        let dependencies = self.state.load().dependencies.clone();
        helpers(py)?.call_method1(
            intern!(py, "bind_event_handler"),
            (dependencies_arg(py, &dependencies), handler, weak),
        )
    }
}

/// `domainbus._commands`, imported once (registration calls into it for every handler).
static HELPERS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    HELPERS
        .get_or_try_init(py, || {
            py.import(intern!(py, "domainbus._commands"))
                .map(Bound::unbind)
        })
        .map(|module| module.bind(py).clone())
}

fn dependencies_arg<'py>(py: Python<'py>, deps: &Option<Arc<Py<PyAny>>>) -> Bound<'py, PyAny> {
    match deps {
        Some(deps) => deps.bind(py).clone(),
        None => py.None().into_bound(py),
    }
}

fn check_command_type<'a, 'py>(
    command_type: &'a Bound<'py, PyAny>,
) -> PyResult<&'a Bound<'py, PyType>> {
    command_type.cast::<PyType>().map_err(|_| {
        let name = command_type
            .get_type()
            .qualname()
            .map(|n| n.to_string())
            .unwrap_or_default();
        PyTypeError::new_err(format!("command_type must be a class, not {name}"))
    })
}

fn key_of(command_type: &Bound<'_, PyType>) -> usize {
    command_type.as_ptr() as usize
}

/// `compose(middleware, bound)`: the callable `execute` calls.
fn chain<'py>(
    py: Python<'py>,
    middleware: &[Py<PyAny>],
    bound: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    if middleware.is_empty() {
        return Ok(bound.clone());
    }
    let layers = PyTuple::new(py, middleware.iter().map(|m| m.bind(py)))?;
    helpers(py)?.call_method1(intern!(py, "compose"), (layers, bound))
}

/// `type(value) is coroutine`, one pointer comparison (pyo3-ffi's `PyCoro_CheckExact` is a
/// `PyObject_TypeCheck`, which calls `PyType_IsSubtype` for every other type of result).
#[inline(always)]
fn is_coroutine(value: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `value` is a live object, so its type pointer is valid; `PyCoro_Type` is a
    // static of the interpreter whose address is only compared.
    unsafe { ffi::Py_TYPE(value.as_ptr()) == std::ptr::addr_of_mut!(ffi::PyCoro_Type) }
}

/// Rule 3: the note on every `Exception` `execute` propagates; a coroutine returned to the
/// synchronous `execute` is closed and reported as the handler's TypeError.
#[cold]
#[inline(never)]
fn command_failure(
    py: Python<'_>,
    entry: &CommandEntry,
    command_type: &Bound<'_, PyType>,
    err: PyErr,
) -> PyErr {
    if !errors::is_exception(py, &err) {
        return err; // KeyboardInterrupt, SystemExit...: as they are
    }
    let note = || -> PyResult<()> {
        let name = errors::describe_handler(entry.handler.bind(py))?;
        let note = format!(
            "domainbus: raised by command handler {name} for {}",
            errors::type_name(command_type)?
        );
        errors::add_note(py, &err, &note)
    };
    match note() {
        Ok(()) => err,
        Err(other) => other,
    }
}

#[cold]
#[inline(never)]
fn reject_coroutine(py: Python<'_>, entry: &CommandEntry, coroutine: &Bound<'_, PyAny>) -> PyErr {
    if let Err(err) = coroutine.call_method0(intern!(py, "close")) {
        return err;
    }
    match errors::describe_handler(entry.handler.bind(py)) {
        Ok(name) => PyTypeError::new_err(format!(
            "command handler {name} returned a coroutine: async handlers need execute_async()"
        )),
        Err(err) => err,
    }
}

/// Call the entry's callable with the command: the result, or the error with its note.
#[inline(always)]
fn call_entry<'py>(
    py: Python<'py>,
    entry: &CommandEntry,
    command: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let outcome = match &entry.direct {
        Some(direct) => direct.call(py, command),
        None => crate::unwind::call1(entry.call.bind(py), command),
    };
    match outcome {
        Ok(result) if !is_coroutine(&result) => Ok(result),
        Ok(coroutine) => Err(command_failure(
            py,
            entry,
            &command.get_type(),
            reject_coroutine(py, entry, &coroutine),
        )),
        Err(err) => Err(command_failure(py, entry, &command.get_type(), err)),
    }
}

impl Dispatcher {
    #[cold]
    #[inline(never)]
    fn unknown_command(slf: &Bound<'_, Self>, command: &Bound<'_, PyAny>) -> PyErr {
        let py = slf.py();
        let build = || -> PyResult<PyErr> {
            let handler_of = slf.getattr(intern!(py, "command_handler_for"))?;
            let error =
                helpers(py)?.call_method1(intern!(py, "unknown_command"), (command, handler_of))?;
            Ok(PyErr::from_value(error))
        };
        build().unwrap_or_else(|err| err)
    }

    /// Rule 5, "queue" mode: the handler runs with this thread's FIFO open; what it queued is
    /// then dispatched first in first out by the dispatch loop.
    #[inline(never)]
    fn execute_outermost<'py>(
        &self,
        py: Python<'py>,
        entry: &CommandEntry,
        command: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let frame = FrameGuard::enter(self.id);
        let result = call_entry(py, entry, command);
        let mut queued = VecDeque::new();
        while let Some(event) = nested::pop(self.id) {
            queued.push_back(event);
        }
        let mut after = nested::take_after(self.id);
        drop(frame);
        let result = match result {
            Ok(result) => result,
            Err(err) => {
                if !queued.is_empty() {
                    let note = format!(
                        "domainbus: {} queued event(s) were not dispatched",
                        queued.len()
                    );
                    errors::add_note(py, &err, &note)?;
                }
                nested::drained(py, after, Some(err.value(py).as_any()))?;
                return Err(err);
            }
        };
        if queued.is_empty() {
            nested::drained(py, after, None)?;
            return Ok(result);
        }
        // `run` opens its own frame before it takes the first event, and drains that frame
        // after each event. So on the first pull the events after the first go into its frame,
        // ahead of anything the first event's handlers queue: one FIFO, in order; the
        // `_after_drain` callbacks go with them, called once the first event's cascade is done.
        let id = self.id;
        let mut first = true;
        let events = std::iter::from_fn(move || {
            if !std::mem::take(&mut first) {
                return None;
            }
            let head = queued.pop_front()?;
            let moved = queued
                .drain(..)
                .try_for_each(|event| nested::push(id, event).map_err(drop))
                .and_then(|()| {
                    after
                        .drain(..)
                        .try_for_each(|callback| nested::after_drain(id, callback).map_err(drop))
                });
            if moved.is_err() {
                return Some(Err(PyRuntimeError::new_err(
                    "the nested dispatch queue is gone",
                )));
            }
            Some(Ok(head.into_bound(py)))
        });
        self.run(py, events, false)?;
        Ok(result)
    }
    /// `execute`: one exact-type lookup, then one vectorcall (see `install_execute`).
    #[inline(always)]
    fn execute_impl<'py>(
        slf: &Bound<'py, Self>,
        command: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let py = slf.py();
        // SAFETY: `command` is a live object, so its type pointer is valid while we hold it.
        let command_type = unsafe { ffi::Py_TYPE(command.as_ptr()) };
        let routes = this.commands.routes.bind(py);
        // SAFETY: GIL held; `routes` is a live dict and the type a live object; the result is
        // a borrowed reference (or NULL), turned into an owned one at once, so the route stays
        // alive through the call even if the handler unregisters itself.
        let route = unsafe {
            let raw = ffi::PyDict_GetItemWithError(routes.as_ptr(), command_type.cast());
            if raw.is_null() {
                if let Some(err) = PyErr::take(py) {
                    return Err(err);
                }
                return Err(Self::unknown_command(slf, command));
            }
            // only CommandRoute objects are ever stored in `routes`
            Bound::from_borrowed_ptr(py, raw).cast_into_unchecked::<CommandRoute>()
        };
        let entry = &route.get().entry;
        // the flags, not `config.load()`: an atomic byte, not an ArcSwap load (~70 instructions)
        if this.flags.load(Ordering::Relaxed) & QUEUE != 0 && !nested::is_active(this.id) {
            return this.execute_outermost(py, entry, command);
        }
        call_entry(py, entry, command)
    }
}

/// `Dispatcher.execute` as a METH_O method: CPython calls it with the command directly, with
/// none of the argument parsing of a `#[pymethods]` method (the difference is measurable next
/// to a handler call, which is all `execute` otherwise costs). It runs in PyO3's own
/// trampoline for a `(self, arg)` C function, as a `#[pymethods]` method does: PyO3 counts the
/// thread as attached (so the `Py` values dropped in the call, a failure's traceback or a
/// handled PyErr, are released at once instead of queued for PyO3's next attach: see
/// tests/test_command_release.py), catches panics, and raises the returned error. That costs
/// a thread-local increment, where `Python::attach` costs a `PyGILState_Ensure`/`Release`
/// pair (~160 instructions a call, counted by callgrind).
///
/// # Safety
/// Called by CPython (through the trampoline) with the GIL held and two borrowed, live
/// objects; the method descriptor checked that `slf` is a Dispatcher (or a subclass).
unsafe fn execute_body(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    command: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: see the function's contract.
    let (slf, command) = unsafe {
        (
            Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<Dispatcher>(),
            Bound::from_borrowed_ptr(py, command),
        )
    };
    Dispatcher::execute_impl(&slf, &command).map(Bound::into_ptr)
}

static EXECUTE: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"execute".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunction: pyo3::impl_::trampoline::get_trampoline_function!(binaryfunc, execute_body),
    },
    ml_flags: ffi::METH_O,
    ml_doc: c"execute($self, command, /)\n--\n\nRun the handler of `command`'s exact type and return its result (rules 2, 3, 5).".as_ptr(),
});

/// Put the METH_O `execute` on the Dispatcher class (called once, at module import).
pub(crate) fn install_execute(py: Python<'_>) -> PyResult<()> {
    install_method(py, &EXECUTE, intern!(py, "execute"))
}

#[pymethods]
impl Dispatcher {
    /// Make `handler` the one handler of commands of exactly `command_type`; returns it.
    fn register_command_handler<'py>(
        slf: &Bound<'py, Self>,
        command_type: &Bound<'py, PyAny>,
        handler: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let command_type = check_command_type(command_type)?;
        if !handler.is_callable() {
            let name = handler.get_type().qualname()?;
            return Err(PyTypeError::new_err(format!(
                "handler must be callable, not {name}"
            )));
        }
        let py = slf.py();
        let key = key_of(command_type);
        slf.get().commands.update(|state| {
            if let Some(existing) = state.table.get(&key) {
                if existing.handler.bind(py).eq(handler)? {
                    return Ok(None);
                }
                let error = helpers(py)?.call_method1(
                    intern!(py, "duplicate_handler"),
                    (command_type, existing.handler.bind(py), handler),
                )?;
                return Err(PyErr::from_value(error));
            }
            let bound = helpers(py)?.call_method1(
                intern!(py, "bind"),
                (
                    dependencies_arg(py, &state.dependencies),
                    handler,
                    "command handler",
                ),
            )?;
            let entry = CommandEntry::new(command_type, handler, &bound, &state.middleware)?;
            let mut next = state.clone();
            next.table.insert(key, Arc::new(entry));
            Ok(Some(next))
        })?;
        Ok(handler.clone())
    }

    /// Decorator form of `register_command_handler`.
    fn command_handler<'py>(
        slf: &Bound<'py, Self>,
        command_type: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let command_type = check_command_type(command_type)?;
        let register = slf.getattr(intern!(py, "register_command_handler"))?;
        py.import(intern!(py, "functools"))?
            .getattr(intern!(py, "partial"))?
            .call1((register, command_type))
    }

    /// Remove the handler of `command_type`; False if it had none.
    fn unregister_command_handler(&self, command_type: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = key_of(check_command_type(command_type)?);
        self.commands.update(|state| {
            if !state.table.contains_key(&key) {
                return Ok(None);
            }
            let mut next = state.clone();
            next.table.remove(&key);
            Ok(Some(next))
        })
    }

    /// The handler commands of exactly `command_type` go to, or None.
    fn command_handler_for<'py>(
        &self,
        command_type: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = command_type.py();
        let key = key_of(check_command_type(command_type)?);
        let state = self.commands.state.load();
        Ok(state.table.get(&key).map(|e| e.handler.bind(py).clone()))
    }

    /// Provide dependencies for the handlers registered from now on (rule 6).
    #[pyo3(signature = (*by_type, **by_name))]
    fn provide<'py>(
        &self,
        by_type: &Bound<'py, PyTuple>,
        by_name: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<()> {
        let py = by_type.py();
        let by_name = match by_name {
            Some(by_name) => by_name.clone(),
            None => PyDict::new(py),
        };
        self.commands
            .update(|state| {
                let current = match &state.dependencies {
                    Some(deps) => deps.bind(py).clone(),
                    None => helpers(py)?.getattr(intern!(py, "Dependencies"))?.call0()?,
                };
                let provided =
                    current.call_method1(intern!(py, "with_provided"), (by_type, &by_name))?;
                Ok(Some(CommandState {
                    dependencies: Some(Arc::new(provided.unbind())),
                    ..state.clone()
                }))
            })
            .map(drop)
    }

    /// Wrap every command handler in `middleware(command, call_next=...)`; returns it.
    fn add_middleware<'py>(&self, middleware: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = middleware.py();
        let helpers = helpers(py)?;
        helpers.call_method1(intern!(py, "check_middleware"), (middleware,))?;
        self.commands.update(|state| {
            let skip = PyTuple::new(py, ["call_next"])?;
            let layer = helpers.call_method1(
                intern!(py, "bind"),
                (
                    dependencies_arg(py, &state.dependencies),
                    middleware,
                    "middleware",
                    skip,
                ),
            )?;
            let mut layers: Vec<Py<PyAny>> =
                state.middleware.iter().map(|m| m.clone_ref(py)).collect();
            layers.push(layer.unbind());
            let mut table = HashMap::default();
            for (key, entry) in state.table.iter() {
                let entry = CommandEntry::new(
                    entry.command_type.bind(py),
                    entry.handler.bind(py),
                    entry.bound.bind(py),
                    &layers,
                )?;
                table.insert(*key, Arc::new(entry));
            }
            Ok(Some(CommandState {
                table,
                dependencies: state.dependencies.clone(),
                middleware: Arc::new(layers),
            }))
        })?;
        Ok(middleware.clone())
    }

    /// Call `callback` when this thread's "queue" FIFO is empty again; False if none is open
    /// (the unit of work's hook: see `domainbus.pure.dispatcher.Dispatcher._after_drain`).
    fn _after_drain(&self, callback: &Bound<'_, PyAny>) -> bool {
        self.config.load().nested == Nested::Queue
            && nested::after_drain(self.id, callback.clone().unbind()).is_ok()
    }

    /// Awaitable `execute`: an awaitable result is awaited (rule 4).
    fn execute_async<'py>(
        slf: &Bound<'py, Self>,
        command: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        helpers(py)?.call_method1(intern!(py, "execute_async"), (slf, command))
    }

    /// (what to call, the user's handler) for `command`, or the error `execute` raises.
    fn _command_route<'py>(
        slf: &Bound<'py, Self>,
        command: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let py = slf.py();
        let key = command.get_type().as_ptr() as usize;
        let state = slf.get().commands.state.load();
        match state.table.get(&key) {
            Some(entry) => Ok((entry.call.bind(py).clone(), entry.handler.bind(py).clone())),
            None => Err(Self::unknown_command(slf, command)),
        }
    }
}

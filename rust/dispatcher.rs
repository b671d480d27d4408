//! `domainbus.rust.Dispatcher`: the Python-facing class, its options and its registry API.
//! The dispatch loop itself lives in `dispatch.rs`; the snapshots in `registry.rs`.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{
    IntoPyDict, PyBool, PyDict, PyInt, PyIterator, PyList, PyString, PyTuple, PyType,
};
use pyo3::{intern, PyTraverseError};

use crate::async_fast_path::AsyncDispatch;
use crate::async_plan::async_driver;
use crate::commands::CommandRegistry;
use crate::errors::Policy;
use crate::metrics::Metrics;
use crate::registry::{Reg, Registration, Registry, Snapshot};

static NEXT_DISPATCHER_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nested {
    Immediate,
    Queue,
}

/// The options (set by `__init__`, swapped out whole by the GC's `__clear__`).
pub struct Config {
    pub on_error: Policy,
    pub on_unhandled: Option<Py<PyAny>>,
    pub nested: Nested,
    /// The `metrics` option as given (whether metrics are on now: `Dispatcher::metrics`).
    pub metrics: bool,
}

/// `Dispatcher::flags` bits: what a single `dispatch` must know before its first handler.
pub(crate) const QUEUE: u8 = 1;
pub(crate) const COLLECT: u8 = 2;
pub(crate) const UNHANDLED: u8 = 4;
/// Set while metrics are on (rust/metrics.rs), not by `Config::flags`.
pub(crate) const METRICS: u8 = 8;

impl Config {
    /// This configuration as `Dispatcher::flags` bits.
    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.nested == Nested::Queue {
            flags |= QUEUE;
        }
        if matches!(self.on_error, Policy::Collect) {
            flags |= COLLECT;
        }
        if self.on_unhandled.is_some() {
            flags |= UNHANDLED;
        }
        flags
    }

    fn empty() -> Self {
        Self {
            on_error: Policy::Raise,
            on_unhandled: None,
            nested: Nested::Immediate,
            metrics: false,
        }
    }
}

/// Routes events to the handlers registered for their class or any base class.
/// Behaves exactly like `domainbus.pure.Dispatcher`; see that module for the contract.
#[pyclass(
    frozen,
    subclass,
    weakref,
    module = "domainbus.rust",
    name = "Dispatcher"
)]
pub struct Dispatcher {
    pub(crate) id: u64,
    pub(crate) config: ArcSwap<Config>,
    /// `config` as bits (`QUEUE`, `COLLECT`, `UNHANDLED`), stored after every config change:
    /// one plain load tells a single `dispatch` whether it may take the fast path.
    pub(crate) flags: AtomicU8,
    pub(crate) state: ArcSwap<Snapshot>,
    /// The resolved lists of single `dispatch` (rust/dispatch.rs `hot_regs`), valid for
    /// registry version `hot_version`: a direct-mapped table as a list [weak reference to a
    /// class, tuple of Planned, ...] (None when empty), filled first come, first served. A
    /// list read under the GIL costs less than an ArcSwap load and a mutex on that path.
    pub(crate) hot_slots: Py<PyList>,
    pub(crate) hot_version: AtomicU64,
    /// Bumped after every published registry change; the dispatch loop polls it per event.
    pub(crate) version: AtomicU64,
    next_seq: AtomicU64,
    /// Command handlers, dependencies and middleware (rust/commands.rs).
    pub(crate) commands: CommandRegistry,
    /// Per-handler counters, when on (rust/metrics.rs).
    pub(crate) metrics: Metrics,
}

/// `priority`, `once` and `weak`, checked with the same messages as the pure backend.
struct Options {
    priority: i64,
    once: bool,
    weak: bool,
}

fn qualname_of_type(value: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(value
        .get_type()
        .getattr(intern!(value.py(), "__qualname__"))?
        .to_string())
}

/// A keyword argument as given, explicit None included: its default (None) means "not given",
/// so `weak=None` is checked like any other value, as in Python.
fn given<'py>(value: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    Ok(Some(value.clone()))
}

impl Options {
    /// Checked after the positional arguments, in the pure backend's order.
    fn parse(
        priority: Option<Bound<'_, PyAny>>,
        once: Option<Bound<'_, PyAny>>,
        weak: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let priority = match priority {
            None => 0,
            Some(value) if value.is_instance_of::<PyInt>() => {
                value.extract::<i64>().map_err(|_| {
                    PyOverflowError::new_err("priority must fit in a signed 64-bit integer")
                })?
            }
            Some(value) => {
                return Err(PyTypeError::new_err(format!(
                    "priority must be an int, not {}",
                    qualname_of_type(&value)?
                )))
            }
        };
        let flag = |name: &str, value: Option<Bound<'_, PyAny>>| -> PyResult<bool> {
            match value {
                None => Ok(false),
                Some(value) => match value.cast::<PyBool>() {
                    Ok(flag) => Ok(flag.is_true()),
                    Err(_) => Err(PyTypeError::new_err(format!(
                        "{name} must be a bool, not {}",
                        qualname_of_type(&value)?
                    ))),
                },
            }
        };
        Ok(Self {
            priority,
            once: flag("once", once)?,
            weak: flag("weak", weak)?,
        })
    }
}

fn check_event_type<'a, 'py>(
    event_type: &'a Bound<'py, PyAny>,
) -> PyResult<&'a Bound<'py, PyType>> {
    match event_type.cast::<PyType>() {
        Ok(class) => Ok(class),
        Err(_) => Err(PyTypeError::new_err(format!(
            "event_type must be a class, not {}",
            qualname_of_type(event_type)?
        ))),
    }
}

/// `iter(events)`, or the TypeError a batch method raises for something that is not iterable.
fn iterate_batch<'py>(
    method: &str,
    events: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyIterator>> {
    events
        .try_iter()
        .map_err(|_| match qualname_of_type(events) {
            Ok(name) => PyTypeError::new_err(format!(
                "{method}() needs an iterable of events, not {name}"
            )),
            Err(err) => err,
        })
}

impl Dispatcher {
    /// The registration of exactly `event_type` whose handler `== handler`, comparing in
    /// registration order. The comparisons are Python code and may change the registry
    /// (`__eq__` registering a handler): each registration is compared at most once, and with
    /// `rescan` the ones added meanwhile are compared afterwards, until none is new. So the
    /// call ends, and gives the pure backend's result, however the comparisons behave.
    fn find_equal(
        &self,
        event_type: &Bound<'_, PyType>,
        handler: &Bound<'_, PyAny>,
        rescan: bool,
    ) -> PyResult<Option<Reg>> {
        let py = event_type.py();
        let mut compared: Vec<Reg> = Vec::new();
        loop {
            let snapshot = self.state.load_full();
            let fresh: Vec<Reg> = snapshot
                .registrations(event_type)
                .iter()
                .filter(|reg| !compared.iter().any(|seen| seen.is(*reg)))
                .map(|reg| reg.clone_ref(py))
                .collect();
            drop(snapshot);
            if fresh.is_empty() {
                return Ok(None);
            }
            for reg in fresh {
                if let Some(existing) = reg.get().live_handler(py)? {
                    if crate::unwind::equal(&existing, handler)? {
                        return Ok(Some(reg));
                    }
                }
                compared.push(reg);
            }
            if !rescan {
                return Ok(None);
            }
        }
    }

    /// Publish a new registry computed from the current snapshot (copy-on-write, lock-free).
    /// `change` returns None when there is nothing to change; it is re-run if another thread
    /// published in between. Returns whether a change was published.
    pub(crate) fn update(
        &self,
        mut change: impl FnMut(&Snapshot) -> PyResult<Option<Registry>>,
    ) -> PyResult<bool> {
        loop {
            let current = self.state.load_full();
            let Some(registry) = change(&current)? else {
                return Ok(false);
            };
            let previous = self
                .state
                .compare_and_swap(&current, Arc::new(Snapshot::new(registry)));
            if Arc::ptr_eq(&previous, &current) {
                let version = self.version.fetch_add(1, Ordering::Release) + 1;
                drop((previous, current));
                self.release_hot_slots(version);
                return Ok(true);
            }
        }
    }

    /// Empty `hot_slots` right after a change: they hold the old registrations (and so their
    /// handlers) strongly, which would keep an unregistered or cleared handler alive, and a
    /// `weak=True` registration of it registered, until the next dispatch of a class in one
    /// of those slots. Marked current first: releasing them may run Python code.
    fn release_hot_slots(&self, version: u64) {
        Python::attach(|py| {
            self.hot_version.store(version, Ordering::Relaxed);
            crate::dispatch_loop::clear_slots(self.hot_slots.bind(py));
        });
    }

    fn make_target<'py>(
        slf: &Bound<'py, Self>,
        handler: &Bound<'py, PyAny>,
        weak: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !weak {
            return Ok(handler.clone());
        }
        let py = slf.py();
        let weakref = py.import(intern!(py, "weakref"))?;
        let is_method = handler.is_instance(&py.import("types")?.getattr("MethodType")?)?;
        let ref_type = weakref.getattr(if is_method { "WeakMethod" } else { "ref" })?;
        ref_type.call1((handler, slf.getattr(intern!(py, "_reap"))?))
    }
}

impl Config {
    fn parse(
        on_error: Option<Bound<'_, PyAny>>,
        on_unhandled: Option<Bound<'_, PyAny>>,
        nested: Option<Bound<'_, PyAny>>,
        metrics: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let on_error = on_error
            .as_ref()
            .map_or(Ok(Policy::Raise), Policy::from_py)?;
        let on_unhandled = match on_unhandled {
            Some(value) if value.is_none() => None,
            Some(value) if value.is_callable() => Some(value.unbind()),
            Some(value) => {
                return Err(PyTypeError::new_err(format!(
                    "on_unhandled must be a callable or None, not {}",
                    qualname_of_type(&value)?
                )))
            }
            None => None,
        };
        let nested = match nested {
            None => Nested::Immediate,
            Some(value) => match value
                .cast::<PyString>()
                .ok()
                .map(|s| s.to_string())
                .as_deref()
            {
                Some("immediate") => Nested::Immediate,
                Some("queue") => Nested::Queue,
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "nested must be 'immediate' or 'queue', not {}",
                        value.repr()?
                    )))
                }
            },
        };
        let metrics = match metrics {
            None => false,
            Some(value) => match value.cast::<PyBool>() {
                Ok(flag) => flag.is_true(),
                Err(_) => {
                    return Err(PyTypeError::new_err(format!(
                        "metrics must be a bool, not {}",
                        qualname_of_type(&value)?
                    )))
                }
            },
        };
        Ok(Self {
            on_error,
            on_unhandled,
            nested,
            metrics,
        })
    }
}

#[pymethods]
impl Dispatcher {
    /// The options are taken by `__init__`, so a subclass may have its own `__init__`
    /// arguments (and call `super().__init__(**options)`), as with the pure backend.
    #[new]
    #[pyo3(
        signature = (*args, **kwargs),
        text_signature = "(*, on_error='raise', on_unhandled=None, nested='immediate', metrics=False)"
    )]
    fn new(py: Python<'_>, args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        let _ = (args, kwargs);
        Self {
            id: NEXT_DISPATCHER_ID.fetch_add(1, Ordering::Relaxed),
            config: ArcSwap::from_pointee(Config::empty()),
            flags: AtomicU8::new(0),
            state: ArcSwap::from_pointee(Snapshot::new(Registry::default())),
            hot_slots: crate::dispatch_loop::empty_slots(py),
            hot_version: AtomicU64::new(u64::MAX),
            version: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            commands: CommandRegistry::default(),
            metrics: Metrics::default(),
        }
    }

    /// `Dispatcher(*, on_error="raise", on_unhandled=None, nested="immediate", metrics=False)`: (re)set the
    /// options; like the pure backend's `__init__`, this also starts from an empty registry.
    /// (The class's signature is `#[new]`'s text signature: CPython shows no other for a
    /// class whose `__init__` is a slot.)
    #[pyo3(signature = (
        *,
        on_error = None,
        on_unhandled = None,
        nested = None,
        metrics = None,
    ))]
    fn __init__(
        &self,
        #[pyo3(from_py_with = given)] on_error: Option<Bound<'_, PyAny>>,
        #[pyo3(from_py_with = given)] on_unhandled: Option<Bound<'_, PyAny>>,
        #[pyo3(from_py_with = given)] nested: Option<Bound<'_, PyAny>>,
        #[pyo3(from_py_with = given)] metrics: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let config = Config::parse(on_error, on_unhandled, nested, metrics)?;
        let metrics = config.metrics;
        let flags = config.flags() | if metrics { METRICS } else { 0 };
        self.metrics.restart(metrics);
        self.config.store(Arc::new(config));
        self.flags.store(flags, Ordering::Relaxed);
        self.state
            .store(Arc::new(Snapshot::new(Registry::default())));
        self.version.fetch_add(1, Ordering::Release);
        Ok(())
    }

    #[getter]
    fn on_error(&self, py: Python<'_>) -> Py<PyAny> {
        self.config.load().on_error.to_py(py)
    }

    #[getter]
    fn on_unhandled(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.config
            .load()
            .on_unhandled
            .as_ref()
            .map(|f| f.clone_ref(py))
    }

    #[getter]
    fn nested(&self) -> &'static str {
        match self.config.load().nested {
            Nested::Immediate => "immediate",
            Nested::Queue => "queue",
        }
    }

    /// Call `handler(event)` for every event of `event_type` or a subclass; returns handler.
    ///
    /// `once`: removed before its first call. `weak`: held by a weak reference (WeakMethod
    /// for bound methods) and dropped when its target is collected. Registering the same
    /// (class, handler) pair again changes nothing.
    #[pyo3(
        signature = (event_type, handler, *, priority = None, once = None, weak = None),
        text_signature = "($self, event_type, handler, *, priority=0, once=False, weak=False)"
    )]
    fn register_handler<'py>(
        slf: &Bound<'py, Self>,
        event_type: &Bound<'py, PyAny>,
        handler: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = given)] priority: Option<Bound<'py, PyAny>>,
        #[pyo3(from_py_with = given)] once: Option<Bound<'py, PyAny>>,
        #[pyo3(from_py_with = given)] weak: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let event_type = check_event_type(event_type)?;
        if !handler.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "handler must be callable, not {}",
                qualname_of_type(handler)?
            )));
        }
        let options = Options::parse(priority, once, weak)?;
        let bound = slf.get().commands.inject(handler, options.weak)?; // its dependencies
        let target = Self::make_target(slf, &bound, options.weak)?;
        let this = slf.get();
        let py = slf.py();
        if this.find_equal(event_type, handler, true)?.is_some() {
            return Ok(handler.clone());
        }
        let seq = this.next_seq.fetch_add(1, Ordering::Relaxed);
        let reg = Py::new(
            py,
            Registration::new(
                event_type.clone().unbind(),
                target.unbind(),
                options.priority,
                seq,
                options.once,
                options.weak,
            ),
        )?;
        // No Python code runs from here to the swap: a retry is only ever caused by another
        // thread's change, and sees the registrations as they are then.
        this.update(|snapshot| Ok(Some(snapshot.with_added(py, reg.clone_ref(py)))))?;
        Ok(handler.clone())
    }

    /// Decorator form of `register_handler`.
    #[pyo3(
        signature = (event_type, *, priority = None, once = None, weak = None),
        text_signature = "($self, event_type, *, priority=0, once=False, weak=False)"
    )]
    fn handler<'py>(
        slf: &Bound<'py, Self>,
        event_type: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = given)] priority: Option<Bound<'py, PyAny>>,
        #[pyo3(from_py_with = given)] once: Option<Bound<'py, PyAny>>,
        #[pyo3(from_py_with = given)] weak: Option<Bound<'py, PyAny>>,
    ) -> PyResult<HandlerDecorator> {
        let event_type = check_event_type(event_type)?;
        let options = Options::parse(priority, once, weak)?;
        Ok(HandlerDecorator {
            dispatcher: slf.clone().into_any().unbind(),
            event_type: event_type.clone().unbind(),
            priority: options.priority,
            once: options.once,
            weak: options.weak,
        })
    }

    /// Remove the registration of `handler` for exactly `event_type`; False if none.
    fn unregister_handler(
        &self,
        event_type: &Bound<'_, PyAny>,
        handler: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let event_type = check_event_type(event_type)?;
        let py = event_type.py();
        let Some(reg) = self.find_equal(event_type, handler, false)? else {
            return Ok(false);
        };
        self.update(|snapshot| Ok(snapshot.without(py, &reg)))
    }

    /// The handlers an event of `event_type` would be dispatched to, in call order.
    fn handlers_for<'py>(&self, event_type: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
        let event_type = check_event_type(event_type)?;
        let py = event_type.py();
        let resolved = self.state.load().resolve(event_type)?;
        let mut live = Vec::with_capacity(resolved.len());
        for reg in resolved.iter() {
            live.extend(reg.get().live_handler(py)?);
        }
        PyTuple::new(py, live)
    }

    /// Remove every event handler and command handler; what was `provide`d and the
    /// middleware stay (pure/commands.py rule 1).
    fn clear(&self) -> PyResult<()> {
        self.commands.clear_handlers()?;
        self.update(|snapshot| Ok((!snapshot.registry.is_empty()).then(Registry::default)))
            .map(drop)
    }

    /// Weakref callback: drop the registrations whose target was just collected.
    fn _reap(&self, py: Python<'_>, weak_ref: &Bound<'_, PyAny>) -> PyResult<()> {
        self.update(|snapshot| {
            let dead = snapshot
                .registry
                .values()
                .flat_map(|entry| entry.regs.iter())
                .find(|reg| reg.get().target.bind(py).is(weak_ref));
            Ok(dead.and_then(|reg| snapshot.without(py, reg)))
        })
        .map(drop)
    }

    /// Dispatch each event of an iterable in order; returns the total handler calls.
    fn dispatch_batch(&self, events: &Bound<'_, PyAny>) -> PyResult<u64> {
        if let Ok(list) = events.cast_exact::<PyList>() {
            // Index by index, re-reading the length each step like Python's own list iterator
            // (a handler may append to the batch and see it dispatched), without PyIter_Next.
            let mut index = 0;
            let items = std::iter::from_fn(|| {
                if index >= list.len() {
                    return None;
                }
                // SAFETY: `index < len` was checked just above, with the GIL held and no Python
                // code run in between; get_item_unchecked returns a new (owned) reference.
                let item = unsafe { list.get_item_unchecked(index) };
                index += 1;
                Some(Ok(item))
            });
            return self.run(events.py(), items, true);
        }
        let iterator = iterate_batch("dispatch_batch", events)?.into_any();
        let items = std::iter::from_fn(|| crate::unwind::next(&iterator));
        self.run(events.py(), items, true)
    }

    /// Awaitable `dispatch`: awaitable handler results are awaited (see `domainbus._async`).
    #[pyo3(signature = (event, *, concurrent = false))]
    fn dispatch_async<'py>(
        slf: &Bound<'py, Self>,
        event: &Bound<'py, PyAny>,
        concurrent: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let events = PyTuple::new(slf.py(), [event])?.into_any();
        if concurrent || slf.get().config.load().nested == Nested::Queue {
            return async_driver(slf, events, false, concurrent);
        }
        let dispatch = AsyncDispatch::new(slf, events.try_iter(), false);
        Ok(Bound::new(slf.py(), dispatch)?.into_any())
    }

    /// Awaitable `dispatch_batch`; `concurrent=True` runs one event's handlers together.
    #[pyo3(signature = (events, *, concurrent = false))]
    fn dispatch_batch_async<'py>(
        slf: &Bound<'py, Self>,
        events: &Bound<'py, PyAny>,
        concurrent: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        if concurrent || slf.get().config.load().nested == Nested::Queue {
            return async_driver(slf, events.clone(), true, concurrent);
        }
        let iterator = iterate_batch("dispatch_batch_async", events);
        let dispatch = AsyncDispatch::new(slf, iterator, true);
        Ok(Bound::new(slf.py(), dispatch)?.into_any())
    }

    fn _plan<'py>(&self, event_type: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyTuple>> {
        self.plan(event_type)
    }

    fn _take<'py>(
        &self,
        py: Python<'py>,
        planned: Bound<'py, Registration>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.take(py, &planned.unbind())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let config = self.config.load();
        if let Policy::Callback(callback) = &config.on_error {
            visit.call(callback)?;
        }
        visit.call(&config.on_unhandled)?;
        visit.call(&self.hot_slots)?;
        self.commands.traverse(&visit)?;
        self.metrics.traverse(&visit)?;
        self.state.load().traverse(&visit)
    }

    fn __clear__(&self) {
        self.commands.clear_all();
        self.metrics.restart(false);
        self.config.store(Arc::new(Config::empty()));
        self.flags.store(0, Ordering::Relaxed);
        self.hot_version.store(u64::MAX, Ordering::Relaxed);
        // SAFETY: the GC calls __clear__ with the GIL held.
        let py = unsafe { Python::assume_attached() };
        crate::dispatch_loop::clear_slots(self.hot_slots.bind(py));
        self.state
            .store(Arc::new(Snapshot::new(Registry::default())));
        self.version.fetch_add(1, Ordering::Release);
    }
}

/// What `Dispatcher.handler(...)` returns: registers the function it decorates.
#[pyclass(frozen, module = "domainbus.rust")]
pub struct HandlerDecorator {
    dispatcher: Py<PyAny>,
    event_type: Py<PyType>,
    priority: i64,
    once: bool,
    weak: bool,
}

#[pymethods]
impl HandlerDecorator {
    fn __call__<'py>(&self, handler: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = handler.py();
        let kwargs = [
            ("priority", self.priority.into_pyobject(py)?.into_any()),
            ("once", PyBool::new(py, self.once).to_owned().into_any()),
            ("weak", PyBool::new(py, self.weak).to_owned().into_any()),
        ]
        .into_py_dict(py)?;
        self.dispatcher.bind(py).call_method(
            intern!(py, "register_handler"),
            (self.event_type.bind(py), handler),
            Some(&kwargs),
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.dispatcher)?;
        visit.call(&self.event_type)
    }
}

//! The dispatch loop: single events, batches, nested modes and error policies.
//!
//! `Dispatcher::run` is the one loop behind `dispatch` and `dispatch_batch` (and the queue's
//! consumer). Per event it checks the registry version (one atomic load), reuses the last
//! resolved list when the type repeats, and calls each handler with one vectorcall. No Rust
//! lock or borrow is held while Python code runs.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::Guard;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple, PyType};

use crate::dispatcher::{Config, Dispatcher, Nested, COLLECT, METRICS, QUEUE, UNHANDLED};
use crate::errors::{self, Policy};
use crate::handled;
use crate::methods::{install_method, MethodDef};
use crate::metrics::Metered;
use crate::nested::{self, FrameGuard};
use crate::registry::{Reg, Registration, Resolved, Snapshot};
use crate::unwind;

/// Events between two looks at pending signals (Ctrl-C) and at the clock: handlers and
/// iterators written in C never give the eval loop a chance to do either.
const PACE: u32 = 1024;

thread_local! {
    /// Events this thread may still dispatch before the next pause (counted across calls, so
    /// a C loop of single `dispatch` calls pauses too).
    static LEFT: Cell<u32> = const { Cell::new(PACE) };
    /// When this thread last let the GIL go, and the gap to keep before the next time.
    static LAST_YIELD: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// Every `PACE` events dispatched on a thread: run the signal handlers and, when two switch
/// intervals have passed since the last time, release the GIL for a moment.
///
/// Why not every pause: CPython's waiting thread asks the holder to switch only after a whole
/// switch interval without the GIL being released. A release every few microseconds wakes it
/// each time (it then usually loses the race to take the GIL back), so it never asks and can
/// starve for the whole batch. Two intervals apart, its request is pending when we release, and
/// CPython then hands the GIL over before we may take it back.
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
        let due = LAST_YIELD.get().is_none_or(|(at, gap)| at.elapsed() >= gap);
        if due {
            unwind::yield_gil(py);
            LAST_YIELD.set(Some((Instant::now(), 2 * switch_interval(py))));
        }
        Ok(())
    }
}

/// `sys.getswitchinterval()` (the user may change it), or CPython's default of 5 ms.
fn switch_interval(py: Python<'_>) -> Duration {
    let asked = || -> PyResult<f64> {
        py.import("sys")?
            .getattr("getswitchinterval")?
            .call0()?
            .extract()
    };
    asked()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .unwrap_or(Duration::from_millis(5))
}

/// Slots of the direct-mapped table of types one `run` remembers (a power of two). A batch of
/// mixed types then costs one pointer comparison per event, not a hash lookup in the shared
/// cache.
const LOCAL_SLOTS: usize = 64;

/// A type, its resolved list and, while metrics are on, the list's counters.
type Seen<'py> = (Bound<'py, PyType>, Resolved, Option<Metered>);
/// What `Cursor::resolve` gives for one event.
type Route<'a> = (&'a Resolved, Option<&'a Metered>);
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
    matches!(seen, Some((t, _, _)) if t.is(event_type))
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

    fn resolve_in_snapshot(
        &self,
        owner: &Dispatcher,
        event_type: &Bound<'py, PyType>,
    ) -> PyResult<Seen<'py>> {
        let regs = match &self.snapshot {
            Some(snapshot) => snapshot.resolve(event_type)?,
            None => Arc::new([]),
        };
        let metered = if owner.metrics.enabled() && !regs.is_empty() {
            Some(owner.metrics.counters(event_type.py(), event_type, &regs)?)
        } else {
            None
        };
        Ok((event_type.clone(), regs, metered))
    }

    /// The resolved registrations for `event_type` under the newest registry (rule 4: a
    /// change made during the previous event is seen by this one).
    fn resolve(
        &mut self,
        owner: &Dispatcher,
        event_type: &Bound<'py, PyType>,
    ) -> PyResult<Route<'_>> {
        let version = owner.version.load(Ordering::Acquire);
        if version != self.version || self.snapshot.is_none() {
            self.snapshot = Some(owner.state.load());
            self.version = version;
            self.first = None;
            self.table = None;
        }
        if self.first.is_none() {
            self.first = Some(self.resolve_in_snapshot(owner, event_type)?);
        }
        if !seen_is(&self.first, event_type) {
            let slot = slot_of(event_type);
            if !self
                .table
                .as_ref()
                .is_some_and(|t| seen_is(&t[slot], event_type))
            {
                let seen = self.resolve_in_snapshot(owner, event_type)?;
                let table = self
                    .table
                    .get_or_insert_with(|| (0..LOCAL_SLOTS).map(|_| None).collect());
                table[slot] = Some(seen);
            }
            if let Some(Some((_, regs, metered))) = self.table.as_ref().map(|t| &t[slot]) {
                return Ok((regs, metered.as_ref()));
            }
        }
        match &self.first {
            Some((_, regs, metered)) => Ok((regs, metered.as_ref())),
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
                    let before = failures.as_ref().map_or(0, Vec::len);
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
                    // the unit-of-work hook (`_after_drain`): this event's cascade is done
                    let after = nested::take_after(self.id);
                    if !after.is_empty() {
                        let failure = failures.as_ref().and_then(|f| f.get(before));
                        let failure = failure.map(|err| err.value(py).clone().into_any());
                        nested::drained(py, after, failure.as_ref())?;
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
                nested::drained_by(py, self.id, &err)?;
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
        let (regs, metered) = cursor.resolve(self, &event_type)?;
        if regs.is_empty() {
            if let Some(on_unhandled) = &config.on_unhandled {
                unwind::call1(on_unhandled.bind(py), event)?;
            }
            return Ok(0);
        }
        match metered {
            None => {
                self.call_handlers::<false>(config, regs, None, event, &event_type, index, failures)
            }
            Some(metered) => {
                self.call_metered(config, regs, metered, event, &event_type, index, failures)
            }
        }
    }

    /// `call_handlers` counting into `metered` (kept out of line: the unmetered loop is the
    /// one inlined into `run`).
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn call_metered<'py>(
        &self,
        config: &Config,
        regs: &Resolved,
        metered: &Metered,
        event: &Bound<'py, PyAny>,
        event_type: &Bound<'py, PyType>,
        index: Option<usize>,
        failures: &mut Option<Vec<PyErr>>,
    ) -> PyResult<u64> {
        self.call_handlers::<true>(
            config,
            regs,
            Some(metered),
            event,
            event_type,
            index,
            failures,
        )
    }

    /// Call the resolved handlers of one event; returns the calls made. `METERED` (with the
    /// counters of `regs`) counts each call: a separate instantiation, so with metrics off the
    /// loop has no trace of them.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn call_handlers<'py, const METERED: bool>(
        &self,
        config: &Config,
        regs: &Resolved,
        metered: Option<&Metered>,
        event: &Bound<'py, PyAny>,
        event_type: &Bound<'py, PyType>,
        index: Option<usize>,
        failures: &mut Option<Vec<PyErr>>,
    ) -> PyResult<u64> {
        let py = event.py();
        let mut calls = 0;
        for (position, reg) in regs.iter().enumerate() {
            let reg_ref = reg;
            let reg = reg_ref.get();
            // not `Dispatcher::take`: a strong handler is borrowed, not cloned (measured ~4 ns
            // an event faster on mixed batches)
            let mut weak_target = None;
            let Some(handler) = reg.handler_in(py, &mut weak_target)? else {
                continue;
            };
            if reg.once && !self.consume(py, reg_ref)? {
                continue;
            }
            calls += 1;
            let counter = if METERED {
                metered.and_then(|counters| counters.get(position))
            } else {
                None
            };
            let start = counter.and_then(|counter| counter.begin());
            let failure = match unwind::call1(handler, event) {
                Ok(result) if result.is_none() || !is_coroutine(&result) => {
                    if let Some(counter) = counter {
                        counter.end(start, false);
                    }
                    continue;
                }
                Ok(coroutine) => reject_coroutine(handler, &coroutine),
                Err(err) => err,
            };
            if let Some(counter) = counter {
                counter.end(start, errors::is_exception(py, &failure));
            }
            self.handle_failure(
                py, config, failure, handler, event, event_type, index, failures,
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

/// Slots of the single-dispatch table (`Dispatcher::hot_slots`; a power of two).
const HOT_SLOTS: usize = 256;

/// Slots a class may take, from its own on (bounded linear probing): classes whose slots
/// collide each get one of these, so the second is not sent down `hot_miss` on every call.
/// A lookup checks all of them (a slot emptied since is not an end), the first inline.
const HOT_PROBES: usize = 4;

/// The slot of a class in `hot_slots` (Fibonacci hashing of its address).
#[inline(always)]
fn hot_slot(event_type: &Bound<'_, PyType>) -> usize {
    let address = event_type.as_ptr() as usize as u64;
    ((address >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - HOT_SLOTS.trailing_zeros()))
        as usize
}

/// The `probe`-th slot a class may take (0: its own).
#[inline(always)]
fn probed(slot: usize, probe: usize) -> usize {
    (slot + probe) & (HOT_SLOTS - 1)
}

/// The tuple `slot` holds for `event_type`, or None when the slot holds another class (or a
/// dead weak reference: a class collected since, whatever is now at its address), or nothing.
///
/// # Safety
/// The GIL is held and `slots` is a list of `2 * HOT_SLOTS` items; the result is borrowed
/// from the list (make it owned before any Python code runs).
#[inline(always)]
unsafe fn slot_regs(
    slots: *mut ffi::PyObject,
    slot: usize,
    event_type: &Bound<'_, PyType>,
) -> Option<*mut ffi::PyObject> {
    // SAFETY: as the caller promised, `2 * slot + 1 < 2 * HOT_SLOTS` items, read only.
    unsafe {
        let class = ffi::PyList_GET_ITEM(slots, (2 * slot) as ffi::Py_ssize_t);
        let regs = ffi::PyList_GET_ITEM(slots, (2 * slot + 1) as ffi::Py_ssize_t);
        (ffi::PyWeakref_CheckRefExact(class) != 0
            && ffi::PyWeakref_GetObject(class) == event_type.as_ptr()
            && ffi::PyTuple_CheckExact(regs) != 0)
            .then_some(regs)
    }
}

/// A new, empty `hot_slots` list.
pub(crate) fn empty_slots(py: Python<'_>) -> Py<PyList> {
    PyList::new(py, (0..2 * HOT_SLOTS).map(|_| py.None()))
        .map_or_else(|_| PyList::empty(py).unbind(), Bound::unbind)
}

/// Empty every slot (the class first: a slot whose class is None is empty). Releasing the old
/// entries may run Python code that fills slots meanwhile; lookups check what they find.
pub(crate) fn clear_slots(slots: &Bound<'_, PyList>) {
    let py = slots.py();
    for i in 0..slots.len() {
        let _ = slots.set_item(i, py.None());
    }
}

impl Dispatcher {
    /// `dispatch(event)`: one event, in "immediate" mode without the batch loop's set-up. The
    /// resolved list comes from `hot_slots`; the options are read when they matter (the
    /// on_error policy at a failure, on_unhandled for an unhandled event), as in the pure
    /// backend. "queue" mode (it owns the per-thread FIFO), "collect" and metrics on take the
    /// general loop.
    ///
    /// `slow` is set when the call left the hot path (a slot miss, a failure, a `once` claim,
    /// on_unhandled, the general loop): only there may a `Py` value be dropped, which PyO3
    /// defers while its attach count is zero (see `dispatch_fastcall`).
    #[inline(always)]
    pub(crate) fn dispatch_single<'py>(
        &self,
        event: &Bound<'py, PyAny>,
        slow: &mut bool,
    ) -> PyResult<u64> {
        let py = event.py();
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & (QUEUE | COLLECT | METRICS) != 0 {
            *slow = true;
            return self.run(py, std::iter::once(Ok(event.clone())), false);
        }
        let _depth = RecursionGuard::enter(py)?;
        let event_type = event.get_type();
        let regs = self.hot_regs(&event_type, slow)?;
        let mut failures = None; // "collect" takes the general loop
        let mut calls = 0u64;
        if regs.is_empty() {
            if flags & UNHANDLED != 0 {
                *slow = true;
                let on_unhandled = self
                    .config
                    .load()
                    .on_unhandled
                    .as_ref()
                    .map(|f| f.clone_ref(py));
                if let Some(on_unhandled) = on_unhandled {
                    unwind::call1(on_unhandled.bind(py), event)?;
                }
            }
        } else {
            for item in regs.iter_borrowed() {
                // SAFETY: `hot_regs` only returns tuples of Registration (Planned) objects.
                let planned = unsafe { item.cast_unchecked::<Registration>() };
                let reg = planned.get();
                let mut weak_target = None;
                let Some(handler) = reg.handler_in(py, &mut weak_target)? else {
                    continue;
                };
                if reg.once {
                    *slow = true;
                    if !self.consume(py, &planned.to_owned().unbind())? {
                        continue;
                    }
                }
                calls += 1;
                let failure = match unwind::call1(handler, event) {
                    Ok(result) if result.is_none() || !is_coroutine(&result) => continue,
                    Ok(coroutine) => reject_coroutine(handler, &coroutine),
                    Err(err) => err,
                };
                *slow = true;
                let config = self.config.load_full();
                self.handle_failure(
                    py,
                    &config,
                    failure,
                    handler,
                    event,
                    &event_type,
                    None,
                    &mut failures,
                )?;
            }
        }
        Pacer::new().tick(py)?;
        Ok(calls)
    }

    /// The resolved registrations of `event_type` under the newest registry (rule 4), as a
    /// tuple of Planned: from `hot_slots` when its slot holds them for the current version.
    /// A slot holds a weak reference to its class (no reference count of the class changes),
    /// so a class collected meanwhile, or another at its address, never matches.
    #[inline(always)]
    fn hot_regs<'py>(
        &self,
        event_type: &Bound<'py, PyType>,
        slow: &mut bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = event_type.py();
        let version = self.version.load(Ordering::Acquire);
        if self.hot_version.load(Ordering::Relaxed) == version {
            let slot = hot_slot(event_type);
            // SAFETY: GIL held; `hot_slots` is a list of 2 * HOT_SLOTS items (or empty, if
            // its creation failed: then the length check fails); the tuple found is borrowed
            // and made owned at once.
            unsafe {
                let slots = self.hot_slots.as_ptr();
                if ffi::PyList_GET_SIZE(slots) as usize == 2 * HOT_SLOTS {
                    if let Some(regs) = slot_regs(slots, slot, event_type) {
                        return Ok(Bound::from_borrowed_ptr(py, regs).cast_into_unchecked());
                    }
                }
            }
        }
        *slow = true;
        self.hot_miss(event_type, version)
    }

    #[cold]
    #[inline(never)]
    fn hot_miss<'py>(
        &self,
        event_type: &Bound<'py, PyType>,
        version: u64,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = event_type.py();
        let slots = self.hot_slots.bind(py);
        let slot = hot_slot(event_type);
        if self.hot_version.load(Ordering::Relaxed) != version {
            // Marked first: releasing the old lists may run Python code, which may dispatch
            // (and fill slots) or change the registry (then nothing is stored below).
            self.hot_version.store(version, Ordering::Relaxed);
            clear_slots(slots);
        } else if slots.len() == 2 * HOT_SLOTS {
            // The other slots the class may have taken (its own was looked at by `hot_regs`).
            for probe in 1..HOT_PROBES {
                // SAFETY: GIL held, the list has 2 * HOT_SLOTS items (checked just above, no
                // Python code run since); the tuple found is made owned at once.
                unsafe {
                    if let Some(regs) = slot_regs(slots.as_ptr(), probed(slot, probe), event_type) {
                        return Ok(Bound::from_borrowed_ptr(py, regs).cast_into_unchecked());
                    }
                }
            }
        }
        let resolved = self.state.load().resolve(event_type)?;
        let regs = PyTuple::new(py, resolved.iter().map(|reg| reg.clone_ref(py)))?;
        drop(resolved);
        let current = |this: &Self| {
            this.version.load(Ordering::Acquire) == version
                && this.hot_version.load(Ordering::Relaxed) == version
        };
        // a free slot (empty, or its class collected) is taken: its tuple first, then its class
        let free = |slots: &Bound<'py, PyList>, slot: usize| -> PyResult<bool> {
            let class = slots.get_item(2 * slot)?;
            Ok(class.is_none()
                || class
                    .cast::<pyo3::types::PyWeakrefReference>()
                    .is_ok_and(|r| r.upgrade().is_none()))
        };
        if !(current(self) && slots.len() == 2 * HOT_SLOTS) {
            return Ok(regs);
        }
        let mut target = None;
        for probe in 0..HOT_PROBES {
            if free(slots, probed(slot, probe))? {
                target = Some(probed(slot, probe));
                break;
            }
        }
        if let Some(slot) = target {
            // SAFETY: GIL held, `event_type` is a live class (classes take weak references);
            // the result is a new reference or NULL with an exception set.
            let weak = unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PyWeakref_NewRef(event_type.as_ptr(), std::ptr::null_mut()),
                )
            };
            if let Ok(weak) = weak {
                slots.set_item(2 * slot + 1, &regs)?;
                if current(self) && free(slots, slot)? {
                    slots.set_item(2 * slot, weak)?;
                }
            }
        }
        Ok(regs)
    }
}

/// `Dispatcher.dispatch` as a METH_FASTCALL | METH_KEYWORDS method: CPython passes the event
/// straight from its argument array, with none of the generated argument parsing (the keyword
/// form `dispatch(event=...)` of the pure backend is parsed here too, off the fast path).
unsafe extern "C" fn dispatch_fastcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a method with the GIL held by this thread.
    let py = unsafe { Python::assume_attached() };
    let mut slow = false;
    let result = dispatch_body(py, slf, args, nargs, kwnames, &mut slow);
    if slow {
        // PyO3's attach count is zero under `assume_attached`, so a `Py` value dropped in the
        // call (a failure's PyErr, a replaced registry) was queued, not released. Attaching
        // releases the queue now, before the caller sees the result; the hot path (a slot
        // hit, no failure) drops no `Py` and skips this (about 150 instructions a call).
        Python::attach(|_| ());
    }
    result
}

/// The body of `dispatch_fastcall`; sets `slow` when it left the hot path.
fn dispatch_body(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    slow: &mut bool,
) -> *mut ffi::PyObject {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: `slf` is a borrowed, live object the method descriptor checked is an
        // instance of Dispatcher (or a subclass); `args` holds `nargs` positional arguments
        // followed by one per name in `kwnames` (a tuple, or NULL), all borrowed and live.
        let slf = unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<Dispatcher>() };
        let event = if nargs == 1 && kwnames.is_null() {
            // SAFETY: one positional argument (just checked).
            unsafe { Bound::from_borrowed_ptr(py, *args) }
        } else {
            *slow = true;
            // SAFETY: as above.
            unsafe { the_event(py, args, nargs, kwnames) }?
        };
        slf.get().dispatch_single(&event, slow)
    }));
    match outcome {
        Ok(Ok(calls)) => {
            let Ok(calls) = calls.into_pyobject(py);
            calls.into_ptr()
        }
        Ok(Err(err)) => {
            *slow = true;
            err.restore(py);
            std::ptr::null_mut()
        }
        Err(_) => {
            *slow = true;
            pyo3::panic::PanicException::new_err("domainbus: dispatch panicked").restore(py);
            std::ptr::null_mut()
        }
    }
}

/// The `event` argument of a call other than `dispatch(event)`, or the TypeError Python
/// raises for a function `def dispatch(self, event)` called that way.
///
/// # Safety
/// As for a METH_FASTCALL | METH_KEYWORDS method: the GIL is held, `args` holds `nargs`
/// positional arguments then one per name in `kwnames` (a tuple of str, or NULL).
#[cold]
#[inline(never)]
unsafe fn the_event<'py>(
    py: Python<'py>,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Bound<'py, PyAny>> {
    let mut event = None;
    if nargs > 1 {
        return Err(PyTypeError::new_err(format!(
            "dispatch() takes 1 positional argument but {nargs} were given"
        )));
    }
    if nargs == 1 {
        // SAFETY: one positional argument.
        event = Some(unsafe { Bound::from_borrowed_ptr(py, *args) });
    }
    if !kwnames.is_null() {
        // SAFETY: `kwnames` is a live tuple of str (the vectorcall protocol).
        let names =
            unsafe { Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>() };
        for (i, name) in names.iter().enumerate() {
            let name = name.to_string();
            if name != "event" {
                return Err(PyTypeError::new_err(format!(
                    "dispatch() got an unexpected keyword argument '{name}'"
                )));
            }
            if event.is_some() {
                return Err(PyTypeError::new_err(
                    "dispatch() got multiple values for argument 'event'",
                ));
            }
            // SAFETY: keyword values follow the `nargs` positional ones, one per name.
            event = Some(unsafe { Bound::from_borrowed_ptr(py, *args.add(nargs as usize + i)) });
        }
    }
    event.ok_or_else(|| {
        PyTypeError::new_err("dispatch() missing 1 required positional argument: 'event'")
    })
}

static DISPATCH: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"dispatch".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: dispatch_fastcall,
    },
    ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
    ml_doc: c"dispatch($self, event)\n--\n\nCall every handler of `event`; returns the number of handler calls made.".as_ptr(),
});

/// Put the fastcall `dispatch` on the Dispatcher class (called once, at module import).
pub(crate) fn install_dispatch(py: Python<'_>) -> PyResult<()> {
    install_method(py, &DISPATCH, pyo3::intern!(py, "dispatch"))
}

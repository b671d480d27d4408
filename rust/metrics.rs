//! Per-handler metrics (rule 16; the contract, the sampling and the records:
//! `domainbus.pure.metrics`): counters in the core, so counting a call is no Python call.
//!
//! A `Counter` per (event class, handler name) row. The dispatch loop gets the counters of a
//! resolved list once per type and run (`Metrics::counters`, memoised per resolved list), then
//! counts each call with a few plain loads and stores; one call in about `SAMPLE` reads the
//! clock (a clock read costs more than a whole dispatch here). With metrics off nothing of this
//! runs: the loop takes its unmetered instantiation (one branch per event).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyType};
use pyo3::PyTraverseError;
use rustc_hash::FxHashMap as HashMap;

use crate::dispatcher::{Dispatcher, METRICS};
use crate::errors;
use crate::registry::{type_key, Reg, Resolved};

/// A fast handler is timed on about one call in this many (`domainbus.pure.metrics.SAMPLE`).
const SAMPLE: u32 = 64;
/// A timed call this long or longer: the next call is timed too.
const SLOW_NS: u64 = 20_000;
/// Resolved lists whose counters are remembered; past this the memo starts over.
const PLANS_LIMIT: usize = 4096;

/// `+1`, as a plain load and store (no locked instruction): every update of a counter is made
/// with the GIL held (the module declares `gil_used`) and no Python code runs between the load
/// and the store, so no other thread can update the same counter in between.
#[inline(always)]
fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// What reading the clock adds to a measured interval: the least of a few back-to-back reads'
/// differences, measured once per process.
fn clock_cost() -> u64 {
    static COST: OnceLock<u64> = OnceLock::new();
    *COST.get_or_init(|| {
        (0..64)
            .map(|_| {
                let start = Instant::now();
                Instant::now().duration_since(start).as_nanos() as u64
            })
            .min()
            .unwrap_or(0)
    })
}

/// The counters of one (event class, handler) row.
#[derive(Default)]
pub struct Counter {
    calls: AtomicU64,
    failures: AtomicU64,
    timed: AtomicU64,
    timed_ns: AtomicU64,
    /// Calls to let pass untimed before the next timed one.
    countdown: AtomicU32,
}

impl Counter {
    /// Count a call about to be made; its start when this call is to be timed.
    #[inline(always)]
    pub fn begin(&self) -> Option<Instant> {
        bump(&self.calls);
        let left = self.countdown.load(Ordering::Relaxed);
        if left != 0 {
            self.countdown.store(left - 1, Ordering::Relaxed);
            return None;
        }
        Some(Instant::now())
    }

    /// Count a call about to be made and time it (async calls are all timed).
    pub fn begin_timed(&self) -> Instant {
        bump(&self.calls);
        Instant::now()
    }

    /// The call counted by `begin` is over; `failed`: it raised an `Exception`.
    #[inline(always)]
    pub fn end(&self, start: Option<Instant>, failed: bool) {
        if failed {
            bump(&self.failures);
        }
        if let Some(start) = start {
            self.add_time(start.elapsed());
        }
    }

    #[cold]
    #[inline(never)]
    fn add_time(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_sub(clock_cost());
        bump(&self.timed);
        let total = self.timed_ns.load(Ordering::Relaxed);
        self.timed_ns
            .store(total.saturating_add(nanos), Ordering::Relaxed);
        // the low digits of a duration in ns are as good as random: no stride to alias with
        let next = if nanos >= SLOW_NS {
            0
        } else {
            SAMPLE / 2 + (nanos % u64::from(SAMPLE)) as u32
        };
        self.countdown.store(next, Ordering::Relaxed);
    }

    /// One call, timed by the caller (the general async path).
    fn record(&self, nanos: u64, failed: bool) {
        bump(&self.calls);
        if failed {
            bump(&self.failures);
        }
        self.add_time(Duration::from_nanos(nanos));
    }
}

/// The counters of a resolved list, position by position (a throwaway counter for a weak
/// registration whose target was gone: it is never called).
pub type Metered = Arc<[Arc<Counter>]>;

struct Row {
    event_type: Py<PyType>, // held, so the key's address stays the class's until a reset
    type_name: String,
    handler: String,
    counter: Arc<Counter>,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    /// (class address, handler name) -> position in `rows`.
    index: HashMap<(usize, String), usize>,
    /// Class address -> the resolved list last metered for it (weakly: the allocation stays,
    /// so its address is no other list's) and its counters.
    plans: HashMap<usize, (Weak<[Reg]>, Metered)>,
}

impl Table {
    /// The row's counter, made if new (the caller computed the names, outside the lock).
    fn counter(&mut self, event_type: &Bound<'_, PyType>, names: (&str, &str)) -> Arc<Counter> {
        let key = (type_key(event_type), names.1.to_owned());
        if let Some(&position) = self.index.get(&key) {
            if let Some(row) = self.rows.get(position) {
                return row.counter.clone();
            }
        }
        let counter = Arc::new(Counter::default());
        self.index.insert(key, self.rows.len());
        self.rows.push(Row {
            event_type: event_type.clone().unbind(), // an incref: no Python code runs
            type_name: names.0.to_owned(),
            handler: names.1.to_owned(),
            counter: counter.clone(),
        });
        counter
    }
}

/// A dispatcher's metrics: whether they are on, and the table (behind a mutex held only for
/// lookups and inserts, never across Python code; nothing Python is dropped under it).
#[derive(Default)]
pub struct Metrics {
    enabled: AtomicBool,
    table: Mutex<Table>,
}

/// One record of a snapshot, copied out of the table under its lock.
struct Record {
    type_name: String,
    handler: String,
    calls: u64,
    failures: u64,
    timed: u64,
    total_ns: u64,
}

impl Metrics {
    #[inline(always)]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters of `regs`, the resolved list of `event_type`.
    pub fn counters(
        &self,
        py: Python<'_>,
        event_type: &Bound<'_, PyType>,
        regs: &Resolved,
    ) -> PyResult<Metered> {
        let key = type_key(event_type);
        let memo = self.lock().plans.get(&key).and_then(|(list, counters)| {
            std::ptr::addr_eq(list.as_ptr(), Arc::as_ptr(regs)).then(|| counters.clone())
        });
        if let Some(counters) = memo {
            return Ok(counters);
        }
        // names first (Python code), then the table
        let type_name = errors::type_name(event_type)?;
        let mut names = Vec::with_capacity(regs.len());
        for reg in regs.iter() {
            names.push(match reg.get().live_handler(py)? {
                Some(handler) => Some(errors::describe_handler(&handler)?),
                None => None,
            });
        }
        let mut table = self.lock();
        let counters: Metered = names
            .iter()
            .map(|name| match name {
                Some(name) => table.counter(event_type, (&type_name, name)),
                None => Arc::new(Counter::default()),
            })
            .collect();
        if table.plans.len() >= PLANS_LIMIT {
            table.plans.clear(); // no Python objects in there
        }
        table
            .plans
            .insert(key, (Arc::downgrade(regs), counters.clone()));
        Ok(counters)
    }

    /// Switch on or off (the table is kept).
    fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Empty the table; what it held is released after the lock is.
    fn reset(&self) {
        let old = std::mem::take(&mut *self.lock());
        drop(old);
    }

    /// `__init__` and `__clear__`: an empty table, on or off.
    pub fn restart(&self, on: bool) {
        self.reset();
        self.set_enabled(on);
    }

    fn snapshot(&self) -> Vec<Record> {
        let table = self.lock();
        let mut records: Vec<Record> = table
            .rows
            .iter()
            .filter_map(|row| {
                let counter = &row.counter;
                let calls = counter.calls.load(Ordering::Relaxed);
                let timed = counter.timed.load(Ordering::Relaxed);
                let timed_ns = counter.timed_ns.load(Ordering::Relaxed);
                let total_ns = if timed == 0 {
                    0
                } else {
                    u64::try_from(u128::from(timed_ns) * u128::from(calls) / u128::from(timed))
                        .unwrap_or(u64::MAX)
                };
                (calls > 0).then(|| Record {
                    type_name: row.type_name.clone(),
                    handler: row.handler.clone(),
                    calls,
                    failures: counter.failures.load(Ordering::Relaxed),
                    timed,
                    total_ns,
                })
            })
            .collect();
        drop(table);
        records.sort_by(|a, b| {
            (b.total_ns, b.calls)
                .cmp(&(a.total_ns, a.calls))
                .then_with(|| (&a.type_name, &a.handler).cmp(&(&b.type_name, &b.handler)))
        });
        records
    }

    /// Report the classes the rows hold (skipped if the table is locked: it never is while
    /// Python code, so the GC, runs).
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(table) = self.table.try_lock() {
            for row in &table.rows {
                visit.call(&row.event_type)?;
            }
        }
        Ok(())
    }
}

impl Dispatcher {
    /// Switching and resetting take effect from the next event on: the registry version is
    /// bumped, so the loops re-resolve (and fetch their counters again).
    fn metrics_changed(&self) {
        self.version.fetch_add(1, Ordering::Release);
    }
}

#[pymethods]
impl Dispatcher {
    #[getter]
    fn metrics_enabled(&self) -> bool {
        self.metrics.enabled()
    }

    /// Count every handler call from the next event on (the table is kept).
    fn enable_metrics(&self) {
        self.metrics.set_enabled(true);
        self.flags.fetch_or(METRICS, Ordering::Relaxed);
        self.metrics_changed();
    }

    /// Stop counting from the next event on; `metrics()` still reports what was counted.
    fn disable_metrics(&self) {
        self.metrics.set_enabled(false);
        self.flags.fetch_and(!METRICS, Ordering::Relaxed);
        self.metrics_changed();
    }

    /// Forget every row counted so far (and the classes they hold).
    fn reset_metrics(&self) {
        self.metrics.reset();
        self.metrics_changed();
    }

    /// Per (event type, handler) called since the last reset: a dict of `event_type`
    /// (qualname), `handler` (module.qualname), `calls`, `failures`, `timed_calls` and
    /// `total_ns` (estimated from the timed calls), slowest first.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let records = self.metrics.snapshot();
        let list = PyList::empty(py);
        for record in records {
            let item = PyDict::new(py);
            item.set_item("event_type", record.type_name)?;
            item.set_item("handler", record.handler)?;
            item.set_item("calls", record.calls)?;
            item.set_item("failures", record.failures)?;
            item.set_item("timed_calls", record.timed)?;
            item.set_item("total_ns", record.total_ns)?;
            list.append(item)?;
        }
        Ok(list)
    }

    /// Count one call timed by its caller (the general async path).
    fn _record(
        &self,
        event_type: &Bound<'_, PyType>,
        handler: &Bound<'_, PyAny>,
        elapsed: i64,
        failed: bool,
    ) -> PyResult<()> {
        if !self.metrics.enabled() {
            return Ok(());
        }
        let names = (
            errors::type_name(event_type)?,
            errors::describe_handler(handler)?,
        );
        let counter = self
            .metrics
            .lock()
            .counter(event_type, (&names.0, &names.1));
        counter.record(u64::try_from(elapsed).unwrap_or(0), failed);
        Ok(())
    }
}

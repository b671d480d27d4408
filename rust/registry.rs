//! The routing table: immutable registry snapshots and the per-snapshot MRO resolution cache.
//!
//! A `Snapshot` is never changed once published; the dispatcher replaces it whole
//! (copy-on-write) on every registration change. A dispatch in flight keeps the snapshot it
//! loaded, so handlers may (un)register freely and no Rust lock is held across Python calls.

use std::cmp::Reverse;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};
use pyo3::PyTraverseError;
use rustc_hash::FxHashMap as HashMap;

/// Resolved lists kept per snapshot; past this many event types the cache starts over.
const CACHE_LIMIT: usize = 4096;

/// One (class, handler) registration. `target` is the handler, or a weak reference to it.
///
/// A Python object (opaque; `Planned` in the async plans), so that every holder of one owns
/// its own reference and reports it to the GC: a registration kept only by a suspended
/// `dispatch_async` (a `once` handler it consumed, an unregistered one) is collectable.
#[pyclass(frozen, module = "domainbus.rust", name = "Planned")]
pub struct Registration {
    pub event_type: Py<PyType>,
    pub target: Py<PyAny>,
    pub priority: i64,
    pub seq: u64,
    pub once: bool,
    pub weak: bool,
    consumed: AtomicBool,
}

impl Registration {
    pub fn new(
        event_type: Py<PyType>,
        target: Py<PyAny>,
        priority: i64,
        seq: u64,
        once: bool,
        weak: bool,
    ) -> Self {
        Self {
            event_type,
            target,
            priority,
            seq,
            once,
            weak,
            consumed: AtomicBool::new(false),
        }
    }

    /// The handler, or None when it was held weakly and its target has been collected.
    pub fn live_handler<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let target = self.target.bind(py);
        if !self.weak {
            return Ok(Some(target.clone()));
        }
        let referent = target.call0()?;
        Ok((!referent.is_none()).then_some(referent))
    }

    /// The handler to call, borrowed when held strongly (no reference count change: the
    /// dispatch loops' hot path), else dereferenced into `slot`; None when it was collected.
    #[inline(always)]
    pub fn handler_in<'a, 'py>(
        &'a self,
        py: Python<'py>,
        slot: &'a mut Option<Bound<'py, PyAny>>,
    ) -> PyResult<Option<&'a Bound<'py, PyAny>>> {
        if !self.weak {
            return Ok(Some(self.target.bind(py)));
        }
        *slot = self.live_handler(py)?;
        Ok(slot.as_ref())
    }

    /// Claim a `once` registration: true for exactly one caller, in any thread.
    pub fn claim(&self) -> bool {
        self.consumed
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

#[pymethods]
impl Registration {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_type)?;
        visit.call(&self.target)
    }
}

/// A registration held by one owner (who reports it to the GC).
pub type Reg = Py<Registration>;

/// Resolved handlers of one concrete type, highest priority first, then oldest.
pub type Resolved = Arc<[Reg]>;

/// The registrations made for exactly one class, in registration order.
pub struct ClassEntry {
    pub event_type: Py<PyType>,
    pub regs: Vec<Reg>,
}

/// Keyed by the class object's address; the entry holds the class, so the address stays valid.
pub type Registry = HashMap<usize, Arc<ClassEntry>>;

struct CacheEntry {
    _event_type: Py<PyType>, // keeps the key's address from being reused while cached
    regs: Resolved,
}

/// Resolved lists by type address. A plain map behind a mutex, held only for one lookup or
/// insert (never across Python code, and nothing Python is dropped under it): the first
/// dispatch of a new class costs the same however many classes are cached.
type Cache = Mutex<HashMap<usize, CacheEntry>>;

pub struct Snapshot {
    pub registry: Registry,
    cache: Cache,
}

pub fn type_key(event_type: &Bound<'_, PyType>) -> usize {
    event_type.as_ptr() as usize
}

impl Snapshot {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            cache: Mutex::new(HashMap::default()),
        }
    }

    pub fn registrations(&self, event_type: &Bound<'_, PyType>) -> &[Reg] {
        self.registry
            .get(&type_key(event_type))
            .map_or(&[], |entry| entry.regs.as_slice())
    }

    /// The resolved list for `event_type`, computed along its `__mro__` on a cache miss.
    pub fn resolve(&self, event_type: &Bound<'_, PyType>) -> PyResult<Resolved> {
        let key = type_key(event_type);
        let cached = self.lock_cache().get(&key).map(|entry| entry.regs.clone());
        if let Some(regs) = cached {
            return Ok(regs);
        }
        let py = event_type.py();
        let mro = real_mro(event_type)?;
        let mut found: Vec<Reg> = Vec::new();
        for klass in mro.iter() {
            if let Some(entry) = self.registry.get(&(klass.as_ptr() as usize)) {
                found.extend(entry.regs.iter().map(|reg| reg.clone_ref(py)));
            }
        }
        found.sort_by_key(|reg| (Reverse(reg.get().priority), reg.get().seq));
        let resolved: Resolved = found.into();
        let entry = CacheEntry {
            _event_type: event_type.clone().unbind(),
            regs: resolved.clone(),
        };
        let dropped = {
            let mut cache = self.lock_cache();
            let full = cache.len() >= CACHE_LIMIT;
            let old = full.then(|| std::mem::take(&mut *cache));
            (old, cache.insert(key, entry))
        };
        drop(dropped); // outside the lock: releasing the classes may run Python code
        Ok(resolved)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<usize, CacheEntry>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A registry with `reg` appended to its class's list.
    pub fn with_added(&self, py: Python<'_>, reg: Reg) -> Registry {
        let key = type_key(reg.get().event_type.bind(py));
        let mut registry = self.registry.clone();
        let mut regs: Vec<Reg> = registry
            .get(&key)
            .map(|entry| entry.regs.iter().map(|r| r.clone_ref(py)).collect())
            .unwrap_or_default();
        let event_type = reg.get().event_type.clone_ref(py);
        regs.push(reg);
        registry.insert(key, Arc::new(ClassEntry { event_type, regs }));
        registry
    }

    /// A registry without `reg`, or None when this snapshot does not hold it.
    pub fn without(&self, py: Python<'_>, reg: &Reg) -> Option<Registry> {
        let key = type_key(reg.get().event_type.bind(py));
        let entry = self.registry.get(&key)?;
        let position = entry.regs.iter().position(|r| r.is(reg))?;
        let mut registry = self.registry.clone();
        let mut regs: Vec<Reg> = entry.regs.iter().map(|r| r.clone_ref(py)).collect();
        regs.remove(position);
        if regs.is_empty() {
            registry.remove(&key);
        } else {
            let event_type = entry.event_type.clone_ref(py);
            registry.insert(key, Arc::new(ClassEntry { event_type, regs }));
        }
        Some(registry)
    }

    /// Report every Python object this snapshot owns, each exactly once.
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for entry in self.registry.values() {
            visit.call(&entry.event_type)?;
            for reg in &entry.regs {
                visit.call(reg)?;
            }
        }
        // Held only briefly and never while Python code (so the GC) runs; if it were held,
        // the classes would merely stay uncollected this time.
        if let Ok(cache) = self.cache.try_lock() {
            for entry in cache.values() {
                visit.call(&entry._event_type)?;
                for reg in entry.regs.iter() {
                    visit.call(reg)?;
                }
            }
        }
        Ok(())
    }
}

/// The MRO the interpreter uses for `event_type` (its `tp_mro`), whatever a metaclass's own
/// `__mro__` attribute would say.
fn real_mro<'py>(event_type: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyTuple>> {
    let py = event_type.py();
    // SAFETY: the GIL is held and `event_type` is a live, ready type object; `tp_mro` is a
    // borrowed reference to a tuple (or NULL before PyType_Ready), taken over as a new one.
    let mro = unsafe {
        let mro = (*event_type.as_type_ptr()).tp_mro;
        Bound::from_borrowed_ptr_or_opt(py, mro)
    };
    match mro {
        Some(mro) => Ok(mro.cast_into::<PyTuple>()?),
        None => Ok(PyTuple::new(py, [event_type])?),
    }
}

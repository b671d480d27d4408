//! Event ids and timestamps, built without going through Python code.
//!
//! `new_event_id` returns a UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, a 12-bit counter
//! (method 1 of the RFC) that keeps ids of one process strictly increasing, and 62 random
//! bits. `utc_now` returns a timezone-aware UTC `datetime`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDateTime, PyType, PyTzInfo};
use pyo3::{intern, IntoPyObjectExt};

/// `unix_ms << 12 | counter` of the last id handed out in this process.
static LAST_STAMP: AtomicU64 = AtomicU64::new(0);
/// Bumped in a forked child, so thread-local generators reseed instead of repeating the parent.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static RNG: RefCell<(u64, Option<fastrand::Rng>)> = const { RefCell::new((0, None)) };
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The next `ms << 12 | counter`: now, or one more than the last stamp if the clock has not
/// moved on (a full counter carries into the millisecond, as the RFC allows).
fn next_stamp() -> u64 {
    let now = (since_epoch().as_millis() as u64 & 0xFFFF_FFFF_FFFF) << 12;
    let mut prev = LAST_STAMP.load(Ordering::Relaxed);
    loop {
        let next = if now > prev { now } else { prev + 1 };
        match LAST_STAMP.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => prev = actual,
        }
    }
}

fn random_u64() -> PyResult<u64> {
    let generation = FORK_GENERATION.load(Ordering::Relaxed);
    RNG.with(|cell| {
        let mut state = cell.borrow_mut();
        if state.0 != generation || state.1.is_none() {
            let mut seed = [0u8; 8];
            getrandom::fill(&mut seed)
                .map_err(|e| PyRuntimeError::new_err(format!("no OS randomness: {e}")))?;
            *state = (
                generation,
                Some(fastrand::Rng::with_seed(u64::from_le_bytes(seed))),
            );
        }
        Ok(state.1.as_mut().map_or(0, |rng| rng.u64(..)))
    })
}

/// The 128-bit value of a fresh UUIDv7.
pub fn uuid7_value() -> PyResult<u128> {
    let stamp = next_stamp();
    let ms = u128::from(stamp >> 12);
    let counter = u128::from(stamp & 0xFFF);
    let rand_b = u128::from(random_u64()? >> 2);
    Ok(ms << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b)
}

struct UuidParts {
    class: Py<PyType>,
    unknown_safety: Py<PyAny>,
}

static UUID_PARTS: PyOnceLock<UuidParts> = PyOnceLock::new();

/// Build a `uuid.UUID` the way msgspec does: allocate and fill its two slots directly,
/// skipping `UUID.__init__` (which parses its arguments in Python).
fn make_uuid(py: Python<'_>, value: u128) -> PyResult<Bound<'_, PyAny>> {
    let parts = UUID_PARTS.get_or_try_init(py, || -> PyResult<UuidParts> {
        let module = py.import("uuid")?;
        Ok(UuidParts {
            class: module.getattr("UUID")?.cast_into::<PyType>()?.unbind(),
            unknown_safety: module.getattr("SafeUUID")?.getattr("unknown")?.unbind(),
        })
    })?;
    let class = parts.class.bind(py);
    let int_value = value.into_bound_py_any(py)?;
    // SAFETY: `class` is a live type object (held by UUID_PARTS); `tp_alloc` is the allocator
    // every heap type has, and a NULL result is turned into the pending Python error.
    let raw = unsafe {
        let type_ptr = class.as_ptr().cast::<ffi::PyTypeObject>();
        let alloc = (*type_ptr).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        alloc(type_ptr, 0)
    };
    // SAFETY: `raw` is a new (owned) reference or NULL; from_owned_ptr_or_err handles both.
    let obj = unsafe { Bound::from_owned_ptr_or_err(py, raw)? };
    for (name, item) in [
        (intern!(py, "int"), int_value.as_ptr()),
        (intern!(py, "is_safe"), parts.unknown_safety.as_ptr()),
    ] {
        // SAFETY: all three pointers are live objects borrowed for the call. Generic setattr
        // goes through the slot descriptors, bypassing UUID.__setattr__ (which refuses writes).
        if unsafe { ffi::PyObject_GenericSetAttr(obj.as_ptr(), name.as_ptr(), item) } < 0 {
            return Err(PyErr::fetch(py));
        }
    }
    Ok(obj)
}

/// A new time-ordered event id (UUIDv7) as a `uuid.UUID`.
#[pyfunction]
pub fn new_event_id(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    make_uuid(py, uuid7_value()?)
}

/// Civil date from days since 1970-01-01 (H. Hinnant's `civil_from_days`, proleptic Gregorian).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// The current time as a timezone-aware UTC `datetime`.
#[pyfunction]
pub fn utc_now(py: Python<'_>) -> PyResult<Bound<'_, PyDateTime>> {
    let since = since_epoch();
    let (secs, micros) = (since.as_secs() as i64, since.subsec_micros());
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let in_day = secs.rem_euclid(86_400);
    let utc = PyTzInfo::utc(py)?;
    PyDateTime::new(
        py,
        year,
        month,
        day,
        (in_day / 3600) as u8,
        (in_day / 60 % 60) as u8,
        (in_day % 60) as u8,
        micros,
        Some(&utc.to_owned()),
    )
}

/// Called in a forked child (registered with `os.register_at_fork`): reseed the generators.
#[pyfunction]
pub fn _after_fork() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}

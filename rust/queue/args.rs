//! Argument checks and the exceptions of `BatchQueue`, with the messages of
//! `domainbus.pure.queue` character for character.

use std::time::{Duration, Instant};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyFloat, PyInt, PyType};

/// Upper bound of `capacity` and `batch_size` (the ring buffer is allocated up front).
pub const MAX_SIZE: usize = 1 << 24;

static QUEUE_CLOSED: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static QUEUE_FULL: PyOnceLock<Py<PyType>> = PyOnceLock::new();

pub fn type_name(value: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(value.get_type().qualname()?.to_string())
}

fn is_int(value: &Bound<'_, PyAny>) -> bool {
    value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>()
}

pub fn size(name: &str, value: &Bound<'_, PyAny>) -> PyResult<usize> {
    if !is_int(value) {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not {}",
            type_name(value)?
        )));
    }
    match value.extract::<usize>() {
        Ok(size) if (1..=MAX_SIZE).contains(&size) => Ok(size),
        _ => Err(PyValueError::new_err(format!(
            "{name} must be from 1 to {MAX_SIZE}, not {}",
            value.str()?
        ))),
    }
}

pub fn flag(name: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    match value.cast::<PyBool>() {
        Ok(flag) => Ok(flag.is_true()),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{name} must be a bool, not {}",
            type_name(value)?
        ))),
    }
}

/// The time left before `deadline`, cut to `slice` (the longest wait between signal checks);
/// `None` once the deadline has passed.
pub fn next_wait(deadline: Option<Instant>, slice: Duration) -> Option<Duration> {
    match deadline {
        None => Some(slice),
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            (!left.is_zero()).then(|| left.min(slice))
        }
    }
}

/// When a wait must give up: `None` waits for ever (no timeout, or one too large to matter).
pub fn deadline(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Instant>> {
    let Some(timeout) = timeout.filter(|t| !t.is_none()) else {
        return Ok(None);
    };
    if !(is_int(timeout) || timeout.is_instance_of::<PyFloat>()) {
        return Err(PyTypeError::new_err(format!(
            "timeout must be a number or None, not {}",
            type_name(timeout)?
        )));
    }
    let seconds: f64 = timeout.extract()?;
    if seconds.is_nan() || seconds < 0.0 {
        return Err(PyValueError::new_err(format!(
            "timeout must be a non-negative number, not {}",
            timeout.repr()?
        )));
    }
    Ok(Duration::try_from_secs_f64(seconds)
        .ok()
        .and_then(|wait| Instant::now().checked_add(wait)))
}

pub fn max_events(value: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(u64::MAX);
    };
    if !is_int(value) {
        return Err(PyTypeError::new_err(format!(
            "max_events must be an int or None, not {}",
            type_name(value)?
        )));
    }
    if value.lt(0)? {
        return Err(PyValueError::new_err(format!(
            "max_events must be >= 0, not {}",
            value.str()?
        )));
    }
    Ok(value.extract::<u64>().unwrap_or(u64::MAX))
}

fn suffixed(message: String, accepted: Option<u64>) -> String {
    match accepted {
        None => message,
        Some(n) => format!("{message}; put_many() put {n} event(s) before"),
    }
}

fn build(class: &Bound<'_, PyType>, message: String, accepted: Option<u64>) -> PyErr {
    let make = || -> PyResult<PyErr> {
        let exc = class.call1((suffixed(message, accepted),))?;
        if let Some(n) = accepted {
            exc.setattr("accepted", n)?;
        }
        Ok(PyErr::from_value(exc))
    };
    make().unwrap_or_else(|err| err)
}

/// `domainbus.QueueClosed`: the class of `domainbus.errors`, shared with the pure backend.
pub fn closed_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    QUEUE_CLOSED.import(py, "domainbus.errors", "QueueClosed")
}

/// The standard library's `queue.Full`.
pub fn full_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    QUEUE_FULL.import(py, "queue", "Full")
}

pub fn closed(py: Python<'_>, accepted: Option<u64>) -> PyErr {
    match closed_type(py) {
        Ok(class) => build(class, "the BatchQueue is stopped".into(), accepted),
        Err(err) => err,
    }
}

pub fn full(py: Python<'_>, capacity: usize, own_consumer: bool, accepted: Option<u64>) -> PyErr {
    let mut message = format!("the BatchQueue is full (capacity {capacity})");
    if own_consumer {
        message.push_str(
            " and put() was called by the thread consuming it, which cannot wait for itself",
        );
    }
    match full_type(py) {
        Ok(class) => build(class, message, accepted),
        Err(err) => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_wait_is_cut_to_the_slice_and_ends_at_the_deadline() {
        let slice = Duration::from_millis(50);
        assert_eq!(next_wait(None, slice), Some(slice));
        let far = Instant::now() + Duration::from_secs(60);
        assert_eq!(next_wait(Some(far), slice), Some(slice));
        let near = Instant::now() + Duration::from_millis(5);
        assert!(next_wait(Some(near), slice).is_some_and(|wait| wait <= Duration::from_millis(5)));
        let past = Instant::now() - Duration::from_millis(1);
        assert_eq!(next_wait(Some(past), slice), None);
    }

    #[test]
    fn suffix_names_what_put_many_accepted() {
        assert_eq!(suffixed("full".into(), None), "full");
        assert_eq!(
            suffixed("full".into(), Some(3)),
            "full; put_many() put 3 event(s) before"
        );
    }
}

//! Calling an `on_error` callback the way the pure backend's `except` block does: the exception
//! carries its traceback and is the one "being handled" (`sys.exc_info()`, `logging.exception`)
//! while the callback runs, so an exception the callback raises chains to it (`__context__`).

use pyo3::ffi;
use pyo3::prelude::*;

use crate::unwind;

/// Makes `exception` the handled exception until dropped, then restores the previous one.
pub struct Handling {
    previous: *mut ffi::PyObject,
}

impl Handling {
    pub fn enter(exception: &Bound<'_, PyAny>) -> Self {
        // SAFETY: the GIL is held; GetHandledException returns a new reference (or NULL) and
        // SetHandledException only borrows its argument.
        unsafe {
            let previous = ffi::PyErr_GetHandledException();
            ffi::PyErr_SetHandledException(exception.as_ptr());
            Self { previous }
        }
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        // SAFETY: the GIL is held (the guard never outlives the call that made it);
        // SetHandledException borrows `previous`, whose reference we then release.
        unsafe {
            ffi::PyErr_SetHandledException(self.previous);
            if !self.previous.is_null() {
                ffi::Py_DECREF(self.previous);
            }
        }
    }
}

/// `callback(exc, event, handler)` with `exc` (traceback attached) being handled.
pub fn call_on_error<'py>(
    callback: &Bound<'py, PyAny>,
    err: PyErr,
    event: &Bound<'py, PyAny>,
    handler: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callback.py();
    let exception = err.into_value(py).into_bound(py).into_any();
    call_handling(callback, &exception, event, handler)
}

/// `callback(exception, event, handler)` with `exception` being handled.
pub fn call_handling<'py>(
    callback: &Bound<'py, PyAny>,
    exception: &Bound<'py, PyAny>,
    event: &Bound<'py, PyAny>,
    handler: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let _handling = Handling::enter(exception);
    unwind::call(callback, &[exception, event, handler])
}

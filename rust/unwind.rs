//! Calls into Python from Rust frames that CPython may end at interpreter exit.
//!
//! Before 3.14, a thread that wants the GIL back after finalization has begun (a daemon thread
//! still dispatching, the queue's consumer after an interrupted `stop()`) is ended by CPython
//! with `pthread_exit`, a forced unwind (python/cpython#87135). Through PyO3's trampolines that
//! unwind aborts the process ("FATAL: exception not rethrown": their `catch_unwind` catches it
//! and cannot resume it), and through a call declared `extern "C"` (cannot unwind) it aborts too.
//!
//! So every call of ours through which Python code runs or the GIL is taken again is declared
//! `"C-unwind"` here and made under a `HangAtExit` guard. The guard's cleanup runs only when
//! something other than a Rust panic unwinds through it, and then parks the thread for ever,
//! as CPython 3.14 does with such threads itself. The thread holds no GIL at that point (it was
//! waiting for it) and no destructor of ours runs without the GIL; the process exits around it.

use std::os::raw::c_int;
use std::ptr;

use pyo3::ffi;
use pyo3::prelude::*;

// The same CPython functions pyo3-ffi declares, with the ABI that lets a forced unwind through.
#[allow(clashing_extern_declarations)]
extern "C-unwind" {
    fn PyObject_Vectorcall(
        callable: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargsf: usize,
        kwnames: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;
    fn PyIter_Next(iter: *mut ffi::PyObject) -> *mut ffi::PyObject;
    fn PyIter_Send(
        iter: *mut ffi::PyObject,
        arg: *mut ffi::PyObject,
        presult: *mut *mut ffi::PyObject,
    ) -> ffi::PySendResult;
    fn PyObject_RichCompare(
        a: *mut ffi::PyObject,
        b: *mut ffi::PyObject,
        op: c_int,
    ) -> *mut ffi::PyObject;
    fn PyObject_IsTrue(value: *mut ffi::PyObject) -> c_int;
    fn PyErr_CheckSignals() -> c_int;
}

type VectorcallFn = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    usize,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;
type UnaryFn = unsafe extern "C-unwind" fn(*mut ffi::PyObject) -> *mut ffi::PyObject;
type SendFn = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *mut ffi::PyObject,
    *mut *mut ffi::PyObject,
) -> ffi::PySendResult;
type CompareFn = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *mut ffi::PyObject,
    c_int,
) -> *mut ffi::PyObject;
type TruthFn = unsafe extern "C-unwind" fn(*mut ffi::PyObject) -> c_int;
type SignalsFn = unsafe extern "C-unwind" fn() -> c_int;

/// The function, called through a pointer the optimizer cannot see through. With LTO, our
/// "C-unwind" declarations merge with pyo3-ffi's "C" ones (same symbols), and a direct call
/// would be taken for one that cannot unwind, leaving the guard out; an indirect call through
/// a "C-unwind" pointer keeps it.
#[inline(always)]
fn opaque<F: Copy>(function: F) -> F {
    std::hint::black_box(function)
}

/// `PY_VECTORCALL_ARGUMENTS_OFFSET`: the callee may use `args[-1]` (saves a copy for methods).
const ARGUMENTS_OFFSET: usize = 1 << (usize::BITS - 1);

/// Parks the thread for ever when dropped by an unwind that is not a Rust panic.
struct HangAtExit;

impl Drop for HangAtExit {
    #[cold]
    #[inline(never)]
    fn drop(&mut self) {
        // Only reached while unwinding: the normal path forgets the guard.
        if std::thread::panicking() {
            return; // a Rust panic: PyO3 turns it into PanicException as usual
        }
        loop {
            std::thread::park();
        }
    }
}

/// Run `f` under the guard (see the module documentation).
#[inline(always)]
pub fn guarded<R>(f: impl FnOnce() -> R) -> R {
    let guard = HangAtExit;
    let result = f();
    std::mem::forget(guard);
    result
}

/// `PyObject_Vectorcall` itself, under the guard: for callers that build their own argument
/// arrays and keyword names (`Dispatcher.execute` with its dependencies).
///
/// # Safety
/// As for `PyObject_Vectorcall`: the GIL is held, `args` points at `nargsf`'s count of live
/// objects followed by one per name in `kwnames` (a tuple of str, or NULL), and the slot before
/// `args` is writable when `nargsf` has `PY_VECTORCALL_ARGUMENTS_OFFSET`.
#[inline(always)]
pub unsafe fn vectorcall(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the caller upholds PyObject_Vectorcall's contract (above).
    guarded(|| unsafe {
        opaque(PyObject_Vectorcall as VectorcallFn)(callable, args, nargsf, kwnames)
    })
}

/// `callable(*args)` with one vectorcall (at most 3 arguments).
#[inline(always)]
pub fn call<'py>(
    callable: &Bound<'py, PyAny>,
    args: &[&Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let mut slots = [ptr::null_mut::<ffi::PyObject>(); 4];
    let count = args.len().min(3);
    for (slot, arg) in slots[1..].iter_mut().zip(&args[..count]) {
        *slot = arg.as_ptr();
    }
    // SAFETY: the GIL is held; `slots[1..=count]` are borrowed live objects that outlive the
    // call, `slots[0]` is the scratch slot PY_VECTORCALL_ARGUMENTS_OFFSET allows the callee to
    // use; the result is a new reference or NULL with an exception set.
    let result = guarded(|| unsafe {
        opaque(PyObject_Vectorcall as VectorcallFn)(
            callable.as_ptr(),
            slots.as_ptr().add(1),
            count | ARGUMENTS_OFFSET,
            ptr::null_mut(),
        )
    });
    // SAFETY: `result` is an owned reference, or NULL with the error set.
    unsafe { Bound::from_owned_ptr_or_err(py, result) }
}

/// `callable(arg)`: the handler call of the dispatch loop.
#[inline(always)]
pub fn call1<'py>(
    callable: &Bound<'py, PyAny>,
    arg: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    call(callable, &[arg])
}

/// `getattr(object, name)(*args)`.
pub fn call_method<'py>(
    object: &Bound<'py, PyAny>,
    name: &Bound<'py, pyo3::types::PyString>,
    args: &[&Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    call(&object.getattr(name)?, args)
}

/// `next(iterator)`: None once exhausted.
#[inline(always)]
pub fn next<'py>(iterator: &Bound<'py, PyAny>) -> Option<PyResult<Bound<'py, PyAny>>> {
    let py = iterator.py();
    // SAFETY: the GIL is held and `iterator` is a live iterator; a new reference or NULL.
    let item = guarded(|| unsafe { opaque(PyIter_Next as UnaryFn)(iterator.as_ptr()) });
    if item.is_null() {
        return PyErr::take(py).map(Err);
    }
    // SAFETY: non-NULL: an owned reference.
    Some(Ok(unsafe { Bound::from_owned_ptr(py, item) }))
}

/// `PyIter_Send(iterator, value)`: the status and the value yielded or returned (owned).
pub fn send(
    iterator: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
) -> (ffi::PySendResult, *mut ffi::PyObject) {
    let mut result: *mut ffi::PyObject = ptr::null_mut();
    // SAFETY: the GIL is held, both objects are live; `result` receives a new reference (or
    // NULL with an exception set), which the caller takes over.
    let status = guarded(|| unsafe {
        opaque(PyIter_Send as SendFn)(iterator.as_ptr(), value.as_ptr(), &mut result)
    });
    (status, result)
}

/// `bool(a == b)`, as Python's `==` computes it (no identity shortcut).
pub fn equal(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = a.py();
    // SAFETY: the GIL is held, both objects are live; a new reference or NULL.
    let result = guarded(|| unsafe {
        opaque(PyObject_RichCompare as CompareFn)(a.as_ptr(), b.as_ptr(), ffi::Py_EQ)
    });
    // SAFETY: an owned reference, or NULL with the error set.
    let result = unsafe { Bound::from_owned_ptr_or_err(py, result) }?;
    // SAFETY: `result` is live; -1 means an error is set.
    match guarded(|| unsafe { opaque(PyObject_IsTrue as TruthFn)(result.as_ptr()) }) {
        -1 => Err(PyErr::fetch(py)),
        truth => Ok(truth != 0),
    }
}

/// Run pending signal handlers (KeyboardInterrupt for Ctrl-C) on the main thread.
pub fn check_signals(py: Python<'_>) -> PyResult<()> {
    // SAFETY: the GIL is held; -1 means a handler raised and the error is set.
    match guarded(|| unsafe { opaque(PyErr_CheckSignals as SignalsFn)() }) {
        -1 => Err(PyErr::fetch(py)),
        _ => Ok(()),
    }
}

/// `py.detach(f)`: run `f` without the GIL. Taking the GIL back may end the thread at exit.
pub fn detach<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    guarded(|| py.detach(f))
}

/// Let other threads take the GIL, as the eval loop does every switch interval.
pub fn yield_gil(py: Python<'_>) {
    detach(py, || ());
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::types::PyList;

    #[test]
    fn guarded_returns_the_value_and_lets_panics_through() {
        assert_eq!(guarded(|| 41 + 1), 42);
        let caught = std::panic::catch_unwind(|| guarded(|| panic!("a Rust panic")));
        assert!(caught.is_err()); // not parked: a Rust panic unwinds as usual
    }

    #[test]
    fn calls_iterates_and_compares_like_python() {
        Python::initialize();
        Python::attach(|py| {
            let list = PyList::empty(py);
            let append = list.getattr("append").unwrap();
            let item = 7i64.into_pyobject(py).unwrap().into_any();
            call1(&append, &item).unwrap();
            call(&append, &[&item]).unwrap();
            assert_eq!(list.len(), 2);
            let iterator = list.try_iter().unwrap().into_any();
            assert!(next(&iterator).is_some_and(|item| item.is_ok()));
            assert!(next(&iterator).is_some());
            assert!(next(&iterator).is_none());
            assert!(equal(&item, &7i64.into_pyobject(py).unwrap().into_any()).unwrap());
            let error = call1(&item, &item).unwrap_err(); // int is not callable
            assert!(error.is_instance_of::<pyo3::exceptions::PyTypeError>(py));
            check_signals(py).unwrap();
            yield_gil(py);
        });
    }
}

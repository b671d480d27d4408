//! Process lifecycle of every `BatchQueue`: after `os.fork()` each queue of the child is
//! reset, and at interpreter exit each one is stopped (started queues) and checked for
//! undispatched events. The hooks are installed with the first queue, like the pure backend's.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::IntoPyDict;
use pyo3::wrap_pyfunction;

/// A `weakref.WeakSet` of every live queue.
static LIVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Remember `queue` for the fork and exit hooks (installed exactly once, with the first queue).
pub fn track(queue: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = queue.py();
    let live = LIVE.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        let live = py.import("weakref")?.getattr("WeakSet")?.call0()?;
        let after_fork = wrap_pyfunction!(_batch_queues_after_fork, py)?;
        let kwargs = [("after_in_child", after_fork)].into_py_dict(py)?;
        py.import("os")?
            .call_method("register_at_fork", (), Some(&kwargs))?;
        py.import("atexit")?
            .call_method1("register", (wrap_pyfunction!(_batch_queues_at_exit, py)?,))?;
        Ok(live.unbind())
    })?;
    live.bind(py).call_method1("add", (queue,)).map(drop)
}

/// Call `method` on every live queue (a snapshot: the set may change meanwhile).
fn each_queue(py: Python<'_>, method: &str) -> PyResult<()> {
    let Some(live) = LIVE.get(py) else {
        return Ok(());
    };
    let queues = live.bind(py).try_iter()?.collect::<PyResult<Vec<_>>>()?;
    for queue in queues {
        queue.call_method0(method)?;
    }
    Ok(())
}

#[pyfunction]
fn _batch_queues_after_fork(py: Python<'_>) -> PyResult<()> {
    each_queue(py, "_after_fork")
}

/// Rule 6 for every queue: each is stopped and checked on its own, so one that raises (a
/// warning turned into an error, Ctrl-C during its drain) is reported and the others still
/// get their turn.
#[pyfunction]
fn _batch_queues_at_exit(py: Python<'_>) -> PyResult<()> {
    let Some(live) = LIVE.get(py) else {
        return Ok(());
    };
    let queues = live.bind(py).try_iter()?.collect::<PyResult<Vec<_>>>()?;
    for queue in queues {
        if let Err(err) = queue.call_method0("_at_exit") {
            py.import("traceback")?
                .call_method1("print_exception", (err.into_value(py),))?;
        }
    }
    Ok(())
}

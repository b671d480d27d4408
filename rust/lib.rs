//! `domainbus._core`: the Rust hot path of domainbus.
//!
//! - `registry`: immutable registry snapshots and the MRO resolution cache (the routing table);
//! - `dispatcher`: the `Dispatcher` class and its registry API;
//! - `commands`: `execute` and the command table, dependencies and middleware;
//! - `dispatch_loop`: the dispatch loop (batches, nested modes, error policies);
//! - `nested`: per-thread FIFOs of `nested="queue"` dispatchers;
//! - `errors`: error notes and the ExceptionGroup of "collect";
//! - `async_fast_path`: the hand-written coroutine of sequential `dispatch_async` (the fast path);
//! - `async_plan`: the plan/take primitives of the general async path (`domainbus._async`);
//! - `ids`: UUIDv7 event ids and UTC timestamps;
//! - `partitions`: a batch of events split by the partition of their key (`domainbus.redis`);
//! - `methods`: the hand-written C methods (`dispatch`, `execute`) and how they are installed;
//! - `metrics`: per-handler counters (calls, failures, sampled time), when switched on;
//! - `queue`: the `BatchQueue` (lock-free batching queue feeding the dispatch loop).

use pyo3::prelude::*;

mod async_fast_path;
mod async_plan;
mod commands;
mod dispatch_loop;
mod dispatcher;
mod errors;
mod handled;
mod ids;
mod methods;
mod metrics;
mod nested;
mod partitions;
mod queue;
mod registry;
mod unwind;

const SUBINTERPRETER: &str = "domainbus._core cannot be imported in a sub-interpreter: its \
classes and the exceptions it raises belong to the main interpreter. Use domainbus.pure there \
(`import domainbus` falls back to it by itself).";

/// True in the main interpreter (the only one this extension supports).
fn in_main_interpreter() -> bool {
    // SAFETY: called with the GIL held (module initialisation); both calls only read state.
    unsafe { pyo3::ffi::PyInterpreterState_Get() == pyo3::ffi::PyInterpreterState_Main() }
}

#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    if !in_main_interpreter() {
        return Err(pyo3::exceptions::PyImportError::new_err(SUBINTERPRETER));
    }
    m.add_class::<dispatcher::Dispatcher>()?;
    commands::install_execute(m.py())?; // Dispatcher.execute as a METH_O method
    dispatch_loop::install_dispatch(m.py())?; // Dispatcher.dispatch as a fastcall method
    m.add_class::<dispatcher::HandlerDecorator>()?;
    m.add_class::<registry::Registration>()?;
    m.add_class::<async_fast_path::AsyncDispatch>()?;
    m.add_class::<queue::BatchQueue>()?;
    m.add_function(wrap_pyfunction!(ids::new_event_id, m)?)?;
    m.add_function(wrap_pyfunction!(ids::utc_now, m)?)?;
    m.add_function(wrap_pyfunction!(ids::_after_fork, m)?)?;
    m.add_function(wrap_pyfunction!(partitions::group_by_partition, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

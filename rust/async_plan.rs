//! What `dispatch_async` needs from the Rust backend: the resolved plan of an event type and a
//! way to take each handler (weak dereference, `once` claim). The awaiting itself happens in
//! `domainbus._async`, shared with the pure backend, so both follow one set of async rules.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyTuple, PyType};

use crate::dispatcher::Dispatcher;
use crate::registry::Reg;

impl Dispatcher {
    /// The registrations an event of `event_type` goes to now, as `Planned` objects.
    pub(crate) fn plan<'py>(
        &self,
        event_type: &Bound<'py, PyType>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = event_type.py();
        let resolved = self.state.load().resolve(event_type)?;
        let planned = resolved
            .iter()
            .map(|reg| reg.clone_ref(py))
            .collect::<Vec<_>>();
        PyTuple::new(py, planned)
    }

    /// The handler to call for a planned registration, or None (weak target gone, or a
    /// `once` handler already claimed).
    pub(crate) fn take<'py>(
        &self,
        py: Python<'py>,
        reg: &Reg,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(handler) = reg.get().live_handler(py)? else {
            return Ok(None);
        };
        if reg.get().once && !self.consume(py, reg)? {
            return Ok(None);
        }
        Ok(Some(handler))
    }
}

/// `domainbus._async.dispatch_async(dispatcher, events, batch=..., concurrent=...)`: the
/// coroutine `dispatch_async` and `dispatch_batch_async` return.
pub(crate) fn async_driver<'py>(
    dispatcher: &Bound<'py, Dispatcher>,
    events: Bound<'py, PyAny>,
    batch: bool,
    concurrent: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = dispatcher.py();
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "batch"), PyBool::new(py, batch))?;
    kwargs.set_item(intern!(py, "concurrent"), PyBool::new(py, concurrent))?;
    py.import(intern!(py, "domainbus._async"))?
        .getattr(intern!(py, "dispatch_async"))?
        .call((dispatcher, events), Some(&kwargs))
}

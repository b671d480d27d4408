//! Methods written by hand as C functions (`dispatch`, `execute`) and put on the Dispatcher
//! class at import, where the generated argument parsing would cost more than the call.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::dispatcher::Dispatcher;

/// A static `PyMethodDef`.
pub(crate) struct MethodDef(pub(crate) ffi::PyMethodDef);
// SAFETY: the definition is immutable static data (pointers to static C strings and a
// function); CPython only reads it.
unsafe impl Sync for MethodDef {}

/// Put `def` on the Dispatcher class as the method `name` (called once, at module import).
pub(crate) fn install_method(
    py: Python<'_>,
    def: &'static MethodDef,
    name: &Bound<'_, PyString>,
) -> PyResult<()> {
    let class = py.get_type::<Dispatcher>();
    // SAFETY: `class` is the live Dispatcher type; `def` is static, so it outlives the
    // descriptor (CPython never writes through the pointer).
    let descriptor = unsafe {
        let raw = ffi::PyDescr_NewMethod(class.as_type_ptr(), std::ptr::addr_of!(def.0).cast_mut());
        Bound::from_owned_ptr_or_err(py, raw)?
    };
    class.setattr(name, descriptor)
}

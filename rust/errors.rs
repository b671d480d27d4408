//! Error policy: the notes added to handler exceptions, and the ExceptionGroup of "collect".
//! The texts match `domainbus.pure` character for character (the parity tests compare them).

use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyType};

/// What the dispatcher does with a handler's `Exception`.
pub enum Policy {
    Raise,
    Collect,
    Callback(Py<PyAny>),
}

impl Policy {
    pub fn from_py(value: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(text) = value.cast::<PyString>() {
            match text.to_str()? {
                "raise" => return Ok(Self::Raise),
                "collect" => return Ok(Self::Collect),
                _ => {}
            }
        } else if value.is_callable() {
            return Ok(Self::Callback(value.clone().unbind()));
        }
        Err(PyTypeError::new_err(format!(
            "on_error must be 'raise', 'collect' or a callable, not {}",
            value.repr()?
        )))
    }

    pub fn to_py(&self, py: Python<'_>) -> Py<PyAny> {
        match self {
            Self::Raise => intern!(py, "raise").clone().into_any().unbind(),
            Self::Collect => intern!(py, "collect").clone().into_any().unbind(),
            Self::Callback(callback) => callback.clone_ref(py),
        }
    }
}

/// `module.qualname` of a handler, or its repr when it has no qualified name.
pub fn describe_handler(handler: &Bound<'_, PyAny>) -> PyResult<String> {
    let py = handler.py();
    let Some(name) = handler
        .getattr(intern!(py, "__qualname__"))
        .ok()
        .filter(|name| name.is_instance_of::<PyString>())
    else {
        return Ok(handler.repr()?.to_string());
    };
    match handler.getattr(intern!(py, "__module__")) {
        Ok(module) if module.is_instance_of::<PyString>() => Ok(format!("{module}.{name}")),
        _ => Ok(name.to_string()),
    }
}

pub fn type_name(event_type: &Bound<'_, PyType>) -> PyResult<String> {
    Ok(event_type
        .getattr(intern!(event_type.py(), "__qualname__"))?
        .to_string())
}

pub fn add_note(py: Python<'_>, err: &PyErr, note: &str) -> PyResult<()> {
    err.value(py)
        .call_method1(intern!(py, "add_note"), (note,))
        .map(drop)
}

pub fn failure_note(
    handler: &Bound<'_, PyAny>,
    event_type: &Bound<'_, PyType>,
    index: Option<usize>,
) -> PyResult<String> {
    let mut note = format!(
        "domainbus: raised by handler {} for {}",
        describe_handler(handler)?,
        type_name(event_type)?
    );
    if let Some(index) = index {
        note.push_str(&format!(" at batch index {index}"));
    }
    Ok(note)
}

/// Record on the exception which event of a batch it escaped from: `exc.batch_index` (rule 8,
/// `domainbus._notes.set_batch_index`). An exception that cannot take the attribute (a type
/// with `__slots__` and no `__dict__`) is left as is; a relay then treats the whole batch as
/// not delivered (rule 12). Never fails.
pub fn set_batch_index(py: Python<'_>, err: &PyErr, index: usize) {
    drop(err.value(py).setattr(intern!(py, "batch_index"), index));
}

/// `set_batch_index` on the error of a result, when the dispatch is a batch (`index` is Some).
pub fn at_batch_index<T>(py: Python<'_>, result: PyResult<T>, index: Option<usize>) -> PyResult<T> {
    if let (Err(err), Some(index)) = (&result, index) {
        set_batch_index(py, err, index);
    }
    result
}

pub fn is_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyException>(py)
}

/// The ExceptionGroup raised at the end of a "collect" dispatch.
pub fn exception_group(py: Python<'_>, failures: Vec<PyErr>) -> PyErr {
    let count = failures.len();
    let build = || -> PyResult<PyErr> {
        let list = PyList::empty(py);
        for err in failures {
            list.append(err.into_value(py))?;
        }
        let group = py
            .import(intern!(py, "builtins"))?
            .getattr(intern!(py, "ExceptionGroup"))?
            .call1((format!("domainbus: {count} handler(s) failed"), list))?;
        Ok(PyErr::from_value(group))
    };
    build().unwrap_or_else(|err| err)
}

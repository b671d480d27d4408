//! `group_by_partition`: a batch of events split by the partition of their key, for
//! `domainbus.redis` (its publisher is not backend-specific: `domainbus.redis.entries` holds
//! the Python twin, which is the rule, and the tests check that both give the same groups).
//!
//! The partition of a key is `zlib.crc32(key_bytes(key)) % partitions`. Keys of the exact
//! types str, bytes, int (within i64) and uuid.UUID are turned into bytes here, as `key_bytes`
//! does; any other key (subclasses, bool, big ints, str with lone surrogates) is handed to the
//! Python `key_bytes` given by the caller, so its result or its error is the Python one.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyInt, PyList, PyString, PyType};

/// CRC-32 (IEEE 802.3, reflected, as zlib), one table lookup a byte.
const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
}

/// `zlib.crc32(data)`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &byte in data {
        c = CRC_TABLE[((c ^ u32::from(byte)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

static UUID_CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn uuid_class(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    UUID_CLASS
        .get_or_try_init(py, || -> PyResult<Py<PyType>> {
            Ok(py
                .import("uuid")?
                .getattr("UUID")?
                .cast_into::<PyType>()?
                .unbind())
        })
        .map(|class| class.bind(py))
}

/// The CRC-32 of `key_bytes(key)`: computed here for the exact types, by `key_bytes` else.
fn key_crc(
    key: &Bound<'_, PyAny>,
    uuid: &Bound<'_, PyType>,
    key_bytes: &Bound<'_, PyAny>,
) -> PyResult<u32> {
    if let Ok(text) = key.cast_exact::<PyString>() {
        if let Ok(utf8) = text.to_str() {
            return Ok(crc32(utf8.as_bytes()));
        }
    } else if let Ok(data) = key.cast_exact::<PyBytes>() {
        return Ok(crc32(data.as_bytes()));
    } else if let Ok(int) = key.cast_exact::<PyInt>() {
        if let Ok(value) = int.extract::<i64>() {
            return Ok(crc32(decimal(value, &mut [0u8; 20]).as_bytes()));
        }
    } else if key.get_type().is(uuid) {
        let value: u128 = key.getattr(intern!(key.py(), "int"))?.extract()?;
        return Ok(crc32(&value.to_be_bytes()));
    }
    let data = key_bytes.call1((key,))?;
    match data.cast::<PyBytes>() {
        Ok(bytes) => Ok(crc32(bytes.as_bytes())),
        Err(_) => Err(PyTypeError::new_err("key_bytes must return bytes")),
    }
}

/// `str(value)` (its decimal digits), written into `buffer`.
fn decimal(value: i64, buffer: &mut [u8; 20]) -> &str {
    let mut digits = value.unsigned_abs();
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (digits % 10) as u8;
        digits /= 10;
        if digits == 0 {
            break;
        }
    }
    if value < 0 {
        at -= 1;
        buffer[at] = b'-';
    }
    // Only ASCII digits and '-' were written.
    std::str::from_utf8(&buffer[at..]).unwrap_or_default()
}

/// The key of one event: `key(event)`, or without `key` the event's `aggregate_id` when it
/// has one that is not None, else its `event_id` (`entries.default_key`). The attribute is
/// looked up by calling the builtin `getattr(event, "aggregate_id", None)`: it finds a missing
/// attribute without raising (so events keyed by their id stay fast) and has its exact rules.
fn key_of<'py>(
    event: &Bound<'py, PyAny>,
    key: Option<&Bound<'py, PyAny>>,
    getattr: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(key) = key {
        return key.call1((event,));
    }
    let py = event.py();
    let args = [
        event.as_ptr(),
        intern!(py, "aggregate_id").as_ptr(),
        py.None().as_ptr(),
    ];
    // SAFETY: `getattr` and the three arguments are live objects borrowed for the call;
    // vectorcall returns a new reference or NULL with an exception set.
    let found = unsafe {
        let raw =
            ffi::PyObject_Vectorcall(getattr.as_ptr(), args.as_ptr(), 3, std::ptr::null_mut());
        Bound::from_owned_ptr_or_err(py, raw)?
    };
    if found.is_none() {
        event.getattr(intern!(py, "event_id"))
    } else {
        Ok(found)
    }
}

/// `events` split into `partitions` lists by the partition of their key, in their order.
#[pyfunction]
#[pyo3(signature = (events, partitions, key_bytes, key=None))]
pub fn group_by_partition<'py>(
    events: &Bound<'py, PyList>,
    partitions: usize,
    key_bytes: &Bound<'py, PyAny>,
    key: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let py = events.py();
    if partitions == 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "partitions must be >= 1",
        ));
    }
    let groups: Vec<Bound<'py, PyList>> = (0..partitions).map(|_| PyList::empty(py)).collect();
    let uuid = uuid_class(py)?;
    let getattr = py.import("builtins")?.getattr("getattr")?;
    // `events` may change size while keys run Python code: index it, never hold a length.
    let mut index = 0;
    while index < events.len() {
        let event = events.get_item(index)?;
        let crc = key_crc(&key_of(&event, key, &getattr)?, uuid, key_bytes)?;
        let group = &groups[crc as usize % partitions];
        // SAFETY: both pointers are live (borrowed for the call); PyList_Append takes its
        // own reference to the item and reports failure by -1 with an exception set.
        if unsafe { ffi::PyList_Append(group.as_ptr(), event.as_ptr()) } < 0 {
            return Err(PyErr::fetch(py));
        }
        index += 1;
    }
    PyList::new(py, groups)
}

#[cfg(test)]
mod tests {
    use super::{crc32, decimal};

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"k0"), 0xE109_903F);
        assert_eq!(crc32("été".as_bytes()), 0x44D1_6CD4);
    }

    #[test]
    fn decimal_is_str_of_int() {
        for value in [0, 7, -7, 10, 1_000_000, i64::MAX, i64::MIN] {
            assert_eq!(decimal(value, &mut [0u8; 20]), value.to_string());
        }
    }
}

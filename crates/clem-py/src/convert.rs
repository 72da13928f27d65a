//! Python objects to JSON values and back, and the inputs built from them (messages, generation arguments).
//!
//! Written out rather than through serde so that every refusal names where in the input it happened
//! (`messages[2]['image'][0]`) and nesting is bounded: a Python object nested deeper than [`MAX_DEPTH`] is refused,
//! never recursed into until the stack runs out.

use clem_core::{GenArgs, Message};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// The deepest nesting of dicts and lists accepted from Python (selectors, messages, generation arguments).
pub const MAX_DEPTH: usize = 64;

/// A Python object as JSON: `None`, `bool`, `int` (64-bit), finite `float`, `str`, `dict` with `str` keys,
/// `list` or `tuple`. `path` names the object in errors.
pub fn to_json(obj: &Bound<'_, PyAny>, path: &str) -> PyResult<Value> {
    to_json_at(obj, path, 0)
}

fn to_json_at(obj: &Bound<'_, PyAny>, path: &str, depth: usize) -> PyResult<Value> {
    if obj.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: Python's bool is an int.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(PyValueError::new_err(format!("{path}: the integer {obj} does not fit in 64 bits")));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let x = f.value();
        return Number::from_f64(x)
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err(format!("{path}: {x} is not a finite number")));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_cow()?.into_owned()));
    }
    if depth >= MAX_DEPTH {
        return Err(PyValueError::new_err(format!("{path}: nested more than {MAX_DEPTH} levels deep")));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut map = Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(PyTypeError::new_err(format!("{path}: keys must be str, not {}", type_name(&k))));
            };
            let key = key.to_cow()?.into_owned();
            let value = to_json_at(&v, &format!("{path}[{key:?}]"), depth + 1)?;
            map.insert(key, value);
        }
        return Ok(Value::Object(map));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return items(l.iter(), path, depth);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return items(t.iter(), path, depth);
    }
    Err(PyTypeError::new_err(format!("{path}: {} cannot be read as JSON", type_name(obj))))
}

fn items<'py>(it: impl Iterator<Item = Bound<'py, PyAny>>, path: &str, depth: usize) -> PyResult<Value> {
    it.enumerate()
        .map(|(i, v)| to_json_at(&v, &format!("{path}[{i}]"), depth + 1))
        .collect::<PyResult<_>>()
        .map(Value::Array)
}

/// The name of an object's type, for messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// A JSON value as Python objects: dicts keep their key order.
pub fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(a) => {
            let list = PyList::empty(py);
            for v in a {
                list.append(to_py(py, v)?)?;
            }
            list.into_any()
        }
        Value::Object(m) => {
            let dict = PyDict::new(py);
            for (k, v) in m {
                dict.set_item(k, to_py(py, v)?)?;
            }
            dict.into_any()
        }
    })
}

/// A list of messages (`[{"role", "content", "image"?}, ...]`, as clemcore's games send them); `path` names the
/// list in errors.
pub fn messages(obj: &Bound<'_, PyAny>, path: &str) -> PyResult<Vec<Message>> {
    let list: Vec<Bound<'_, PyAny>> = if let Ok(l) = obj.cast::<PyList>() {
        l.iter().collect()
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        t.iter().collect()
    } else {
        return Err(PyTypeError::new_err(format!(
            "{path} must be a list of {{'role', 'content'}} dicts, not {}",
            type_name(obj)
        )));
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("{path}[{i}]");
            if !m.is_instance_of::<PyDict>() {
                return Err(PyTypeError::new_err(format!(
                    "{at} must be a {{'role', 'content'}} dict, not {}",
                    type_name(m)
                )));
            }
            let value = to_json(m, &at)?;
            serde_json::from_value::<Message>(value).map_err(|e| PyValueError::new_err(format!("{at}: {e}")))
        })
        .collect()
}

/// A batch: a list of message lists.
pub fn batch(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<Message>>> {
    let rows: Vec<Bound<'_, PyAny>> = if let Ok(l) = obj.cast::<PyList>() {
        l.iter().collect()
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        t.iter().collect()
    } else {
        return Err(PyTypeError::new_err(format!("batch must be a list of message lists, not {}", type_name(obj))));
    };
    rows.iter().enumerate().map(|(i, row)| messages(row, &format!("batch[{i}]"))).collect()
}

/// Checks one generation argument as it is set, so a bad value fails where it was given.
pub fn check_gen_arg(name: &str, value: &Value) -> PyResult<()> {
    match name {
        "temperature" => match value.as_f64() {
            Some(t) if t >= 0.0 => Ok(()),
            _ => Err(PyValueError::new_err(format!("temperature must be a number of at least 0, not {value}"))),
        },
        "max_tokens" => match value.as_u64() {
            Some(n) if u32::try_from(n).is_ok() => Ok(()),
            _ => {
                Err(PyValueError::new_err(format!("max_tokens must be an integer from 0 to {}, not {value}", u32::MAX)))
            }
        },
        "stop" => clem_core::message::stop_sequences(value)
            .map(|_| ())
            .ok_or_else(|| PyValueError::new_err(format!("stop must be a string or a list of strings, not {value}"))),
        _ => Ok(()),
    }
}

/// The arguments a generation runs with: clemcore's defaults (temperature 0.0, max_tokens 300) for what is unset;
/// `stop` as the stop sequences; every other key passes through to the backend.
pub fn gen_args(set: &Map<String, Value>) -> GenArgs {
    let mut args = GenArgs::default();
    for (k, v) in set {
        match k.as_str() {
            "temperature" => args.temperature = v.as_f64().unwrap_or(args.temperature),
            "max_tokens" => args.max_tokens = v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(args.max_tokens),
            // Stop sequences, honoured by every backend (checked as they were set).
            "stop" => args.stop = clem_core::message::stop_sequences(v).unwrap_or_default(),
            _ => {
                args.extra.insert(k.clone(), v.clone());
            }
        }
    }
    args
}

//! clemrs's errors as Python exceptions. The exception classes are Python classes (`clemrs.errors`: one
//! `ClemrsError` base, `ContextExceededError` with clemcore's attributes, `ModelConfigError`, `BackendError`), so
//! they pickle and subclass like any Python exception; this module builds their instances.

use clem_core::ModelError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

static CONTEXT_EXCEEDED: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static MODEL_CONFIG: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static BACKEND: PyOnceLock<Py<PyType>> = PyOnceLock::new();

const MODULE: &str = "clemrs.errors";

fn class<'py>(py: Python<'py>, cell: &'static PyOnceLock<Py<PyType>>, name: &str) -> PyResult<&'py Bound<'py, PyType>> {
    cell.import(py, MODULE, name)
}

/// An instance of `clemrs.errors.<name>(message, **attrs)` as an error to raise; a `RuntimeError` naming the
/// message if the class cannot be imported (the native module used without its package).
fn build(
    py: Python<'_>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    message: String,
    attrs: Option<&Bound<'_, PyDict>>,
) -> PyErr {
    match class(py, cell, name).and_then(|cls| cls.call((message.clone(),), attrs)) {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => PyRuntimeError::new_err(format!("{message} (clemrs.errors.{name} unavailable: {e})")),
    }
}

/// `ModelConfigError`: the registry, the selector, the entry or the key file cannot be used.
pub fn config_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    build(py, &MODEL_CONFIG, "ModelConfigError", message.into(), None)
}

/// `BackendError`: the backend failed (network, provider, inference).
pub fn backend_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    build(py, &BACKEND, "BackendError", message.into(), None)
}

/// The Python exception for a failed generation or load.
pub fn model_error(py: Python<'_>, error: ModelError) -> PyErr {
    let message = error.to_string();
    match error {
        ModelError::ContextExceeded(c) => {
            let attrs = PyDict::new(py);
            let set = || -> PyResult<()> {
                attrs.set_item("tokens_used", c.tokens_used)?;
                attrs.set_item("tokens_left", c.tokens_left)?;
                attrs.set_item("context_size", c.context_size)?;
                attrs.set_item("batch_index", c.batch_index)?;
                Ok(())
            };
            if let Err(e) = set() {
                return e;
            }
            build(py, &CONTEXT_EXCEEDED, "ContextExceededError", message, Some(&attrs))
        }
        ModelError::Config { .. } => config_error(py, message),
        // Backend, Cancelled (only seen when the caller cancelled, who raises its own error) and any new kind.
        _ => backend_error(py, message),
    }
}

//! `clemrs.ModelSpec`: clemcore's `ModelSpec` names (`from_name`, `from_dict`, `from_string`, `unify`, `to_dict`,
//! `to_string`, item and attribute access) over clem-core's `ModelSpec`. Unlike clemcore's, two specs are equal
//! only when their contents are.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use clem_core::ModelSpec;
use pyo3::basic::CompareOp;
use pyo3::exceptions::{PyAttributeError, PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString};
use serde_json::Value;

use crate::convert::{to_json, to_py, type_name};

/// A model specification: a (possibly partial) registry entry. Build one with `ModelSpec.from_name("x")`,
/// `ModelSpec.from_dict({...})`, `ModelSpec.from_string(selector)` or `ModelSpec(model_name="x", ...)`.
/// Keys read as attributes (`spec.model_name`) or items (`spec["backend"]`).
#[pyclass(module = "clemrs", name = "ModelSpec", frozen)]
#[derive(Clone)]
pub struct PySpec {
    pub spec: ModelSpec,
}

impl PySpec {
    pub fn new(spec: ModelSpec) -> Self {
        PySpec { spec }
    }
}

/// A spec from what callers pass: a `clemrs.ModelSpec`, a model name or selector string (a name, a JSON object
/// or a Python dict literal, as `clem -m` reads it), a dict, or any object with `to_dict()` (clemcore's
/// `ModelSpec`).
pub fn spec_from(obj: &Bound<'_, PyAny>) -> PyResult<ModelSpec> {
    if let Ok(s) = obj.cast::<PySpec>() {
        return Ok(s.get().spec.clone());
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return ModelSpec::parse_selector(&s.to_cow()?).map_err(|e| PyValueError::new_err(e.to_string()));
    }
    if obj.is_instance_of::<PyDict>() {
        return object(to_json(obj, "spec")?);
    }
    if obj.hasattr("to_dict")? {
        let dict = obj.call_method0("to_dict")?;
        return object(to_json(&dict, "spec.to_dict()")?);
    }
    Err(PyTypeError::new_err(format!(
        "a model spec is a name, a dict, a clemrs.ModelSpec or has to_dict(), not {}",
        type_name(obj)
    )))
}

fn object(value: Value) -> PyResult<ModelSpec> {
    match value {
        Value::Object(m) => Ok(ModelSpec::new(m)),
        _ => Err(PyTypeError::new_err("a model spec must be a dict")),
    }
}

#[pymethods]
impl PySpec {
    /// `ModelSpec(**keys)`, as clemcore's.
    #[new]
    #[pyo3(signature = (**keys))]
    fn py_new(keys: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        match keys {
            Some(d) => Ok(PySpec::new(object(to_json(d, "ModelSpec")?)?)),
            None => Ok(PySpec::new(ModelSpec::default())),
        }
    }

    /// A spec that only names a model: `{"model_name": name}`.
    #[staticmethod]
    fn from_name(name: &str) -> Self {
        PySpec::new(ModelSpec::from_name(name))
    }

    /// A spec from a dict (e.g. a registry entry).
    #[staticmethod]
    fn from_dict(spec: &Bound<'_, PyDict>) -> PyResult<Self> {
        Ok(PySpec::new(object(to_json(spec, "spec")?)?))
    }

    /// A spec from a selector string: a model name, a JSON object or a Python dict literal (apostrophes inside
    /// values survive, unlike in clemcore).
    #[staticmethod]
    fn from_string(selector: &str) -> PyResult<Self> {
        ModelSpec::parse_selector(selector).map(PySpec::new).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The unification of two specs (a key on one side only is copied; equal values unify; `1 == 1.0 == True`);
    /// `ValueError` when they conflict, as clemcore's.
    fn unify(&self, other: &Bound<'_, PyAny>) -> PyResult<Self> {
        let other = spec_from(other)?;
        self.spec
            .unify(&other)
            .map(PySpec::new)
            .ok_or_else(|| PyValueError::new_err(format!("{} does not unify with {}", self.spec, other)))
    }

    /// The spec as a new dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &Value::Object(self.spec.as_map().clone()))
    }

    /// The spec as compact JSON.
    #[pyo3(name = "to_string")]
    fn to_json_string(&self) -> String {
        self.spec.to_string()
    }

    fn has_attr(&self, key: &str) -> bool {
        self.spec.get(key).is_some()
    }

    fn has_backend(&self) -> bool {
        self.spec.get("backend").is_some()
    }

    fn has_temperature(&self) -> bool {
        self.spec.get("temperature").is_some()
    }

    /// `mock` or `programmatic`: a player scripted by the game.
    fn is_programmatic(&self) -> bool {
        self.spec.is_mock()
    }

    /// `human` or `terminal`: a player typing at the terminal.
    fn is_human(&self) -> bool {
        self.spec.is_human()
    }

    fn __getattr__<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        match self.spec.get(key) {
            Some(v) => to_py(py, v),
            None => Err(PyAttributeError::new_err(format!("ModelSpec has no {key:?}"))),
        }
    }

    fn __getitem__<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        match self.spec.get(key) {
            Some(v) => to_py(py, v),
            None => Err(PyKeyError::new_err(key.to_owned())),
        }
    }

    fn __contains__(&self, key: &str) -> bool {
        self.spec.get(key).is_some()
    }

    fn __len__(&self) -> usize {
        self.spec.as_map().len()
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp, py: Python<'_>) -> Py<PyAny> {
        let Ok(other) = other.cast::<PySpec>() else { return py.NotImplemented() };
        let equal = self.spec == other.get().spec;
        match op {
            CompareOp::Eq => PyBool::new(py, equal).to_owned().into_any().unbind(),
            CompareOp::Ne => PyBool::new(py, !equal).to_owned().into_any().unbind(),
            _ => py.NotImplemented(),
        }
    }

    fn __hash__(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.spec.hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        format!("ModelSpec({})", self.spec)
    }

    fn __str__(&self) -> String {
        self.spec.to_string()
    }
}

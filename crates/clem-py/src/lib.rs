//! The native module `clemrs._clemrs` of the `clemrs` wheel: clemrs's registry, keys and backends for Python,
//! under clemcore's names (`load_model`, `get_model_for`, `Model`, `ModelSpec`). The Python package around it
//! (`python/clemrs`: exceptions, the clemcore drop-in, the stub) re-exports what is here.
//!
//! - [`convert`]: Python objects to JSON and back, messages and generation arguments;
//! - [`spec`]: `ModelSpec`; [`model`]: `Model` (GIL released, Ctrl-C cancels); [`errors`]: Python exceptions.

mod convert;
mod errors;
mod model;
mod spec;

use std::path::PathBuf;

use clem_core::keys::Keys;
use clem_core::registry::{has_errors, Registry, Sources};
use clem_core::schema::{check_entry, Severity};
use clem_core::ModelSpec;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde_json::{json, Map, Value};

use crate::errors::{config_error, model_error};
use crate::model::PyModel;
use crate::spec::{spec_from, PySpec};

// The clem binary's allocator: local inference and JSON handling allocate as they do under `clem`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How a spec handed over without resolution is named in messages.
const GIVEN_SPEC: &str = "<spec given to load_model>";

/// Loads a model: `spec` (a model name, a selector string, a dict or a `ModelSpec`) selects the first registry
/// entry it unifies with, as `clem -m` does: `registries` (paths, read first), then `./model_registry.json`, then
/// the packaged registry; `keys` is a key file, else `./key.json`, else `~/.clemcore/key.json`, with environment
/// variables below. `gen_args` defaults to `{"temperature": 0.0, "max_tokens": 300}`; `threads` is for local
/// inference. With `resolve=False` the spec is used as it is (already unified, e.g. by clemcore), after checking it
/// against its backend's schema.
#[pyfunction]
#[pyo3(signature = (spec, gen_args=None, *, registries=None, keys=None, threads=None, resolve=true))]
fn load_model(
    py: Python<'_>,
    spec: &Bound<'_, PyAny>,
    gen_args: Option<&Bound<'_, PyDict>>,
    registries: Option<Vec<PathBuf>>,
    keys: Option<PathBuf>,
    threads: Option<usize>,
    resolve: bool,
) -> PyResult<PyModel> {
    let selector = spec_from(spec)?;
    let args = match gen_args {
        Some(d) => match convert::to_json(d, "gen_args")? {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        None => default_gen_args(),
    };
    let keys = Keys::discover(keys.as_deref()).map_err(|e| config_error(py, format!("loading keys: {e}")))?;
    let ctx = clem_backends::LoadContext { keys, threads, ..Default::default() };
    let loaded = if resolve {
        let registry = load_registry(py, registries.unwrap_or_default())?;
        py.detach(|| clem_backends::load_model(&registry, &selector, &ctx))
    } else {
        check_given(py, &selector)?;
        py.detach(|| clem_backends::load_spec(&selector, &ctx))
    };
    let model = loaded.map_err(|e| model_error(py, e))?;
    PyModel::new(model, args)
}

/// `load_model(spec)`, the name clembench's guide uses.
#[pyfunction]
fn get_model_for(py: Python<'_>, spec: &Bound<'_, PyAny>) -> PyResult<PyModel> {
    load_model(py, spec, None, None, None, None, true)
}

/// The registry entries, in priority order (first match wins), that unify with the `filters`: e.g.
/// `list_models(backend="llamacpp")`, `list_models(open_weight=True)`; all entries without filters. Each is a
/// `ModelSpec`. `registries` are read first, as for `load_model`.
#[pyfunction]
#[pyo3(signature = (*, registries=None, **filters))]
fn list_models(
    py: Python<'_>,
    registries: Option<Vec<PathBuf>>,
    filters: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<PySpec>> {
    let filter = match filters {
        Some(d) => match convert::to_json(d, "filters")? {
            Value::Object(m) => ModelSpec::new(m),
            _ => ModelSpec::default(),
        },
        None => ModelSpec::default(),
    };
    let registry = load_registry(py, registries.unwrap_or_default())?;
    Ok(registry
        .entries()
        .iter()
        .filter_map(|e| e.spec())
        .filter(|s| s.unifies_with(&filter))
        .map(PySpec::new)
        .collect())
}

/// Every backend clemrs knows: `{"name", "built", "key_section"}` (`built` is false for a backend this wheel was
/// compiled without).
#[pyfunction]
fn backends(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for b in clem_backends::BACKENDS {
        let v = json!({ "name": b.name(), "built": b.loader.is_some(), "key_section": b.key_section });
        list.append(convert::to_py(py, &v)?)?;
    }
    Ok(list)
}

fn default_gen_args() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("temperature".into(), json!(0.0));
    m.insert("max_tokens".into(), json!(300));
    m
}

fn load_registry(py: Python<'_>, files: Vec<PathBuf>) -> PyResult<Registry> {
    Registry::load(&Sources { files, no_defaults: false }).map_err(|e| config_error(py, e.to_string()))
}

/// A spec used without the registry is still checked as an entry: its errors, listed, refuse it.
fn check_given(py: Python<'_>, spec: &ModelSpec) -> PyResult<()> {
    if spec.is_mock() || spec.is_human() {
        return Ok(());
    }
    let value = Value::Object(spec.as_map().clone());
    let problems = check_entry(&value, GIVEN_SPEC, 0, &clem_backends::schemas());
    if !has_errors(&problems) {
        return Ok(());
    }
    let lines: Vec<String> =
        problems.iter().filter(|p| p.severity == Severity::Error).map(ToString::to_string).collect();
    Err(config_error(
        py,
        format!("model {}: the spec cannot be used:\n  {}", spec.model_name().unwrap_or("?"), lines.join("\n  ")),
    ))
}

#[pymodule]
fn _clemrs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(load_model, m)?)?;
    m.add_function(wrap_pyfunction!(get_model_for, m)?)?;
    m.add_function(wrap_pyfunction!(list_models, m)?)?;
    m.add_function(wrap_pyfunction!(backends, m)?)?;
    m.add_class::<PyModel>()?;
    m.add_class::<PySpec>()?;
    m.add("CALL_LOG_ENV", model::CALL_LOG_ENV)?;
    Ok(())
}

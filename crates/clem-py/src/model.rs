//! `clemrs.Model`: a loaded model with clemcore's `Model` names. Generation runs with the GIL released, so one
//! model serves several Python threads at once; on the main thread the caller checks for signals while it waits
//! (see [`interruptible`]), so Ctrl-C cancels the request (remote: aborted; local: the row leaves the batch at
//! the next decoding step) and raises at once.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clem_backends::http::executor::{with_interrupt_check, InterruptCheck};
use clem_core::{BatchMode, Cancel, GenArgs, Generation, LoadedModel, ModelError};
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple};
use serde_json::{json, Map, Value};

use crate::convert::{self, to_json, to_py};
use crate::errors::{backend_error, model_error};
use crate::spec::PySpec;

/// How often a waiting main thread checks for Ctrl-C.
const POLL: Duration = Duration::from_millis(50);

/// The environment variable naming a file that gets one JSON line per call (method, model, rows, errors, prompts): how
/// tests see what reached clemrs from a process they do not control, such as clemcore's `clem run`.
pub const CALL_LOG_ENV: &str = "CLEMRS_CALL_LOG";

/// A model loaded by `clemrs.load_model`. `generate_response(messages)` returns `(prompt, response,
/// response_text)`; `generate_batch_response(batch)` one such triple per message list, in order, or the
/// exception of a row that failed. Generation arguments (`temperature`, default 0.0; `max_tokens`, default 300;
/// any other key is passed to the backend) are set with `set_gen_args(**kw)` / `set_gen_arg(name, value)`.
#[pyclass(module = "clemrs", name = "Model", frozen)]
pub struct PyModel {
    model: Arc<LoadedModel>,
    gen_args: Mutex<Map<String, Value>>,
    log: Option<CallLog>,
}

impl PyModel {
    pub fn new(model: LoadedModel, gen_args: Map<String, Value>) -> PyResult<Self> {
        for (k, v) in &gen_args {
            convert::check_gen_arg(k, v)?;
        }
        Ok(PyModel { model: Arc::new(model), gen_args: Mutex::new(gen_args), log: CallLog::from_env() })
    }

    fn args(&self) -> GenArgs {
        convert::gen_args(&self.gen_args.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Whether a call only ever waits in the HTTP executor, which can look for Ctrl-C itself (remote models).
    fn waits_in_executor(&self) -> bool {
        self.model.batch_mode() == BatchMode::Concurrent
    }

    fn set_args(&self, update: impl FnOnce(&mut Map<String, Value>)) {
        update(&mut self.gen_args.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}

#[pymethods]
impl PyModel {
    /// Generates one reply: `(prompt, response, response_text)`, the exact object sent, the exact object
    /// returned (with clemcore's `clem_player` record), and the cleaned reply. `messages` is a list of
    /// `{"role": "system"|"user"|"assistant", "content": str, "image"?: str | list[str]}`. Raises
    /// `ContextExceededError`, `BackendError`, `ModelConfigError`, or `KeyboardInterrupt` on Ctrl-C (the request
    /// is cancelled).
    fn generate_response<'py>(&self, py: Python<'py>, messages: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
        let messages = convert::messages(messages, "messages")?;
        let args = self.args();
        let cancel = Cancel::new();
        let model = self.model.clone();
        let flag = cancel.clone();
        let result = interruptible(py, std::slice::from_ref(&cancel), self.waits_in_executor(), move || {
            model.generate_response_cancellable(&messages, &args, &flag)
        })?;
        if let Some(log) = &self.log {
            log.write("generate_response", self.model.name(), std::slice::from_ref(&result));
        }
        match result {
            Ok(generation) => triple(py, &generation),
            Err(e) => Err(model_error(py, e)),
        }
    }

    /// Generates one reply per message list, in input order, as one call of the backend (one forward pass for
    /// local models, concurrent requests for remote ones). Each element is a `(prompt, response, response_text)`
    /// triple, or the exception (an instance, not raised) of that row alone when it failed. Ctrl-C cancels every
    /// row and raises `KeyboardInterrupt`.
    fn generate_batch_response<'py>(&self, py: Python<'py>, batch: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let batch = convert::batch(batch)?;
        let args = self.args();
        let cancels: Vec<Cancel> = (0..batch.len()).map(|_| Cancel::new()).collect();
        let model = self.model.clone();
        let flags = cancels.clone();
        let results = interruptible(py, &cancels, self.waits_in_executor(), move || {
            model.generate_batch_response_cancellable(&batch, &args, &flags)
        })?;
        if let Some(log) = &self.log {
            log.write("generate_batch_response", self.model.name(), &results);
        }
        let out = PyList::empty(py);
        for result in results {
            match result {
                Ok(generation) => out.append(triple(py, &generation)?)?,
                Err(e) => out.append(model_error(py, e).into_value(py))?,
            }
        }
        Ok(out)
    }

    /// The unified spec the model was loaded from.
    #[getter]
    fn model_spec(&self) -> PySpec {
        PySpec::new(self.model.spec().clone())
    }

    /// The model's `model_name`.
    #[getter]
    fn model_name(&self) -> String {
        self.model.name().to_owned()
    }

    /// The model's `model_name` (clemcore's `Model.name`).
    #[getter]
    fn name(&self) -> String {
        self.model.name().to_owned()
    }

    /// How a batch runs: `"forward_pass"` (local inference), `"concurrent"` (remote requests) or `"sequential"`.
    #[getter]
    fn batch_mode(&self) -> &'static str {
        match self.model.batch_mode() {
            BatchMode::ForwardPass => "forward_pass",
            BatchMode::Concurrent => "concurrent",
            BatchMode::Sequential => "sequential",
        }
    }

    /// The generation arguments as set (a copy); unset ones take clemcore's defaults.
    #[getter]
    fn gen_args<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let set = self.gen_args.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        to_py(py, &Value::Object(set))
    }

    #[getter]
    fn temperature<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.get_gen_arg(py, "temperature")
    }

    #[getter]
    fn max_tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.get_gen_arg(py, "max_tokens")
    }

    /// Replaces every generation argument, as clemcore's `set_gen_args`.
    #[pyo3(signature = (**gen_args))]
    fn set_gen_args(&self, gen_args: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let map = match gen_args {
            Some(d) => match to_json(d, "gen_args")? {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            None => Map::new(),
        };
        for (k, v) in &map {
            convert::check_gen_arg(k, v)?;
        }
        self.set_args(|args| *args = map);
        Ok(())
    }

    /// Sets one generation argument.
    fn set_gen_arg(&self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let value = to_json(value, name)?;
        convert::check_gen_arg(name, &value)?;
        self.set_args(|args| {
            args.insert(name.to_owned(), value);
        });
        Ok(())
    }

    /// One generation argument; `KeyError` when it was never set.
    fn get_gen_arg<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let value = self.gen_args.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned();
        match value {
            Some(v) => to_py(py, &v),
            None => Err(PyKeyError::new_err(format!("no generation argument {name:?} was set"))),
        }
    }

    fn __repr__(&self) -> String {
        format!("<clemrs.Model name={:?} backend={:?}>", self.model.name(), self.model.spec().backend().unwrap_or("?"))
    }

    fn __str__(&self) -> String {
        self.model.name().to_owned()
    }
}

fn triple<'py>(py: Python<'py>, g: &Generation) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [to_py(py, &g.prompt)?, to_py(py, &g.response)?, to_py(py, &Value::String(g.response_text.clone()))?],
    )
}

/// Runs `work` with the GIL released. On the main thread (the only one Python delivers signals to) a signal
/// handler's exception (Ctrl-C's `KeyboardInterrupt`) sets every flag in `cancels` and is raised:
/// - when `waits_in_executor` (remote models), `work` runs on this thread and the executor's wait checks for
///   signals every 50 ms ([`with_interrupt_check`]); the cancelled requests end at once and the exception is
///   raised then. Handing the call to a helper cost two thread wake-ups per call, most of a loopback request.
/// - else (local models, whose generation runs on the calling thread) `work` runs on a helper thread while this
///   one checks for signals every [`POLL`]; the exception is raised at once, the helper finishing on its own.
pub fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    cancels: &[Cancel],
    waits_in_executor: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> PyResult<T> {
    if !on_main_thread(py)? {
        return Ok(py.detach(work));
    }
    if waits_in_executor {
        let raised: Arc<Mutex<Option<PyErr>>> = Arc::default();
        let seen = raised.clone();
        let flags = cancels.to_vec();
        let check: InterruptCheck = Arc::new(move || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => false,
                Err(e) => {
                    *seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                    flags.iter().for_each(Cancel::cancel);
                    true
                }
            })
        });
        let value = py.detach(move || with_interrupt_check(check, work));
        return match raised.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            Some(e) => Err(e),
            None => Ok(value),
        };
    }
    let (tx, rx) = mpsc::sync_channel(1);
    helpers::run(Box::new(move || {
        // The receiver is gone only when the caller was interrupted: nobody wants the result.
        let _ = tx.send(work());
    }))
    .map_err(|e| backend_error(py, format!("cannot start a thread for the call: {e}")))?;
    let mut rx = rx;
    loop {
        let (back, got) = py.detach(move || {
            let got = rx.recv_timeout(POLL);
            (rx, got)
        });
        rx = back;
        match got {
            Ok(value) => return Ok(value),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = py.check_signals() {
                    cancels.iter().for_each(Cancel::cancel);
                    return Err(e);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(backend_error(py, "the call's thread stopped without a result (a panic in clemrs)"))
            }
        }
    }
}

/// The helper threads of [`interruptible`], kept between calls: starting a thread per call cost about as much as
/// a whole loopback request.
mod helpers {
    use std::sync::mpsc::{self, Sender};
    use std::sync::Mutex;

    pub type Job = Box<dyn FnOnce() + Send>;

    /// Idle helpers, each waiting on its own channel.
    static IDLE: Mutex<Vec<Sender<Job>>> = Mutex::new(Vec::new());

    /// Runs `job` on an idle helper, or on a new one when none is idle (an interrupted call keeps its helper
    /// until the cancelled work returns).
    pub fn run(job: Job) -> std::io::Result<()> {
        let idle = IDLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        let job = match idle {
            Some(helper) => match helper.send(job) {
                Ok(()) => return Ok(()),
                // That helper is gone (it cannot be, but then a new one takes the job).
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("clemrs-call".into()).spawn(move || {
            let mut next = Some(job);
            while let Some(job) = next.take() {
                job();
                IDLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(tx.clone());
                next = rx.recv().ok();
            }
        })?;
        Ok(())
    }
}

static MAIN_IDENT: PyOnceLock<u64> = PyOnceLock::new();

fn on_main_thread(py: Python<'_>) -> PyResult<bool> {
    let main = MAIN_IDENT.get_or_try_init(py, || -> PyResult<u64> {
        py.import("threading")?.call_method0("main_thread")?.getattr("ident")?.extract()
    })?;
    // `_thread.get_ident()` without a Python call: the same C function (part of the stable ABI).
    // SAFETY: takes no arguments and only reads the calling thread's identity; the GIL is held.
    let current = unsafe { pyo3::ffi::PyThread_get_thread_ident() } as u64;
    Ok(current == *main)
}

/// The call log of [`CALL_LOG_ENV`]: appended to, one line per call; a line that cannot be written is dropped
/// (it is a diagnostic, never a reason to fail a generation).
struct CallLog {
    path: PathBuf,
    lock: Mutex<()>,
}

impl CallLog {
    fn from_env() -> Option<CallLog> {
        std::env::var_os(CALL_LOG_ENV)
            .filter(|p| !p.is_empty())
            .map(|p| CallLog { path: p.into(), lock: Mutex::new(()) })
    }

    /// One line per call, failed ones too: the rows asked for, the prompts of those answered, how many failed.
    fn write(&self, method: &str, model: &str, results: &[Result<Generation, ModelError>]) {
        let prompts: Vec<&Value> = results.iter().filter_map(|r| r.as_ref().ok()).map(|g| &g.prompt).collect();
        self.line(json!({
            "method": method,
            "model": model,
            "rows": results.len(),
            "errors": results.len() - prompts.len(),
            "prompts": prompts,
        }));
    }

    fn line(&self, value: Value) {
        let _guard = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path);
        if let Ok(mut f) = file {
            let _ = writeln!(f, "{value}");
        }
    }
}

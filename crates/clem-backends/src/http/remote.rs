//! `RemoteModel`: any [`Adapter`] plus the shared executor, as a synchronous `clem_core::Model`; and what every
//! remote loader needs: credentials with a clear error, the base URL, and per-model limits from the entry.
//!
//! `model_config` keys read here (all optional): `timeout` and `connect_timeout` (seconds, defaults 300 and 10),
//! `deadline` (seconds for the whole call, retries and waits included, default 900), `max_response_bytes`
//! (64 MiB), `max_attempts` (5), `retry_base_delay` (0.5 s) and `retry_max_delay` (60 s), `max_concurrency` (8),
//! `requests_per_minute` (none), `base_url`, and `danger_accept_invalid_certs` (also accepted in the key.json
//! section: turns TLS certificate verification off, for self-signed local servers only).

use std::sync::Arc;
use std::time::Duration;

use clem_core::keys::{KeySection, Secret, ENV_FALLBACK};
use clem_core::{BatchMode, Cancel, GenArgs, Generation, Message, Model, ModelError, ModelSpec};
use serde_json::{json, Value};

use super::executor::{run_sync_cancellable, Executor, Limits};
use super::retry::Policy;
use super::{Adapter, ApiRequest, RemoteError};
use crate::LoadContext;

/// A model behind an HTTP API.
pub struct RemoteModel {
    spec: ModelSpec,
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    adapter: Box<dyn Adapter>,
    executor: Executor,
}

impl RemoteModel {
    /// A model of `spec` speaking through `adapter`; `section` is the key.json section used (for the TLS opt-out).
    pub fn new(spec: &ModelSpec, adapter: impl Adapter, section: Option<&KeySection>) -> Result<Self, ModelError> {
        let name = spec.model_name().unwrap_or("?").to_string();
        let (policy, limits) = settings(spec).map_err(|m| ModelError::config(&name, m))?;
        let insecure = spec.config_flag("danger_accept_invalid_certs")
            || section.and_then(|s| s.extras.get("danger_accept_invalid_certs")).is_some_and(truthy);
        let executor =
            Executor::new(adapter.provider(), policy, &limits, insecure).map_err(|e| ModelError::backend(&name, e))?;
        Ok(RemoteModel { spec: spec.clone(), inner: Arc::new(Inner { name, adapter: Box::new(adapter), executor }) })
    }

    /// The request this model would send (for tests and `--dry-run` style tools); nothing is sent.
    pub fn build_request(&self, messages: &[Message], args: &GenArgs) -> Result<ApiRequest, RemoteError> {
        self.inner.adapter.build(messages, args)
    }
}

impl RemoteModel {
    /// Sends every request of `batch` at once; a row whose flag in `cancels` is set is aborted (its connection
    /// dropped, queued retries never sent) and answers [`ModelError::Cancelled`].
    fn generate_batch(
        &self,
        batch: &[Vec<Message>],
        args: &GenArgs,
        cancels: &[Cancel],
    ) -> Vec<Result<Generation, ModelError>> {
        let name = &self.inner.name;
        let provider = self.inner.adapter.provider();
        let calls: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, messages)| {
                let request = self.inner.adapter.build(messages, args);
                let inner = Arc::clone(&self.inner);
                let cancel = Cancel::of(cancels, i);
                async move { inner.call(request?, &cancel).await }
            })
            .collect();
        match run_sync_cancellable(calls, cancels) {
            Ok(results) => results
                .into_iter()
                .map(|r| match r {
                    Some(r) => r.map_err(|e| ModelError::backend(name, e)),
                    None => Err(ModelError::cancelled(name)),
                })
                .collect(),
            Err(message) => batch
                .iter()
                .map(|_| Err(ModelError::backend(name, RemoteError::Internal { provider, message: message.clone() })))
                .collect(),
        }
    }
}

impl Inner {
    async fn call(&self, request: ApiRequest, cancel: &Cancel) -> Result<Generation, RemoteError> {
        let provider = self.adapter.provider();
        let key = request.auth.as_ref().map(|a| &a.key);
        let exchange = self.executor.send(&request, cancel).await?;
        let attempts = exchange.attempts;
        let raw = || super::error::redact(&String::from_utf8_lossy(&exchange.body), key);
        let mut response: Value = serde_json::from_slice(&exchange.body).map_err(|e| RemoteError::NotJson {
            provider,
            detail: e.to_string(),
            body: raw(),
            attempts,
        })?;
        let (text, cot_content) = self.adapter.reply(&response).map_err(|detail| RemoteError::NoReply {
            provider,
            detail,
            body: raw(),
            attempts,
        })?;
        let usage = self.adapter.usage(&response);
        let finish = self.adapter.finish(&response);
        if let Value::Object(obj) = &mut response {
            if let Some(cot) = cot_content {
                obj.insert("cot_content".into(), Value::String(cot));
            }
            // LoadedModel adds call_start, call_duration, response and model_name to this object.
            obj.insert(
                "clem_player".into(),
                json!({ "attempts": attempts, "request_seconds": exchange.elapsed.as_secs_f64() }),
            );
        }
        Ok(Generation::new(request.body, response, text).with_usage(usage).with_finish(finish))
    }
}

impl Model for RemoteModel {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn generate_response(
        &self,
        messages: &[Message],
        args: &GenArgs,
        cancel: &Cancel,
    ) -> Result<Generation, ModelError> {
        self.generate_batch(&[messages.to_vec()], args, std::slice::from_ref(cancel))
            .pop()
            .unwrap_or_else(|| Err(ModelError::backend(&self.inner.name, "no result")))
    }

    /// All requests at once, as many in flight as `max_concurrency` allows; results in input order.
    fn generate_batch_response(
        &self,
        batch: &[Vec<Message>],
        args: &GenArgs,
        cancels: &[Cancel],
    ) -> Vec<Result<Generation, ModelError>> {
        self.generate_batch(batch, args, cancels)
    }

    fn batch_mode(&self) -> BatchMode {
        BatchMode::Concurrent
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        _ => false,
    }
}

/// Timeouts, retries and limits from `model_config`, with the defaults of [`Policy`] and [`Limits`].
pub fn settings(spec: &ModelSpec) -> Result<(Policy, Limits), String> {
    let seconds = |key: &str| -> Result<Option<Duration>, String> {
        match spec.config(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
                .map(|s| Some(Duration::from_secs_f64(s)))
                .ok_or_else(|| format!("model_config.{key}: must be a number of seconds, not {v}")),
        }
    };
    let count = |key: &str, min: u64| -> Result<Option<u64>, String> {
        match spec.config(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e12).map(|f| f as u64))
                .filter(|n| *n >= min)
                .map(Some)
                .ok_or_else(|| format!("model_config.{key}: must be a whole number of at least {min}, not {v}")),
        }
    };
    let d = Policy::default();
    let policy = Policy {
        max_attempts: count("max_attempts", 1)?.map_or(d.max_attempts, |n| n.min(1000) as u32),
        base_delay: seconds("retry_base_delay")?.unwrap_or(d.base_delay),
        max_delay: seconds("retry_max_delay")?.unwrap_or(d.max_delay),
        connect_timeout: seconds("connect_timeout")?.unwrap_or(d.connect_timeout),
        timeout: seconds("timeout")?.unwrap_or(d.timeout),
        deadline: match seconds("deadline")? {
            Some(s) if s.is_zero() => return Err("model_config.deadline: must be more than 0 seconds".into()),
            other => other.unwrap_or(d.deadline),
        },
        max_response_bytes: count("max_response_bytes", 1)?.unwrap_or(d.max_response_bytes),
    };
    let limits = Limits {
        max_concurrency: count("max_concurrency", 1)?
            .map_or(Limits::default().max_concurrency, |n| n.min(10_000) as usize),
        requests_per_minute: count("requests_per_minute", 1)?.map(|n| n.min(u64::from(u32::MAX)) as u32),
    };
    Ok((policy, limits))
}

/// Where a key.json section's key may come from, for error messages.
pub fn key_sources(section: &str) -> String {
    match ENV_FALLBACK.iter().find(|(s, _, _)| *s == section) {
        Some((_, var, _)) => format!("key.json section {section:?} (\"api_key\") or the environment variable ${var}"),
        None => format!("key.json section {section:?} (\"api_key\")"),
    }
}

/// The key.json section `section` and its API key; a clear error naming the section and the environment
/// variable when either is missing.
pub fn credentials(ctx: &LoadContext, section: &str, model: &str) -> Result<(KeySection, Secret), ModelError> {
    let found = ctx.keys.section(section);
    let key = found.as_ref().and_then(|s| s.api_key.clone()).filter(|k| !k.is_empty());
    match (found, key) {
        (Some(s), Some(k)) => Ok((s, k)),
        (found, _) => {
            let file = match ctx.keys.file() {
                Some(p) => format!("in {}", p.display()),
                None => "(no key file found: looked for ./key.json and ~/.clemcore/key.json)".to_string(),
            };
            let what = if found.is_some() { "has no api_key" } else { "is missing" };
            let env = ENV_FALLBACK
                .iter()
                .find(|(s, _, _)| *s == section)
                .map(|(_, var, _)| format!(", or set the environment variable ${var}"))
                .unwrap_or_default();
            Err(ModelError::config(
                model,
                format!(
                    "no API key: the key.json section {section:?} {what} {file}; add \
                     {{\"{section}\": {{\"api_key\": \"...\"}}}} to key.json{env}"
                ),
            ))
        }
    }
}

/// The entry's `model_id`.
pub fn model_id(spec: &ModelSpec) -> Result<String, ModelError> {
    let name = spec.model_name().unwrap_or("?");
    spec.get_str("model_id")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .ok_or_else(|| ModelError::config(name, "the registry entry needs a \"model_id\" (the provider's model name)"))
}

/// The base URL: the entry's `model_config.base_url`, else the key.json section's `base_url`, else `default`.
pub fn base_url(spec: &ModelSpec, section: Option<&KeySection>, default: Option<&str>) -> Option<String> {
    spec.config_str("base_url")
        .or_else(|| section.and_then(|s| s.extra_str("base_url")))
        .or(default)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Checks that a base URL is an http(s) URL.
pub fn check_url(model: &str, url: &str) -> Result<(), ModelError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(ModelError::config(model, format!("base_url {url:?} is not an http(s) URL"))),
    }
}

/// `thinking_budget` from the entry, else the provider's default.
pub fn thinking_budget(spec: &ModelSpec, default: u32) -> u32 {
    spec.config("thinking_budget").and_then(Value::as_u64).map_or(default, |n| n.min(u64::from(u32::MAX)) as u32)
}

/// `extra_body` from the entry (an object), if any.
pub fn extra_body(spec: &ModelSpec) -> serde_json::Map<String, Value> {
    match spec.config("extra_body") {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clem_core::keys::Keys;

    fn spec(v: Value) -> ModelSpec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn settings_defaults_and_overrides() {
        let (p, l) = settings(&spec(json!({"model_name": "m"}))).expect("defaults");
        assert_eq!((p, l), (Policy::default(), Limits::default()));
        let (p, l) = settings(&spec(json!({"model_name": "m", "model_config": {
            "timeout": 2.5, "connect_timeout": 1, "max_attempts": 2, "max_concurrency": 32,
            "requests_per_minute": 600, "retry_base_delay": 0.01, "deadline": 60, "max_response_bytes": 1024}})))
        .expect("overrides");
        assert_eq!(p.timeout, Duration::from_millis(2500));
        assert_eq!((p.deadline, p.max_response_bytes), (Duration::from_secs(60), 1024));
        assert_eq!((p.max_attempts, l.max_concurrency, l.requests_per_minute), (2, 32, Some(600)));
        assert!(settings(&spec(json!({"model_name": "m", "model_config": {"timeout": "soon"}}))).is_err());
        assert!(settings(&spec(json!({"model_name": "m", "model_config": {"max_attempts": 0}}))).is_err());
        let e = settings(&spec(json!({"model_name": "m", "model_config": {"max_response_bytes": -1}})));
        assert!(e.is_err_and(|e| e.contains("model_config.max_response_bytes")));
        for bad in [json!("soon"), json!(0)] {
            let e = settings(&spec(json!({"model_name": "m", "model_config": {"deadline": bad}})));
            assert!(e.is_err_and(|e| e.contains("model_config.deadline")));
        }
    }

    #[test]
    fn missing_credentials_name_section_and_variable() {
        let ctx = LoadContext { keys: Keys::from_env(vec![]), ..LoadContext::default() };
        let e = credentials(&ctx, "anthropic", "claude").expect_err("no key").to_string();
        assert!(e.contains("\"anthropic\"") && e.contains("$ANTHROPIC_API_KEY"), "{e}");
        let ctx = LoadContext {
            keys: Keys::from_env(vec![("ANTHROPIC_API_KEY".into(), "sk-ant-0123456789".into())]),
            ..LoadContext::default()
        };
        let (_, key) = credentials(&ctx, "anthropic", "claude").expect("from env");
        assert_eq!(key.expose(), "sk-ant-0123456789");
    }

    #[test]
    fn base_url_precedence() {
        let keys = Keys::from_json_str(
            r#"{"openai_compatible": {"api_key": "k", "base_url": "http://section/v1"}}"#,
            std::path::Path::new("key.json"),
        )
        .expect("keys");
        let section = keys.section("openai_compatible");
        let plain = spec(json!({"model_name": "m"}));
        let with = spec(json!({"model_name": "m", "model_config": {"base_url": "http://entry/v1"}}));
        assert_eq!(base_url(&plain, section.as_ref(), Some("http://d")).as_deref(), Some("http://section/v1"));
        assert_eq!(base_url(&with, section.as_ref(), None).as_deref(), Some("http://entry/v1"));
        assert_eq!(base_url(&plain, None, Some("http://d")).as_deref(), Some("http://d"));
        assert!(check_url("m", "ftp://x").is_err());
        assert!(check_url("m", "http://127.0.0.1:8080/v1").is_ok());
    }
}

//! When to retry a remote call and how long to wait first.
//!
//! Only failures that a later attempt can fix are retried: 408, 409, 429, 500, 502, 503, 504, 529 and broken
//! or timed-out connections. The wait is what the server asked for (`retry-after-ms`, `Retry-After` in seconds
//! or as an HTTP date, OpenAI's `x-ratelimit-reset-*`, Anthropic's `anthropic-ratelimit-*-reset`, Google's
//! `RetryInfo.retryDelay`), else exponential backoff with jitter; either way at most `max_delay`.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;

/// Statuses worth another attempt.
pub const RETRYABLE_STATUSES: [u16; 8] = [408, 409, 429, 500, 502, 503, 504, 529];

/// Timeouts, retry bounds and the response size limit of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The first backoff; doubles with every retry.
    pub base_delay: Duration,
    /// No single wait is longer, whatever the server asks.
    pub max_delay: Duration,
    /// Connecting (TCP and TLS).
    pub connect_timeout: Duration,
    /// One attempt, from sending to the last byte of the body (redirects included).
    pub timeout: Duration,
    /// The whole call: every attempt and every wait between attempts, from the first attempt's start. An
    /// attempt gets at most the time left.
    pub deadline: Duration,
    /// The largest response body read; a larger one fails the call (not retried).
    pub max_response_bytes: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(300),
            deadline: Duration::from_secs(15 * 60),
            max_response_bytes: 64 << 20,
        }
    }
}

impl Policy {
    /// Exponential backoff with jitter after `attempt` failed attempts (1-based): a random wait between half
    /// and all of `base * 2^(attempt-1)`, capped at `max_delay`, so that concurrent callers spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max_delay);
        capped.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// The wait before the next attempt: the server's wish when it has one, else backoff.
    pub fn delay(&self, attempt: u32, server: Option<Duration>) -> Duration {
        server.unwrap_or_else(|| self.backoff(attempt)).min(self.max_delay)
    }
}

pub fn is_retryable(status: u16) -> bool {
    RETRYABLE_STATUSES.contains(&status)
}

/// Why a failed status is final, for the error message.
pub fn why_final(status: u16) -> &'static str {
    match status {
        400 => "not retried: the request is invalid",
        401 => "not retried: authentication failed (check the API key)",
        403 => "not retried: permission denied (check the API key's access to this model)",
        404 => "not retried: not found (check model_id and base_url)",
        413 => "not retried: the request is too large",
        422 => "not retried: the request was rejected as invalid",
        _ => "not retried: a repeat cannot succeed",
    }
}

/// The wait the server asked for, from its headers or (Google) its error body.
pub fn server_delay(headers: &HeaderMap, body: &str, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return secs(ms / 1000.0);
    }
    if let Some(v) = header("retry-after") {
        if let Ok(s) = v.parse::<f64>() {
            return secs(s);
        }
        if let Ok(at) = httpdate::parse_http_date(v) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    // OpenAI (and OpenAI-style servers): the reset of whichever limit is exhausted, as Go durations.
    let exhausted = |kind: &str| header(&format!("x-ratelimit-remaining-{kind}")) == Some("0");
    let openai = ["requests", "tokens"]
        .iter()
        .filter(|k| exhausted(k))
        .filter_map(|k| header(&format!("x-ratelimit-reset-{k}")).and_then(parse_go_duration))
        .max();
    if openai.is_some() {
        return openai;
    }
    // Anthropic: RFC 3339 instants at which each exhausted limit resets.
    let anthropic = ["requests", "tokens", "input-tokens", "output-tokens"]
        .iter()
        .filter(|k| header(&format!("anthropic-ratelimit-{k}-remaining")) == Some("0"))
        .filter_map(|k| header(&format!("anthropic-ratelimit-{k}-reset")))
        .filter_map(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
        .map(|at| SystemTime::from(at).duration_since(now).unwrap_or(Duration::ZERO))
        .max();
    if anthropic.is_some() {
        return anthropic;
    }
    google_retry_delay(body)
}

fn secs(s: f64) -> Option<Duration> {
    (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(1e9)))
}

/// Google's `{"error": {"details": [{"@type": "...RetryInfo", "retryDelay": "38s"}]}}`.
fn google_retry_delay(body: &str) -> Option<Duration> {
    let value: Value = serde_json::from_str(body).ok()?;
    let value = match value {
        Value::Array(items) => items.into_iter().next()?,
        v => v,
    };
    value.pointer("/error/details")?.as_array()?.iter().find_map(|d| {
        let is_retry_info = d.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with("RetryInfo"));
        let delay = d.get("retryDelay").and_then(Value::as_str)?;
        if is_retry_info {
            secs(delay.strip_suffix('s')?.parse().ok()?)
        } else {
            None
        }
    })
}

/// Go's duration syntax as OpenAI sends it: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    secs(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn only_transient_statuses_retry() {
        for s in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(is_retryable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 422, 200, 501] {
            assert!(!is_retryable(s), "{s}");
        }
    }

    #[test]
    fn retry_after_in_seconds_ms_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(server_delay(&headers(&[("retry-after", "7")]), "", now), Some(Duration::from_secs(7)));
        assert_eq!(server_delay(&headers(&[("retry-after", "0.25")]), "", now), Some(Duration::from_millis(250)));
        assert_eq!(
            server_delay(&headers(&[("retry-after-ms", "40"), ("retry-after", "9")]), "", now),
            Some(Duration::from_millis(40))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(12));
        assert_eq!(server_delay(&headers(&[("retry-after", &date)]), "", now), Some(Duration::from_secs(12)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(12));
        assert_eq!(server_delay(&headers(&[("retry-after", &past)]), "", now), Some(Duration::ZERO));
        assert_eq!(server_delay(&headers(&[("retry-after", "soon")]), "", now), None);
        assert_eq!(server_delay(&headers(&[]), "", now), None);
    }

    #[test]
    fn provider_rate_limit_headers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let openai = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1m30.5s"),
            ("x-ratelimit-remaining-tokens", "900"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(server_delay(&openai, "", now), Some(Duration::from_millis(90_500)));
        let at = chrono::DateTime::<chrono::Utc>::from(now + Duration::from_secs(3)).to_rfc3339();
        let anthropic =
            headers(&[("anthropic-ratelimit-tokens-remaining", "0"), ("anthropic-ratelimit-tokens-reset", &at)]);
        assert_eq!(server_delay(&anthropic, "", now), Some(Duration::from_secs(3)));
        let google = r#"{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "38s"}]}}"#;
        assert_eq!(server_delay(&headers(&[]), google, now), Some(Duration::from_secs(38)));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("abc"), None);
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p =
            Policy { base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1), ..Policy::default() };
        for _ in 0..50 {
            let d1 = p.backoff(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
            let d3 = p.backoff(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400), "{d3:?}");
            assert!(p.backoff(30) <= Duration::from_secs(1));
        }
        assert_eq!(p.delay(1, Some(Duration::from_secs(3600))), Duration::from_secs(1));
    }
}

//! The hub's wire protocol over reqwest, as huggingface_hub speaks it:
//!
//! - `GET {endpoint}/api/models/{repo}/revision/{revision}`: JSON with `sha` and `siblings: [{rfilename}]`;
//! - `HEAD {endpoint}/{repo}/resolve/{commit}/{path}` with `Accept-Encoding: identity`, redirects not followed
//!   unless they stay on the same origin (a renamed repository): the answer carries `X-Repo-Commit`, `ETag` or
//!   (LFS) `X-Linked-Etag` + `X-Linked-Size`, and for LFS a `Location` on a CDN;
//! - `GET` of the file (the CDN location, without the token when it is another host), resumed with `Range` after
//!   a transient failure, up to a few attempts without progress;
//! - errors from `X-Error-Code` / `X-Error-Message` (`GatedRepo`, `RepoNotFound`, `RevisionNotFound`,
//!   `EntryNotFound`), as `hf_raise_for_status` reads them.
//!
//! The token only ever goes into an `Authorization` header marked sensitive, and only to the hub's own origins:
//! redirects reqwest follows drop it on a change of scheme, host or port, and no request carries a `Referer`.
//! Every text that reaches an error is scrubbed of it and sanitised (control characters escaped, length capped),
//! and URLs in errors lose their query (a CDN's signature) and credentials.

use std::io::{Seek, Write};
use std::path::PathBuf;
use std::time::Duration;

use clem_core::keys::Secret;
use indicatif::ProgressBar;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_LENGTH, LOCATION, RANGE};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};
use serde_json::Value;

use super::HubError;
use crate::http::error::{redact, sanitize};

const MAX_REDIRECTS: usize = 10;
/// The most a revision answer may weigh (a listing of a few hundred thousand files).
const MAX_API_BODY: usize = 64 << 20;
/// Hosts that are the hub itself, whatever the endpoint: the token may go there.
const HUB_ORIGINS: [&str; 2] = ["https://huggingface.co", "https://hf.co"];

/// Why a request got no usable answer.
#[derive(Debug)]
pub enum Failure {
    /// Connection refused, DNS failure, timeout: the hub cannot be reached.
    Unreachable(String),
    /// The hub answered, with an error.
    Hub(HubError),
}

/// What every request of one repository shares.
#[derive(Clone)]
pub struct Ctx {
    pub repo: String,
    pub endpoint: String,
    pub token: Option<Secret>,
    pub timeout: Duration,
}

impl Ctx {
    fn protocol(&self, url: &Url, message: impl Into<String>) -> HubError {
        HubError::Protocol { repo: self.repo.clone(), url: display_url(url), message: message.into() }
    }

    fn net(&self, e: reqwest::Error) -> Failure {
        let unreachable = e.is_connect() || e.is_timeout();
        let detail = self.describe(e);
        if unreachable {
            Failure::Unreachable(detail)
        } else {
            Failure::Hub(HubError::Internal { repo: self.repo.clone(), message: detail })
        }
    }

    /// An error's text with its causes, without its URL, scrubbed of the token.
    fn describe(&self, e: reqwest::Error) -> String {
        let e = e.without_url();
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let t = cause.to_string();
            if !text.contains(&t) {
                text.push_str(": ");
                text.push_str(&t);
            }
            source = cause.source();
        }
        sanitize(&redact(&text, self.token.as_ref()))
    }

    fn authorize(&self, req: RequestBuilder, url: &Url, send_token: bool) -> Result<RequestBuilder, HubError> {
        let Some(token) = self.token.as_ref().filter(|_| send_token) else { return Ok(req) };
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| self.protocol(url, "the token holds characters that cannot go into an HTTP header"))?;
        value.set_sensitive(true);
        Ok(req.header(AUTHORIZATION, value))
    }

    /// The hub's error for a non-2xx answer, as `hf_raise_for_status` classifies it.
    fn status_error(
        &self,
        url: &Url,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        revision: &str,
        file: &str,
    ) -> HubError {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body_message =
            || serde_json::from_slice::<Value>(body).ok()?.get("error").and_then(Value::as_str).map(str::to_string);
        let raw = header("x-error-message").or_else(body_message).unwrap_or_default();
        let message = sanitize(&redact(&raw, self.token.as_ref()).chars().take(300).collect::<String>());
        let (repo, endpoint, url_text) = (self.repo.clone(), self.endpoint.clone(), display_url(url));
        let token_sent = self.token.is_some();
        match header("x-error-code").as_deref() {
            Some("RevisionNotFound") => HubError::RevisionNotFound { repo, revision: revision.into(), url: url_text },
            Some("EntryNotFound") => {
                HubError::EntryNotFound { repo, revision: revision.into(), file: file.into(), url: url_text }
            }
            Some("GatedRepo") => HubError::Gated { repo, endpoint, url: url_text, token_sent, message },
            Some("RepoNotFound") => HubError::RepoNotFound { repo, endpoint, url: url_text, token_sent, message },
            _ if status == StatusCode::UNAUTHORIZED && message == "Invalid credentials in Authorization header" => {
                HubError::BadToken { repo, url: url_text, message }
            }
            _ if status == StatusCode::UNAUTHORIZED => {
                HubError::RepoNotFound { repo, endpoint, url: url_text, token_sent, message }
            }
            _ => HubError::Status { repo, url: url_text, status: status.as_u16(), message },
        }
    }
}

/// A URL as errors show it: no query, no fragment, no credentials.
pub fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// The two clients: one that never follows redirects (metadata), one that does (listing and downloads).
#[derive(Clone)]
pub struct Clients {
    meta: Client,
    get: Client,
}

impl Clients {
    pub fn new(connect_timeout: Duration, read_timeout: Duration) -> Result<Clients, String> {
        // ring is the only crypto provider compiled in; installing it twice is harmless (the first one stays).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = || {
            // No Referer: a redirect to a CDN need not learn the hub URL that sent it there.
            Client::builder().connect_timeout(connect_timeout).referer(false).user_agent(concat!(
                "clemrs/",
                env!("CARGO_PKG_VERSION"),
                "; hf_hub"
            ))
        };
        let meta = builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let get = builder()
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .read_timeout(read_timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Clients { meta, get })
    }
}

/// `{endpoint}/{prefix...}/{repo}/{suffix...}`, each segment percent-encoded (a `/` in a revision included).
pub fn hub_url(endpoint: &str, prefix: &[&str], repo: &str, suffix: &[&str]) -> Result<Url, HubError> {
    let bad = |message: String| HubError::BadEndpoint { endpoint: endpoint.into(), message };
    let mut url = Url::parse(endpoint).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https".into()));
    }
    {
        let mut segments = url.path_segments_mut().map_err(|_| bad("it cannot take a path".into()))?;
        segments.pop_if_empty();
        segments.extend(prefix.iter().copied().chain(repo.split('/')).chain(suffix.iter().copied()));
    }
    Ok(url)
}

/// A revision's commit and files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoInfo {
    pub sha: String,
    pub files: Vec<String>,
}

/// `GET api/models/{repo}/revision/{revision}`.
pub async fn repo_info(clients: Clients, ctx: Ctx, url: Url, revision: String) -> Result<RepoInfo, Failure> {
    let req = ctx.authorize(clients.get.get(url.clone()), &url, true).map_err(Failure::Hub)?;
    let resp = req.timeout(ctx.timeout).send().await.map_err(|e| ctx.net(e))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = read_limited(resp, MAX_API_BODY).await.map_err(|e| match e {
        Limited::Net(e) => ctx.net(e),
        Limited::TooBig => Failure::Hub(ctx.protocol(&url, "the answer is implausibly large")),
    })?;
    if !status.is_success() {
        return Err(Failure::Hub(ctx.status_error(&url, status, &headers, &body, &revision, "")));
    }
    let json: Value =
        serde_json::from_slice(&body).map_err(|e| Failure::Hub(ctx.protocol(&url, format!("invalid JSON: {e}"))))?;
    let sha = json
        .get("sha")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Failure::Hub(ctx.protocol(&url, "the answer has no \"sha\"")))?;
    let siblings = json
        .get("siblings")
        .and_then(Value::as_array)
        .ok_or_else(|| Failure::Hub(ctx.protocol(&url, "the answer has no \"siblings\" list")))?;
    let files = siblings.iter().filter_map(|s| s.get("rfilename").and_then(Value::as_str)).map(String::from).collect();
    Ok(RepoInfo { sha: sha.to_string(), files })
}

enum Limited {
    Net(reqwest::Error),
    TooBig,
}

async fn read_limited(mut resp: Response, limit: usize) -> Result<Vec<u8>, Limited> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Limited::Net)? {
        if body.len() + chunk.len() > limit {
            return Err(Limited::TooBig);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What the hub says of one file.
#[derive(Clone, Debug)]
pub struct FileMeta {
    pub commit: String,
    pub etag: String,
    pub size: Option<u64>,
    /// Where the bytes are: the resolve URL, or the CDN it redirects to.
    pub location: Url,
    /// Whether the token may go to `location` (the hub's own origin).
    pub send_token: bool,
}

/// `ETag: W/"abc"` -> `abc`, as huggingface_hub's `_normalize_etag` (`lstrip("W/").strip('"')`).
pub fn normalize_etag(etag: &str) -> &str {
    etag.trim_start_matches(['W', '/']).trim_matches('"')
}

fn same_or_hub_origin(from: &Url, to: &Url) -> bool {
    from.origin() == to.origin()
        || HUB_ORIGINS.iter().filter_map(|h| Url::parse(h).ok()).any(|h| h.origin() == to.origin())
}

/// `HEAD .../resolve/{commit}/{file}`: commit, ETag, size and where to download.
pub async fn file_meta(
    clients: Clients,
    ctx: Ctx,
    url: Url,
    revision: String,
    file: String,
) -> Result<FileMeta, Failure> {
    let mut current = url.clone();
    for _ in 0..MAX_REDIRECTS {
        let req = clients.meta.head(current.clone()).header(ACCEPT_ENCODING, "identity");
        let req = ctx.authorize(req, &current, same_or_hub_origin(&url, &current)).map_err(Failure::Hub)?;
        let resp = req.timeout(ctx.timeout).send().await.map_err(|e| ctx.net(e))?;
        let status = resp.status();
        let headers = resp.headers();
        let mut redirected = false;
        let mut location = current.clone();
        if status.is_redirection() {
            if let Some(target) = headers.get(LOCATION).and_then(|v| v.to_str().ok()) {
                let target = current
                    .join(target)
                    .map_err(|e| Failure::Hub(ctx.protocol(&current, format!("bad Location header: {e}"))))?;
                if same_or_hub_origin(&current, &target) {
                    current = target;
                    continue;
                }
                redirected = true;
                location = target;
            }
        }
        if !redirected && !status.is_success() {
            return Err(Failure::Hub(ctx.status_error(&current, status, headers, &[], &revision, &file)));
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let commit = header("x-repo-commit").ok_or_else(|| {
            Failure::Hub(ctx.protocol(
                &current,
                "the answer has no X-Repo-Commit header, so it does not come from a Hugging Face hub; if HF_ENDPOINT \
                 is set, check that it points to a hub, else check firewall and proxy settings",
            ))
        })?;
        let etag = header("x-linked-etag").or_else(|| header("etag")).map(normalize_etag).ok_or_else(|| {
            Failure::Hub(ctx.protocol(&current, format!("{file} has no ETag, so it cannot be cached reliably")))
        })?;
        let size = header("x-linked-size")
            .or_else(|| if redirected { None } else { header(CONTENT_LENGTH.as_str()) })
            .and_then(|s| s.trim().parse().ok());
        let send_token = same_or_hub_origin(&url, &location);
        return Ok(FileMeta { commit: commit.to_string(), etag: etag.to_string(), size, location, send_token });
    }
    Err(Failure::Hub(ctx.protocol(&url, format!("more than {MAX_REDIRECTS} redirects"))))
}

/// One file to download into a temporary file.
pub struct Fetch {
    pub revision: String,
    pub file: String,
    pub meta: FileMeta,
    pub dest: PathBuf,
    /// Attempts in a row without new bytes before giving up.
    pub retries: u32,
    pub retry_delay: Duration,
    pub progress: ProgressBar,
}

/// Why one download attempt stopped.
enum Stop {
    /// Worth another attempt (resumed from what was written).
    Transient(String),
    Fatal(HubError),
}

/// Downloads `fetch.meta.location` into `fetch.dest`; returns the bytes written. On error `dest` may hold a part.
pub async fn download(clients: Clients, ctx: Ctx, fetch: Fetch) -> Result<u64, HubError> {
    let dest = &fetch.dest;
    // A fresh random name, created exclusively: nothing another user placed there is written through.
    let mut out =
        std::fs::OpenOptions::new().write(true).create_new(true).open(dest).map_err(|e| HubError::io(dest, e))?;
    let mut written = 0u64;
    let mut best = 0u64;
    let mut left = fetch.retries;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt(&clients, &ctx, &fetch, &mut out, &mut written).await {
            Ok(()) => break,
            Err(Stop::Fatal(e)) => return Err(e),
            Err(Stop::Transient(detail)) => {
                if written > best {
                    best = written;
                    left = fetch.retries;
                }
                if left == 0 {
                    return Err(HubError::Download {
                        repo: ctx.repo.clone(),
                        file: fetch.file.clone(),
                        url: display_url(&fetch.meta.location),
                        detail: format!("{detail} (after {attempts} attempts, {written} bytes received)"),
                    });
                }
                left -= 1;
                tokio::time::sleep(fetch.retry_delay).await;
            }
        }
    }
    out.sync_all().map_err(|e| HubError::io(dest, e))?;
    Ok(written)
}

async fn attempt(
    clients: &Clients,
    ctx: &Ctx,
    fetch: &Fetch,
    out: &mut std::fs::File,
    written: &mut u64,
) -> Result<(), Stop> {
    let url = &fetch.meta.location;
    let dest = &fetch.dest;
    let restart = |out: &mut std::fs::File, written: &mut u64| -> Result<(), Stop> {
        out.set_len(0).and_then(|()| out.rewind()).map_err(|e| Stop::Fatal(HubError::io(dest, e)))?;
        *written = 0;
        fetch.progress.set_position(0);
        Ok(())
    };
    let mut req = clients.get.get(url.clone()).header(ACCEPT_ENCODING, "identity");
    if *written > 0 {
        req = req.header(RANGE, format!("bytes={written}-"));
    }
    let req = ctx.authorize(req, url, fetch.meta.send_token).map_err(Stop::Fatal)?;
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_builder() || e.is_redirect() => {
            return Err(Stop::Fatal(HubError::Download {
                repo: ctx.repo.clone(),
                file: fetch.file.clone(),
                url: display_url(url),
                detail: ctx.describe(e),
            }))
        }
        Err(e) => return Err(Stop::Transient(ctx.describe(e))),
    };
    let status = resp.status();
    match status.as_u16() {
        206 if *written > 0 => {}
        200 => {
            if *written > 0 {
                // The server ignored the Range: start over.
                restart(out, written)?;
            }
        }
        416 if *written > 0 && fetch.meta.size == Some(*written) => return Ok(()),
        416 => {
            restart(out, written)?;
            return Err(Stop::Transient("the server refused the range".into()));
        }
        408 | 429 | 500..=599 => return Err(Stop::Transient(format!("HTTP {status}"))),
        _ => {
            let headers = resp.headers().clone();
            let body = read_limited(resp, 64 << 10).await.unwrap_or_default();
            return Err(Stop::Fatal(ctx.status_error(url, status, &headers, &body, &fetch.revision, &fetch.file)));
        }
    }
    // A server's Content-Length may be anything up to u64::MAX: no total rather than an overflow.
    if let Some(total) = fetch.meta.size.or_else(|| resp.content_length().and_then(|n| n.checked_add(*written))) {
        fetch.progress.set_length(total);
    }
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                out.write_all(&chunk).map_err(|e| Stop::Fatal(HubError::io(dest, e)))?;
                *written += chunk.len() as u64;
                fetch.progress.inc(chunk.len() as u64);
            }
            Ok(None) => break,
            Err(e) => return Err(Stop::Transient(ctx.describe(e))),
        }
    }
    match fetch.meta.size {
        Some(size) if *written < size => {
            Err(Stop::Transient(format!("the connection closed after {written} of {size} bytes", written = *written)))
        }
        Some(size) if *written > size => Err(Stop::Fatal(HubError::Download {
            repo: ctx.repo.clone(),
            file: fetch.file.clone(),
            url: display_url(url),
            detail: format!("received {written} bytes but the hub announced {size}", written = *written),
        })),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_urls_and_origins() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("abc"), "abc");
        let u = hub_url("https://hf.example/mirror/", &["api", "models"], "org/m", &["revision", "refs/pr/1"])
            .expect("url");
        assert_eq!(u.as_str(), "https://hf.example/mirror/api/models/org/m/revision/refs%2Fpr%2F1");
        let r = hub_url("http://127.0.0.1:9", &[], "org/m", &["resolve", "abc", "sub", "a b.gguf"]).expect("url");
        assert_eq!(r.as_str(), "http://127.0.0.1:9/org/m/resolve/abc/sub/a%20b.gguf");
        assert!(hub_url("not a url", &[], "org/m", &[]).is_err());
        assert!(hub_url("ftp://x", &[], "org/m", &[]).is_err());
        let signed = Url::parse("https://user:pw@cdn.example/x?X-Amz-Signature=s3cr3t#f").expect("url");
        assert_eq!(display_url(&signed), "https://cdn.example/x");
        let hub = Url::parse("https://huggingface.co/a").expect("url");
        assert!(same_or_hub_origin(&hub, &Url::parse("https://huggingface.co/b").expect("url")));
        assert!(!same_or_hub_origin(&hub, &Url::parse("https://cdn-lfs.hf.co/b").expect("url")));
        let local = Url::parse("http://127.0.0.1:1/a").expect("url");
        assert!(!same_or_hub_origin(&local, &Url::parse("http://127.0.0.1:2/a").expect("url")));
        assert!(same_or_hub_origin(&local, &Url::parse("https://hf.co/x").expect("url")));
    }

    #[test]
    fn errors_follow_hf_raise_for_status() {
        let ctx = Ctx {
            repo: "org/m".into(),
            endpoint: "http://h".into(),
            token: Some(Secret::new("hf_SECRETSECRET")),
            timeout: Duration::from_secs(1),
        };
        let url = Url::parse("http://h/org/m/resolve/main/x.json?sig=1").expect("url");
        let mut headers = HeaderMap::new();
        headers.insert("x-error-code", HeaderValue::from_static("GatedRepo"));
        headers.insert("x-error-message", HeaderValue::from_static("restricted for hf_SECRETSECRET"));
        let e = ctx.status_error(&url, StatusCode::FORBIDDEN, &headers, b"", "main", "x.json");
        let text = e.to_string();
        assert!(matches!(e, HubError::Gated { token_sent: true, .. }), "{e:?}");
        assert!(!text.contains("hf_SECRETSECRET") && !text.contains("sig=1"), "{text}");
        headers.insert("x-error-code", HeaderValue::from_static("EntryNotFound"));
        let e = ctx.status_error(&url, StatusCode::NOT_FOUND, &headers, b"", "main", "x.json");
        assert!(matches!(&e, HubError::EntryNotFound { revision, .. } if revision == "main"), "{e:?}");
        let e =
            ctx.status_error(&url, StatusCode::UNAUTHORIZED, &HeaderMap::new(), b"{\"error\":\"nope\"}", "main", "x");
        assert!(matches!(e, HubError::RepoNotFound { .. }), "{e:?}");
        let e = ctx.status_error(&url, StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"", "main", "x");
        assert!(e.to_string().contains("HTTP 502"), "{e}");
        // A hostile hub's error text reaches no terminal as escapes (before: ESC and BEL came through as they were).
        let body = format!("{{\"error\": \"\\u001b[2J\\u001b]0;pwned\\u0007{}\"}}", "x".repeat(1 << 20));
        let e = ctx.status_error(&url, StatusCode::BAD_GATEWAY, &HeaderMap::new(), body.as_bytes(), "main", "x");
        let text = e.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains("\\u{1b}[2J\\u{1b}]0;pwned\\u{7}") && text.len() < 1000, "{}", text.len());
    }
}

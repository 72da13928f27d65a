//! Models from the Hugging Face hub for the local backends (`huggingface_local`, `llamacpp`): a `huggingface_id`
//! becomes a folder, downloading what is missing into the standard hub cache exactly as huggingface_hub does, so
//! either program uses what the other cached. Free of the heavy backend features: both backends share it.
//!
//! [`model_dir`] is the one entry point: a local folder is used as it is; a repository id is opened
//! ([`Snapshot::open`]), the backend's [`Want`] picks the files, each one missing from `snapshots/<commit>/` is
//! fetched, and `refs/<revision>` is written last. The cache layout is in [`cache`], the wire protocol in
//! [`wire`], the file choices in [`select`].
//!
//! Online or not, as huggingface_hub decides:
//! - `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE`): no request at all; the cache (`refs/<revision>`) or an error
//!   saying the model is not cached and offline mode is on.
//! - Online: one cheap revision request (`api/models/{repo}/revision/{rev}`) gives the commit and the listing;
//!   files already in that commit's snapshot are not requested again. If the hub cannot be reached (connection
//!   refused, DNS failure, timeout) or refuses (5xx, 401, gated), the cached snapshot is used silently when it
//!   holds everything; otherwise the error names the repository, the endpoint and the cache folder.
//! - A file is downloaded to `blobs/<etag>.<random>.incomplete` under `.locks/.../<etag>.lock`, resumed with
//!   `Range` after a transient failure, size-checked, synced and renamed: an interrupted download never looks
//!   complete. A progress bar goes to stderr when it is a terminal.
//!
//! Tokens: `model_config.requires_api_key: true` sends the `huggingface` section's `api_key` of key.json;
//! otherwise (and as a fallback) `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN` or the token file (`HF_TOKEN_PATH`, else
//! `HF_HOME/token`) as huggingface_hub's implicit token, unless `HF_HUB_DISABLE_IMPLICIT_TOKEN`. The token is a
//! [`Secret`]: only the `Authorization` header sees it.
//!
//! Environment, read only by [`Hub::from_env`] (tests build a [`Hub`] directly): `HF_ENDPOINT` (default
//! `https://huggingface.co`), `HF_HUB_CACHE` / `HF_HOME` (via `clem_core::hf::hub_cache_dir`), `HF_HUB_OFFLINE`,
//! `HF_HUB_ETAG_TIMEOUT`, `HF_HUB_DOWNLOAD_TIMEOUT` (seconds, default 10), `HF_HUB_DISABLE_PROGRESS_BARS`.

pub mod cache;
mod error;
pub mod select;
pub mod wire;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clem_core::keys::{Keys, Secret};
use clem_core::ModelSpec;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use error::HubError;
pub use select::{fnmatch_one, split_name, GlobMiss, Want};

use cache::{BlobLock, Layout};
use wire::{Clients, Ctx, Failure};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
pub const DEFAULT_REVISION: &str = "main";

/// A local folder as given, else the cached snapshot of a hub repository with every file `want` names,
/// downloading what is missing (settings from the environment, see [`Hub::from_env`]).
pub fn model_dir(id_or_path: &str, want: &Want, token: Option<Secret>) -> Result<PathBuf, HubError> {
    let path = Path::new(id_or_path);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    Hub::from_env(token).snapshot(id_or_path, DEFAULT_REVISION, want)
}

/// The token for an entry: key.json's `huggingface` api_key when `model_config.requires_api_key` is true, else
/// (or when that is missing) huggingface_hub's implicit token from the environment.
pub fn token_for(spec: &ModelSpec, keys: &Keys) -> Option<Secret> {
    let from_keys =
        if spec.config_flag("requires_api_key") { keys.section("huggingface").and_then(|s| s.api_key) } else { None };
    from_keys.filter(|t| !t.is_empty()).or_else(env_token)
}

/// huggingface_hub's implicit token: `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`, else the token file.
pub fn env_token() -> Option<Secret> {
    token_from_lookup(|k| std::env::var(k).ok())
}

fn token_from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<Secret> {
    if get("HF_HUB_DISABLE_IMPLICIT_TOKEN").is_some_and(|v| is_true(&v)) {
        return None;
    }
    let clean = |t: String| Some(t.trim().replace(['\r', '\n'], "")).filter(|t| !t.is_empty());
    if let Some(t) = get("HF_TOKEN").and_then(clean).or_else(|| get("HUGGING_FACE_HUB_TOKEN").and_then(clean)) {
        return Some(Secret::new(t));
    }
    let non_empty = |k: &str| get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let path = non_empty("HF_TOKEN_PATH").or_else(|| {
        let home = non_empty("HF_HOME")
            .or_else(|| non_empty("XDG_CACHE_HOME").map(|x| x.join("huggingface")))
            .or_else(|| non_empty("HOME").map(|h| h.join(".cache").join("huggingface")))?;
        Some(home.join("token"))
    })?;
    std::fs::read_to_string(path).ok().and_then(clean).map(Secret::new)
}

/// huggingface_hub's truth values: `1`, `ON`, `YES`, `TRUE` (any case).
pub fn is_true(value: &str) -> bool {
    matches!(value.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
}

/// Where models come from and go to, and how hard to try.
#[derive(Clone, Debug)]
pub struct Hub {
    /// The hub's base URL, without a trailing `/`.
    pub endpoint: String,
    /// The hub cache folder (`.../hub`).
    pub cache: PathBuf,
    /// Never touch the network.
    pub offline: bool,
    pub token: Option<Secret>,
    /// Show progress bars (only ever on a terminal).
    pub progress: bool,
    /// Connecting, and the revision and metadata requests.
    pub etag_timeout: Duration,
    /// Silence while reading a download.
    pub download_timeout: Duration,
    /// Attempts in a row without new bytes before a download gives up.
    pub retries: u32,
    pub retry_delay: Duration,
}

impl Hub {
    /// An online hub at `endpoint` with huggingface_hub's defaults.
    pub fn new(endpoint: impl Into<String>, cache: impl Into<PathBuf>) -> Hub {
        Hub {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            cache: cache.into(),
            offline: false,
            token: None,
            progress: true,
            etag_timeout: Duration::from_secs(10),
            download_timeout: Duration::from_secs(10),
            retries: 5,
            retry_delay: Duration::from_secs(1),
        }
    }

    /// Settings from the environment, as huggingface_hub reads them.
    pub fn from_env(token: Option<Secret>) -> Hub {
        Hub::from_lookup(&clem_core::hf::hub_cache_dir(), token, |k| std::env::var(k).ok())
    }

    /// [`Hub::from_env`] with a given variable lookup.
    pub fn from_lookup(cache: &Path, token: Option<Secret>, get: impl Fn(&str) -> Option<String>) -> Hub {
        let endpoint = get("HF_ENDPOINT").filter(|e| !e.trim().is_empty()).unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let mut hub = Hub::new(endpoint.trim(), cache);
        hub.token = token;
        let offline = get("HF_HUB_OFFLINE").filter(|v| !v.is_empty()).or_else(|| get("TRANSFORMERS_OFFLINE"));
        hub.offline = offline.is_some_and(|v| is_true(&v));
        let seconds = |k: &str| get(k).and_then(|v| v.trim().parse::<u64>().ok()).filter(|s| *s > 0);
        if let Some(s) = seconds("HF_HUB_ETAG_TIMEOUT") {
            hub.etag_timeout = Duration::from_secs(s);
        }
        if let Some(s) = seconds("HF_HUB_DOWNLOAD_TIMEOUT") {
            hub.download_timeout = Duration::from_secs(s);
        }
        hub.progress = !get("HF_HUB_DISABLE_PROGRESS_BARS").is_some_and(|v| is_true(&v));
        hub
    }

    /// The snapshot folder of `repo_id` at `revision` holding every file `want` names.
    pub fn snapshot(&self, repo_id: &str, revision: &str, want: &Want) -> Result<PathBuf, HubError> {
        let snap = Snapshot::open(self, repo_id, revision)?;
        select::fetch_wanted(&snap, want)?;
        snap.finish()
    }
}

/// Why a snapshot is read from the cache only.
#[derive(Clone, Debug)]
enum Why {
    Offline,
    Unreachable(String),
    /// The hub answered the revision request with an error (gated, not found, 5xx).
    Refused(HubError),
}

enum Mode {
    Online { clients: Clients, ctx: Ctx },
    Cache(Why),
}

/// One revision of one repository: its commit and files, from the hub or from the cache.
pub struct Snapshot<'h> {
    hub: &'h Hub,
    layout: Layout,
    revision: String,
    commit: String,
    files: Vec<String>,
    mode: Mode,
}

impl<'h> Snapshot<'h> {
    /// Asks the hub for the revision's commit and listing; falls back to the cache when offline, unreachable or
    /// refused (a revision that does not exist is an error).
    pub fn open(hub: &'h Hub, repo_id: &str, revision: &str) -> Result<Snapshot<'h>, HubError> {
        if !cache::valid_repo_id(repo_id) {
            return Err(HubError::BadRepoId { id: repo_id.into() });
        }
        if !cache::safe_relative(revision) {
            return Err(HubError::RevisionNotFound {
                repo: repo_id.into(),
                revision: revision.into(),
                url: "(not a valid revision name)".into(),
            });
        }
        let layout = Layout::new(&hub.cache, repo_id);
        if hub.offline {
            return Snapshot::from_cache(hub, layout, revision, Why::Offline);
        }
        let internal = |message: String| HubError::Internal { repo: repo_id.into(), message };
        let ctx = Ctx {
            repo: repo_id.into(),
            endpoint: hub.endpoint.clone(),
            token: hub.token.clone(),
            timeout: hub.etag_timeout,
        };
        let url = wire::hub_url(&hub.endpoint, &["api", "models"], repo_id, &["revision", revision])?;
        let clients = Clients::new(hub.etag_timeout, hub.download_timeout).map_err(internal)?;
        let answer = crate::http::executor::run_sync(wire::repo_info(
            clients.clone(),
            ctx.clone(),
            url.clone(),
            revision.into(),
        ))
        .map_err(internal)?;
        match answer {
            Ok(info) => {
                if !cache::safe_name(&info.sha) {
                    return Err(HubError::Protocol {
                        repo: repo_id.into(),
                        url: wire::display_url(&url),
                        message: format!("{:?} is not a commit", info.sha),
                    });
                }
                let files = info.files.into_iter().filter(|f| cache::safe_relative(f)).collect();
                Ok(Snapshot {
                    hub,
                    layout,
                    revision: revision.into(),
                    commit: info.sha,
                    files,
                    mode: Mode::Online { clients, ctx },
                })
            }
            Err(Failure::Unreachable(detail)) => Snapshot::from_cache(hub, layout, revision, Why::Unreachable(detail)),
            Err(Failure::Hub(e @ HubError::RevisionNotFound { .. })) => Err(e),
            Err(Failure::Hub(e)) => Snapshot::from_cache(hub, layout, revision, Why::Refused(e)),
        }
    }

    fn from_cache(hub: &'h Hub, layout: Layout, revision: &str, why: Why) -> Result<Snapshot<'h>, HubError> {
        let mut snap = Snapshot {
            hub,
            layout,
            revision: revision.into(),
            commit: String::new(),
            files: Vec::new(),
            mode: Mode::Cache(why),
        };
        let Some(commit) = snap.layout.cached_commit(revision) else {
            return Err(snap.not_cached("the model").unwrap_or_else(|| HubError::Internal {
                repo: snap.layout.repo_id.clone(),
                message: "no cached snapshot".into(),
            }));
        };
        snap.files = cache::list_files(&snap.layout.snapshot(&commit));
        snap.commit = commit;
        Ok(snap)
    }

    pub fn repo(&self) -> &str {
        &self.layout.repo_id
    }

    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The commit this snapshot is of.
    pub fn commit(&self) -> &str {
        &self.commit
    }

    /// The repository's files (online), or the cached snapshot's.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    pub fn has(&self, file: &str) -> bool {
        self.files.iter().any(|f| f == file)
    }

    pub fn is_online(&self) -> bool {
        matches!(self.mode, Mode::Online { .. })
    }

    /// The snapshot folder.
    pub fn dir(&self) -> PathBuf {
        self.layout.snapshot(&self.commit)
    }

    /// When reading from the cache only: the error for `what` missing from it.
    pub fn not_cached(&self, what: &str) -> Option<HubError> {
        let Mode::Cache(why) = &self.mode else { return None };
        let (repo, what, cache) = (self.layout.repo_id.clone(), what.to_string(), self.layout.cache.clone());
        Some(match why {
            Why::Offline => HubError::Offline { repo, what, cache },
            Why::Unreachable(detail) => {
                HubError::Unreachable { repo, what, endpoint: self.hub.endpoint.clone(), cache, detail: detail.clone() }
            }
            Why::Refused(e) => e.clone(),
        })
    }

    /// The path of a listed file in the snapshot, downloading it when it is not there yet.
    pub fn fetch(&self, file: &str) -> Result<PathBuf, HubError> {
        if !self.has(file) {
            return Err(self.not_cached(file).unwrap_or_else(|| HubError::NotInRepo {
                repo: self.repo().into(),
                revision: self.revision.clone(),
                file: file.into(),
                needed_by: "clemrs".into(),
            }));
        }
        let pointer = self.layout.pointer(&self.commit, file);
        match &self.mode {
            Mode::Cache(_) => Ok(pointer),
            Mode::Online { .. } if pointer.is_file() => Ok(pointer),
            Mode::Online { clients, ctx } => self.download(clients, ctx, file),
        }
    }

    fn download(&self, clients: &Clients, ctx: &Ctx, file: &str) -> Result<PathBuf, HubError> {
        let repo = self.repo();
        let internal = |message: String| HubError::Internal { repo: repo.into(), message };
        let suffix: Vec<&str> = ["resolve", self.commit.as_str()].into_iter().chain(file.split('/')).collect();
        let url = wire::hub_url(&self.hub.endpoint, &[], repo, &suffix)?;
        let answer = crate::http::executor::run_sync(wire::file_meta(
            clients.clone(),
            ctx.clone(),
            url.clone(),
            self.commit.clone(),
            file.into(),
        ))
        .map_err(internal)?;
        let meta = match answer {
            Ok(meta) => meta,
            Err(Failure::Unreachable(detail)) => {
                return Err(HubError::Unreachable {
                    repo: repo.into(),
                    what: file.into(),
                    endpoint: self.hub.endpoint.clone(),
                    cache: self.layout.cache.clone(),
                    detail,
                })
            }
            Err(Failure::Hub(e)) => return Err(e),
        };
        let protocol =
            |message: String| HubError::Protocol { repo: repo.into(), url: wire::display_url(&url), message };
        if meta.commit != self.commit {
            return Err(protocol(format!("answered for commit {} instead of {}", meta.commit, self.commit)));
        }
        if !cache::safe_name(&meta.etag) {
            return Err(protocol(format!("the ETag {:?} cannot name a file", meta.etag)));
        }
        let etag = meta.etag.clone();
        cache::tag_cache_dir(&self.layout.cache);
        let blob = self.layout.blob(&etag);
        if !blob.is_file() {
            let _lock = BlobLock::acquire(&self.layout.lock(&etag), || {
                if self.show_progress() {
                    eprintln!("{repo}: waiting for another process downloading {file}");
                }
            })?;
            if !blob.is_file() {
                self.download_blob(clients, ctx, file, meta, &blob)?;
            }
        }
        self.layout.link(&self.commit, file, &etag)
    }

    fn download_blob(
        &self,
        clients: &Clients,
        ctx: &Ctx,
        file: &str,
        meta: wire::FileMeta,
        blob: &Path,
    ) -> Result<(), HubError> {
        let dir = blob.parent().unwrap_or(&self.layout.repo_dir);
        std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
        let tmp = dir.join(format!("{}.{:08x}.incomplete", meta.etag, fastrand::u32(..)));
        let progress = self.progress_bar(file, meta.size);
        let fetch = wire::Fetch {
            revision: self.commit.clone(),
            file: file.into(),
            meta,
            dest: tmp.clone(),
            retries: self.hub.retries,
            retry_delay: self.hub.retry_delay,
            progress: progress.clone(),
        };
        let result = crate::http::executor::run_sync(wire::download(clients.clone(), ctx.clone(), fetch))
            .map_err(|message| HubError::Internal { repo: self.repo().into(), message })
            .and_then(|r| r);
        progress.finish_and_clear();
        let result = result.and_then(|_| std::fs::rename(&tmp, blob).map_err(|e| HubError::io(blob, e)));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn show_progress(&self) -> bool {
        self.hub.progress && std::io::stderr().is_terminal()
    }

    fn progress_bar(&self, file: &str, size: Option<u64>) -> ProgressBar {
        if !self.show_progress() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let chars: Vec<char> = file.chars().collect();
        let shown: String = if chars.len() > 40 {
            format!("(…){}", chars[chars.len() - 40..].iter().collect::<String>())
        } else {
            file.to_string()
        };
        bar.set_message(shown);
        bar
    }

    /// Records the revision's commit in `refs/` (online) and returns the snapshot folder.
    pub fn finish(self) -> Result<PathBuf, HubError> {
        let dir = self.dir();
        if self.is_online() {
            std::fs::create_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
            self.layout.write_ref(&self.revision, &self.commit)?;
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_read_as_huggingface_hub_does() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let hub = Hub::from_lookup(Path::new("/c"), None, vars(&[]));
        assert_eq!(hub.endpoint, DEFAULT_ENDPOINT);
        assert!(!hub.offline && hub.progress);
        let hub = Hub::from_lookup(
            Path::new("/c"),
            None,
            vars(&[
                ("HF_ENDPOINT", "http://mirror:8080/"),
                ("HF_HUB_OFFLINE", "yes"),
                ("HF_HUB_ETAG_TIMEOUT", "3"),
                ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
            ]),
        );
        assert_eq!(hub.endpoint, "http://mirror:8080");
        assert!(hub.offline && !hub.progress);
        assert_eq!(hub.etag_timeout, Duration::from_secs(3));
        assert!(Hub::from_lookup(Path::new("/c"), None, vars(&[("TRANSFORMERS_OFFLINE", "1")])).offline);
        let hub =
            Hub::from_lookup(Path::new("/c"), None, vars(&[("HF_HUB_OFFLINE", "0"), ("TRANSFORMERS_OFFLINE", "1")]));
        assert!(!hub.offline, "HF_HUB_OFFLINE wins when set");
        for (v, t) in
            [("1", true), ("true", true), ("ON", true), ("Yes", true), ("0", false), ("no", false), ("", false)]
        {
            assert_eq!(is_true(v), t, "{v}");
        }
    }

    #[test]
    fn implicit_token_from_env_then_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("token"), "hf_fromfile123\n").expect("write");
        let home = tmp.path().to_string_lossy().into_owned();
        let lookup = |pairs: Vec<(&'static str, String)>| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        let t = token_from_lookup(lookup(vec![("HF_TOKEN", " hf_env456 ".into()), ("HF_HOME", home.clone())]));
        assert_eq!(t.as_ref().map(Secret::expose), Some("hf_env456"));
        let t = token_from_lookup(lookup(vec![("HF_HOME", home.clone())]));
        assert_eq!(t.as_ref().map(Secret::expose), Some("hf_fromfile123"));
        let t =
            token_from_lookup(lookup(vec![("HF_HOME", home.clone()), ("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1".into())]));
        assert!(t.is_none());
        let t = token_from_lookup(lookup(vec![("HF_HOME", "/nonexistent-clemrs".into())]));
        assert!(t.is_none());
    }

    #[test]
    fn requires_api_key_picks_the_key_json_section() {
        let keys = Keys::from_json_str(r#"{"huggingface": {"api_key": "hf_keyjson789"}}"#, Path::new("key.json"))
            .expect("keys");
        let spec: ModelSpec = serde_json::from_value(serde_json::json!({
            "model_name": "m", "backend": "huggingface_local", "huggingface_id": "o/m",
            "model_config": {"requires_api_key": true}
        }))
        .expect("spec");
        assert_eq!(token_for(&spec, &keys).as_ref().map(Secret::expose), Some("hf_keyjson789"));
    }

    #[test]
    fn bad_ids_and_offline_without_cache_fail_without_network() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut hub = Hub::new("http://127.0.0.1:9", tmp.path());
        let e = hub.snapshot("/no/such/folder", "main", &Want::HfFolder).expect_err("not an id");
        assert!(matches!(e, HubError::BadRepoId { .. }), "{e:?}");
        hub.offline = true;
        let e = hub.snapshot("org/model", "main", &Want::HfFolder).expect_err("not cached");
        let text = e.to_string();
        assert!(text.contains("org/model") && text.contains("offline mode is on"), "{text}");
        assert!(text.contains(&tmp.path().display().to_string()), "{text}");
    }
}

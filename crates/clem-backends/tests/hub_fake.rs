//! `clem_backends::hub` against a fake Hugging Face hub on 127.0.0.1 that speaks the real wire format: the
//! revision API (`sha` + `siblings`), `resolve` with `ETag` / `X-Repo-Commit`, LFS files redirected (302) to a
//! "CDN" on another origin with `X-Linked-Etag` / `X-Linked-Size`, `X-Error-Code` errors (GatedRepo unless the
//! right bearer token is sent, RepoNotFound, RevisionNotFound, EntryNotFound), a renamed repository (relative
//! 307), and a CDN that dies mid-download.
//!
//! Each test passes endpoint and cache explicitly (no process-global environment), checks the cache layout byte
//! for byte, counts the requests each call makes, and checks that the token shows up in no error text. When
//! python3 has `huggingface_hub`, the last test checks that it reads our cache and that we read its cache (made
//! by its own `hf_hub_download` from the same fake hub) and that both caches are identical.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clem_backends::hub::{Hub, HubError, Want};
use clem_core::keys::Secret;
use serde_json::json;
use tokio::runtime::Runtime;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "hf_SECRETtoken4f9c2a7e1b3d";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone)]
struct FakeFile {
    path: &'static str,
    bytes: Vec<u8>,
    lfs: bool,
    /// Listed by the revision API, but `resolve` says EntryNotFound.
    ghost: bool,
}

impl FakeFile {
    fn new(path: &'static str, bytes: impl Into<Vec<u8>>) -> FakeFile {
        FakeFile { path, bytes: bytes.into(), lfs: false, ghost: false }
    }
    fn lfs(path: &'static str, bytes: impl Into<Vec<u8>>) -> FakeFile {
        FakeFile { lfs: true, ..FakeFile::new(path, bytes) }
    }
    fn hash(&self, salt: &str) -> String {
        let mut out = String::new();
        let mut i = 0u64;
        while out.len() < 64 {
            let mut h = DefaultHasher::new();
            (salt, self.path, &self.bytes, i).hash(&mut h);
            out.push_str(&format!("{:016x}", h.finish()));
            i += 1;
        }
        out
    }
    /// The etag the cache names the blob by: sha256-like for LFS, git-sha1-like for regular files.
    fn etag(&self) -> String {
        let h = self.hash("content");
        if self.lfs {
            h
        } else {
            h[..40].to_string()
        }
    }
    /// An LFS file's git pointer etag: sent as `ETag`, never to be used for the blob.
    fn pointer_etag(&self) -> String {
        self.hash("pointer")[..40].to_string()
    }
}

#[derive(Clone)]
struct FakeRepo {
    id: &'static str,
    files: Vec<FakeFile>,
    gated: bool,
}

struct HubResponder {
    repos: Vec<FakeRepo>,
    cdn: String,
}

fn error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("x-error-code", code)
        .insert_header("x-error-message", message)
        .set_body_json(json!({"error": message}))
}

impl HubResponder {
    fn repo(&self, id: &str) -> Option<&FakeRepo> {
        self.repos.iter().find(|r| r.id == id)
    }
}

impl Respond for HubResponder {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let segs: Vec<String> = req.url.path_segments().map(|s| s.map(String::from).collect()).unwrap_or_default();
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        match s.as_slice() {
            ["api", "models", "old-org", "tiny", "revision", rev] => {
                ResponseTemplate::new(307).insert_header("location", format!("/api/models/org/tiny/revision/{rev}"))
            }
            ["api", "models", org, name, "revision", rev] => {
                let id = format!("{org}/{name}");
                let Some(repo) = self.repo(&id) else {
                    return error(401, "RepoNotFound", "Repository not found");
                };
                if *rev != "main" && *rev != SHA {
                    return error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
                }
                let siblings: Vec<_> = repo.files.iter().map(|f| json!({"rfilename": f.path})).collect();
                ResponseTemplate::new(200).set_body_json(json!({
                    "_id": "64f0", "id": id, "modelId": id, "sha": SHA, "private": false,
                    "gated": if repo.gated { json!("manual") } else { json!(false) },
                    "siblings": siblings,
                }))
            }
            ["old-org", "tiny", "resolve", rest @ ..] => {
                ResponseTemplate::new(307).insert_header("location", format!("/org/tiny/resolve/{}", rest.join("/")))
            }
            [org, name, "resolve", rev, path @ ..] if !path.is_empty() => {
                let id = format!("{org}/{name}");
                let Some(repo) = self.repo(&id) else {
                    return error(401, "RepoNotFound", "Repository not found");
                };
                if *rev != "main" && *rev != SHA {
                    return error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
                }
                if repo.gated {
                    let auth = req.headers.get("authorization").and_then(|v| v.to_str().ok());
                    let message = format!(
                        "Access to model {id} is restricted. You must have access to it and be authenticated to \
                         access it. Please log in."
                    );
                    match auth {
                        None => return error(401, "GatedRepo", &message),
                        Some(a) if a != format!("Bearer {TOKEN}") => return error(403, "GatedRepo", &message),
                        Some(_) => {}
                    }
                }
                let path = path.join("/");
                let Some(file) = repo.files.iter().find(|f| f.path == path && !f.ghost) else {
                    return error(404, "EntryNotFound", &format!("{path} does not exist on \"main\""))
                        .insert_header("x-repo-commit", SHA);
                };
                if file.lfs {
                    ResponseTemplate::new(302)
                        .insert_header("location", format!("{}/repos/{}?X-Amz-Signature=cdnsig", self.cdn, file.etag()))
                        .insert_header("x-repo-commit", SHA)
                        .insert_header("x-linked-etag", format!("\"{}\"", file.etag()))
                        .insert_header("x-linked-size", file.bytes.len().to_string())
                        .insert_header("etag", format!("\"{}\"", file.pointer_etag()))
                } else {
                    ResponseTemplate::new(200)
                        .insert_header("x-repo-commit", SHA)
                        .insert_header("etag", format!("W/\"{}\"", file.etag()))
                        .set_body_bytes(file.bytes.clone())
                }
            }
            _ => ResponseTemplate::new(404),
        }
    }
}

/// The CDN: blobs by etag, with `Range`.
struct CdnResponder {
    files: Vec<FakeFile>,
}

impl Respond for CdnResponder {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let etag = req.url.path().trim_start_matches("/repos/");
        let Some(file) = self.files.iter().find(|f| f.etag() == etag) else { return ResponseTemplate::new(404) };
        let start = range_start(req.headers.get("range").and_then(|v| v.to_str().ok()));
        match start {
            Some(n) if n > 0 && n < file.bytes.len() => ResponseTemplate::new(206)
                .insert_header("content-range", format!("bytes {n}-{}/{}", file.bytes.len() - 1, file.bytes.len()))
                .set_body_bytes(file.bytes[n..].to_vec()),
            _ => ResponseTemplate::new(200).set_body_bytes(file.bytes.clone()),
        }
    }
}

fn range_start(value: Option<&str>) -> Option<usize> {
    value?.trim().strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

/// A fake hub and its CDN, each on its own runtime-driven server.
struct FakeHub {
    rt: Runtime,
    hub: MockServer,
    cdn: MockServer,
}

impl FakeHub {
    /// `cdn`: where LFS files redirect to (default: this hub's own CDN server).
    fn start(repos: Vec<FakeRepo>, cdn: Option<String>) -> FakeHub {
        let rt = Runtime::new().expect("runtime");
        let (hub, cdn_server) = rt.block_on(async { (MockServer::start().await, MockServer::start().await) });
        let all: Vec<FakeFile> = repos.iter().flat_map(|r| r.files.clone()).collect();
        let cdn_url = cdn.unwrap_or_else(|| cdn_server.uri());
        rt.block_on(async {
            Mock::given(any()).respond_with(HubResponder { repos, cdn: cdn_url }).mount(&hub).await;
            Mock::given(any()).respond_with(CdnResponder { files: all }).mount(&cdn_server).await;
        });
        FakeHub { rt, hub, cdn: cdn_server }
    }
    fn uri(&self) -> String {
        self.hub.uri()
    }
    /// `METHOD path` of every request the hub received.
    fn hub_requests(&self) -> Vec<String> {
        requests(&self.rt, &self.hub)
    }
    fn cdn_requests(&self) -> Vec<Request> {
        self.rt.block_on(self.cdn.received_requests()).unwrap_or_default()
    }
    fn all_hub_requests(&self) -> Vec<Request> {
        self.rt.block_on(self.hub.received_requests()).unwrap_or_default()
    }
}

fn requests(rt: &Runtime, server: &MockServer) -> Vec<String> {
    rt.block_on(server.received_requests())
        .unwrap_or_default()
        .iter()
        .map(|r| format!("{} {}", r.method, r.url.path()))
        .collect()
}

fn tiny_repo() -> FakeRepo {
    FakeRepo {
        id: "org/tiny",
        files: vec![
            FakeFile::new(".gitattributes", "*.safetensors filter=lfs\n"),
            FakeFile::new("README.md", "# tiny\n"),
            FakeFile::new("config.json", r#"{"architectures": ["LlamaForCausalLM"]}"#),
            FakeFile::new("generation_config.json", r#"{"eos_token_id": 2}"#),
            FakeFile::new("tokenizer.json", r#"{"version": "1.0"}"#),
            FakeFile::new("tokenizer_config.json", r#"{"eos_token": "</s>"}"#),
            FakeFile::lfs("model.safetensors", (0..5000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
        ],
        gated: false,
    }
}

fn wanted_tiny() -> Vec<&'static str> {
    vec!["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"]
}

fn hub(endpoint: &str, cache: &Path) -> Hub {
    let mut hub = Hub::new(endpoint, cache);
    hub.progress = false;
    hub.retries = 2;
    hub.retry_delay = Duration::from_millis(10);
    hub.etag_timeout = Duration::from_secs(5);
    hub
}

fn assert_no_token(e: &HubError) {
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(TOKEN) && !text.contains("4f9c2a7e1b3d"), "the token leaked into: {text}");
        assert!(!text.contains("cdnsig"), "a CDN signature leaked into: {text}");
    }
}

/// Every entry under `root` (`.locks` aside): relative path -> `dir`, `link -> target` or `file <bytes>`.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("inside").to_string_lossy().into_owned();
            if rel == ".locks" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let what = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).expect("link").display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                show_bytes(&std::fs::read(&path).expect("read"))
            };
            out.insert(rel, what);
        }
    }
    out
}

/// A file's bytes for comparison: short ones as text, long ones as length + hash.
fn show_bytes(bytes: &[u8]) -> String {
    if bytes.len() <= 200 {
        format!("file {:?}", String::from_utf8_lossy(bytes))
    } else {
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        format!("file of {} bytes, hash {:016x}", bytes.len(), h.finish())
    }
}

/// The cache huggingface_hub would make for `files` of `repo`, written out by hand.
fn expected_tree(repo: &FakeRepo, files: &[&str]) -> BTreeMap<String, String> {
    let folder = format!("models--{}", repo.id.replace('/', "--"));
    let mut out = BTreeMap::new();
    for d in ["", "/blobs", "/refs", "/snapshots", &format!("/snapshots/{SHA}")] {
        out.insert(format!("{folder}{d}"), "dir".into());
    }
    out.insert(format!("{folder}/refs/main"), show_bytes(SHA.as_bytes()));
    out.insert("CACHEDIR.TAG".into(), show_bytes(clem_backends::hub::cache::CACHEDIR_TAG.as_bytes()));
    for name in files {
        let f = repo.files.iter().find(|f| f.path == *name).expect("listed");
        let depth = name.split('/').count() + 1;
        let mut parts: Vec<&str> = name.split('/').collect();
        parts.pop();
        let mut dir = format!("{folder}/snapshots/{SHA}");
        for p in parts {
            dir = format!("{dir}/{p}");
            out.insert(dir.clone(), "dir".into());
        }
        out.insert(
            format!("{folder}/snapshots/{SHA}/{name}"),
            format!("link -> {}blobs/{}", "../".repeat(depth), f.etag()),
        );
        out.insert(format!("{folder}/blobs/{}", f.etag()), show_bytes(&f.bytes));
    }
    out
}

#[test]
fn hf_folder_fills_the_cache_in_huggingface_hub_layout_once() {
    let repo = tiny_repo();
    let fake = FakeHub::start(vec![repo.clone()], None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut h = hub(&fake.uri(), tmp.path());
    h.token = Some(Secret::new(TOKEN));

    let dir = h.snapshot("org/tiny", "main", &Want::HfFolder).expect("downloads");
    assert_eq!(dir, tmp.path().join("models--org--tiny").join("snapshots").join(SHA));
    assert_eq!(tree(tmp.path()), expected_tree(&repo, &wanted_tiny()));
    let lfs = repo.files.iter().find(|f| f.lfs).expect("lfs file");
    assert!(tmp.path().join(format!(".locks/models--org--tiny/{}.lock", lfs.etag())).is_file());

    // One revision request, a HEAD per wanted file, a GET per regular file; the LFS file comes from the CDN.
    let mut got = fake.hub_requests();
    got.sort();
    let mut want = vec!["GET /api/models/org/tiny/revision/main".to_string()];
    for f in wanted_tiny() {
        want.push(format!("HEAD /org/tiny/resolve/{SHA}/{f}"));
        if f != "model.safetensors" {
            want.push(format!("GET /org/tiny/resolve/{SHA}/{f}"));
        }
    }
    want.sort();
    assert_eq!(got, want);
    // The hub gets the token, the CDN (another origin) does not.
    assert!(fake
        .all_hub_requests()
        .iter()
        .all(|r| r.headers.get("authorization").is_some_and(|v| v.to_str().ok() == Some(&format!("Bearer {TOKEN}")))));
    let cdn = fake.cdn_requests();
    assert_eq!(cdn.len(), 1);
    assert!(cdn[0].headers.get("authorization").is_none(), "the token went to the CDN");
    assert_eq!(cdn[0].url.path(), format!("/repos/{}", lfs.etag()));

    // Second call: the revision check only.
    let before = fake.hub_requests().len();
    assert_eq!(h.snapshot("org/tiny", "main", &Want::HfFolder).expect("cached"), dir);
    assert_eq!(fake.hub_requests()[before..], ["GET /api/models/org/tiny/revision/main".to_string()]);
    assert_eq!(fake.cdn_requests().len(), 1);

    // Offline: no request at all, same folder.
    h.offline = true;
    let before = (fake.hub_requests().len(), fake.cdn_requests().len());
    assert_eq!(h.snapshot("org/tiny", "main", &Want::HfFolder).expect("offline"), dir);
    assert_eq!((fake.hub_requests().len(), fake.cdn_requests().len()), before);
    assert_eq!(tree(tmp.path()), expected_tree(&repo, &wanted_tiny()));

    // A renamed repository: the hub's relative redirects are followed, the cache is under the name asked for.
    h.offline = false;
    let old = h.snapshot("old-org/tiny", "main", &Want::HfFolder).expect("renamed");
    assert_eq!(old, tmp.path().join("models--old-org--tiny").join("snapshots").join(SHA));
    assert!(old.join("model.safetensors").is_file());
}

#[test]
fn offline_without_cache_makes_no_request_and_says_so() {
    let fake = FakeHub::start(vec![tiny_repo()], None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut h = hub(&fake.uri(), tmp.path());
    h.offline = true;
    h.token = Some(Secret::new(TOKEN));
    let e = h.snapshot("org/tiny", "main", &Want::HfFolder).expect_err("not cached");
    let text = e.to_string();
    assert!(matches!(e, HubError::Offline { .. }), "{e:?}");
    assert!(text.contains("org/tiny") && text.contains("offline mode is on"), "{text}");
    assert!(text.contains(&tmp.path().display().to_string()), "{text}");
    assert_no_token(&e);
    assert!(fake.hub_requests().is_empty() && fake.cdn_requests().is_empty());
    assert!(std::fs::read_dir(tmp.path()).expect("read").next().is_none(), "nothing written");
}

#[test]
fn unreachable_hub_falls_back_to_a_complete_cache_else_says_what_to_do() {
    let fake = FakeHub::start(vec![tiny_repo()], None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = hub(&fake.uri(), tmp.path()).snapshot("org/tiny", "main", &Want::HfFolder).expect("downloads");

    // A port nothing listens on.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let mut h = hub(&dead, tmp.path());
    h.token = Some(Secret::new(TOKEN));
    assert_eq!(h.snapshot("org/tiny", "main", &Want::HfFolder).expect("cache"), dir);

    let e = h.snapshot("org/other", "main", &Want::HfFolder).expect_err("not cached");
    let text = e.to_string();
    assert!(matches!(e, HubError::Unreachable { .. }), "{e:?}");
    for part in ["org/other", dead.as_str(), "models--org--other", "cannot be reached", "point huggingface_id"] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    assert!(text.contains(&tmp.path().display().to_string()), "{text}");
    assert_no_token(&e);

    // A cached snapshot that lacks a wanted file is not "fully cached".
    std::fs::remove_file(dir.join("tokenizer.json")).expect("rm");
    let e = h.snapshot("org/tiny", "main", &Want::HfFolder).expect_err("incomplete cache");
    assert!(matches!(&e, HubError::Unreachable { what, .. } if what == "tokenizer.json"), "{e:?}");
}

#[test]
fn gated_repo_needs_the_right_token_which_never_shows() {
    let mut repo = tiny_repo();
    repo.id = "org/gated";
    repo.gated = true;
    let fake = FakeHub::start(vec![repo], None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut h = hub(&fake.uri(), tmp.path());

    let e = h.snapshot("org/gated", "main", &Want::HfFolder).expect_err("no token");
    let text = e.to_string();
    assert!(matches!(e, HubError::Gated { token_sent: false, .. }), "{e:?}");
    for part in ["org/gated", "gated", "key.json", "\"huggingface\"", "requires_api_key", "HF_TOKEN"] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }

    let wrong = "hf_WRONGtoken0000000000";
    h.token = Some(Secret::new(wrong));
    let e = h.snapshot("org/gated", "main", &Want::HfFolder).expect_err("wrong token");
    assert!(matches!(e, HubError::Gated { token_sent: true, .. }), "{e:?}");
    assert!(!e.to_string().contains(wrong) && !format!("{e:?}").contains(wrong), "{e}");

    h.token = Some(Secret::new(TOKEN));
    let dir = h.snapshot("org/gated", "main", &Want::HfFolder).expect("right token");
    assert!(dir.join("model.safetensors").is_file());
    let sent = fake.all_hub_requests();
    assert!(sent
        .iter()
        .any(|r| r.headers.get("authorization").is_some_and(|v| v.to_str().ok() == Some(&format!("Bearer {TOKEN}")))));
}

#[test]
fn hub_errors_name_repo_revision_and_file() {
    let mut repo = tiny_repo();
    repo.id = "org/ghost";
    for f in &mut repo.files {
        f.ghost = f.path == "tokenizer.json";
    }
    let no_weights = FakeRepo {
        id: "org/noweights",
        files: vec![
            FakeFile::new("config.json", "{}"),
            FakeFile::new("tokenizer.json", "{}"),
            FakeFile::new("tokenizer_config.json", "{}"),
            FakeFile::lfs("pytorch_model.bin", "x"),
        ],
        gated: false,
    };
    let fake = FakeHub::start(vec![repo, no_weights], None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut h = hub(&fake.uri(), tmp.path());
    h.token = Some(Secret::new(TOKEN));

    let e = h.snapshot("org/missing", "main", &Want::HfFolder).expect_err("no repo");
    assert!(matches!(e, HubError::RepoNotFound { token_sent: true, .. }), "{e:?}");
    assert!(e.to_string().contains("org/missing") && e.to_string().contains(&fake.uri()), "{e}");
    assert_no_token(&e);

    let e = h.snapshot("org/ghost", "v9", &Want::HfFolder).expect_err("no revision");
    assert!(matches!(&e, HubError::RevisionNotFound { revision, .. } if revision == "v9"), "{e:?}");

    let e = h.snapshot("org/ghost", "main", &Want::HfFolder).expect_err("no entry");
    assert!(matches!(&e, HubError::EntryNotFound { file, .. } if file == "tokenizer.json"), "{e:?}");
    assert_no_token(&e);

    let e = h.snapshot("org/noweights", "main", &Want::HfFolder).expect_err("no safetensors");
    assert!(matches!(e, HubError::NotInRepo { .. }) && e.to_string().contains("safetensors"), "{e}");
    assert!(!tmp.path().join("models--org--noweights/refs/main").exists(), "refs only once complete");
}

#[test]
fn gguf_globs_split_parts_and_nested_paths() {
    let repo = FakeRepo {
        id: "org/gguf",
        files: vec![
            FakeFile::new("README.md", "r"),
            FakeFile::lfs("q4/m-00001-of-00002.gguf", "GGUF part one"),
            FakeFile::lfs("q4/m-00002-of-00002.gguf", "GGUF part two"),
            FakeFile::lfs("m.Q8_0.gguf", "GGUF q8"),
            FakeFile::lfs("mmproj-f16.gguf", "GGUF proj"),
        ],
        gated: false,
    };
    let fake = FakeHub::start(vec![repo.clone()], None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let h = hub(&fake.uri(), tmp.path());

    let none: &[String] = &[];
    let want = Want::Gguf { filename: "*00001-of-00002.gguf", additional_files: none };
    let dir = h.snapshot("org/gguf", "main", &want).expect("split");
    assert_eq!(tree(tmp.path()), expected_tree(&repo, &["q4/m-00001-of-00002.gguf", "q4/m-00002-of-00002.gguf"]));
    assert_eq!(
        std::fs::read_link(dir.join("q4/m-00002-of-00002.gguf")).expect("link"),
        PathBuf::from(format!("../../../blobs/{}", repo.files[2].etag()))
    );

    let extra = vec!["mmproj-*.gguf".to_string()];
    let dir =
        h.snapshot("org/gguf", "main", &Want::Gguf { filename: "*Q8_0.gguf", additional_files: &extra }).expect("q8");
    assert_eq!(std::fs::read(dir.join("mmproj-f16.gguf")).expect("read"), b"GGUF proj");
    assert_eq!(std::fs::read(dir.join("m.Q8_0.gguf")).expect("read"), b"GGUF q8");

    let e = h.snapshot("org/gguf", "main", &Want::Gguf { filename: "*.gguf", additional_files: none }).expect_err("4");
    assert!(matches!(&e, HubError::Ambiguous { matches, .. } if matches.len() == 4), "{e:?}");
    let e =
        h.snapshot("org/gguf", "main", &Want::Gguf { filename: "*Q5_K*.gguf", additional_files: none }).expect_err("0");
    assert!(e.to_string().contains("m.Q8_0.gguf") && e.to_string().contains("model_config.filename"), "{e}");

    // Offline, the cached files answer the same globs; a quantisation never downloaded is "not cached".
    let mut off = hub(&fake.uri(), tmp.path());
    off.offline = true;
    assert_eq!(
        off.snapshot("org/gguf", "main", &Want::Gguf { filename: "*Q8_0.gguf", additional_files: none }).expect("q8"),
        dir
    );
    let e = off
        .snapshot("org/gguf", "main", &Want::Gguf { filename: "*Q5_K*.gguf", additional_files: none })
        .expect_err("q5");
    assert!(matches!(e, HubError::Offline { .. }) && e.to_string().contains("Q5_K"), "{e}");
}

/// A CDN that sends `per_connection` bytes of `content` and then drops the connection; with `honour_range` it
/// resumes from a `Range`, else it starts over every time.
struct DyingServer {
    addr: String,
    stop: Arc<AtomicBool>,
    ranges: Arc<Mutex<Vec<Option<usize>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DyingServer {
    fn start(content: Vec<u8>, per_connection: usize, honour_range: bool) -> DyingServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = Arc::new(AtomicBool::new(false));
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let (stop2, ranges2) = (stop.clone(), ranges.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut range = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("range") {
                            range = range_start(Some(v));
                        }
                    }
                }
                ranges2.lock().expect("lock").push(range);
                let start = if honour_range { range.unwrap_or(0).min(content.len()) } else { 0 };
                let head = if start > 0 {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\n\r\n",
                        content.len() - start,
                        content.len() - 1,
                        content.len()
                    )
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", content.len())
                };
                let end = (start + per_connection).min(content.len());
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&content[start..end]);
                let _ = stream.flush();
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        });
        DyingServer { addr, stop, ranges, thread: Some(thread) }
    }
}

impl Drop for DyingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_download_cut_short_never_looks_complete_and_resumes_with_range() {
    let repo = tiny_repo();
    let weights = repo.files.iter().find(|f| f.lfs).expect("lfs").clone();
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo_dir = tmp.path().join("models--org--tiny");

    {
        let dying = DyingServer::start(weights.bytes.clone(), 700, false);
        let fake = FakeHub::start(vec![repo.clone()], Some(dying.addr.clone()));
        let mut h = hub(&fake.uri(), tmp.path());
        h.token = Some(Secret::new(TOKEN));
        let e = h.snapshot("org/tiny", "main", &Want::HfFolder).expect_err("cut short");
        assert!(matches!(&e, HubError::Download { file, .. } if file == "model.safetensors"), "{e:?}");
        assert!(e.to_string().contains("3 attempts"), "{e}");
        assert_no_token(&e);
        // Every attempt got bytes, none got further: the retries ran out.
        assert_eq!(dying.ranges.lock().expect("lock").len(), 3);
    }
    // Nothing complete-looking: no blob named by the etag, no leftover part, no snapshot entry, no ref.
    let blobs: Vec<String> = std::fs::read_dir(repo_dir.join("blobs"))
        .expect("blobs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!blobs.contains(&weights.etag()), "{blobs:?}");
    assert!(blobs.iter().all(|b| !b.contains(".incomplete")), "{blobs:?}");
    assert_eq!(blobs.len(), 4, "the four small files: {blobs:?}");
    assert!(std::fs::symlink_metadata(repo_dir.join("snapshots").join(SHA).join("model.safetensors")).is_err());
    assert!(!repo_dir.join("refs/main").exists());
    let mut off = hub("http://127.0.0.1:9", tmp.path());
    off.offline = true;
    let e = off.snapshot("org/tiny", "main", &Want::HfFolder).expect_err("weights not cached");
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // A CDN that drops every connection after 1200 bytes but honours Range: the download resumes to the end.
    let dying = DyingServer::start(weights.bytes.clone(), 1200, true);
    let fake = FakeHub::start(vec![repo.clone()], Some(dying.addr.clone()));
    let dir = hub(&fake.uri(), tmp.path()).snapshot("org/tiny", "main", &Want::HfFolder).expect("resumes");
    assert_eq!(std::fs::read(dir.join("model.safetensors")).expect("read"), weights.bytes);
    assert_eq!(*dying.ranges.lock().expect("lock"), vec![None, Some(1200), Some(2400), Some(3600), Some(4800)]);
    assert_eq!(tree(tmp.path()), expected_tree(&repo, &wanted_tiny()));
    // Only the revision check and the weights were requested: the small files were already cached.
    let mut got = fake.hub_requests();
    got.sort();
    assert_eq!(
        got,
        vec![
            "GET /api/models/org/tiny/revision/main".to_string(),
            format!("HEAD /org/tiny/resolve/{SHA}/model.safetensors")
        ]
    );
}

/// python3 with huggingface_hub, or why not (a skip, except under CI).
fn huggingface_hub_python() -> Option<()> {
    let ok = Command::new("python3").args(["-c", "import huggingface_hub"]).output().is_ok_and(|o| o.status.success());
    if ok {
        return Some(());
    }
    let reason = "python3 with huggingface_hub is not available (pip install huggingface_hub)";
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and a prerequisite is missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

fn python(script: &str, args: &[&str], home: &Path) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    for var in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HOME"] {
        cmd.env_remove(var);
    }
    let out = cmd
        .env("HF_HOME", home)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn huggingface_hub_and_clemrs_read_each_others_cache() {
    if huggingface_hub_python().is_none() {
        return;
    }
    let repo = tiny_repo();
    let fake = FakeHub::start(vec![repo.clone()], None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ours, theirs, home) = (tmp.path().join("ours"), tmp.path().join("theirs"), tmp.path().join("home"));
    let dir = hub(&fake.uri(), &ours).snapshot("org/tiny", "main", &Want::HfFolder).expect("downloads");

    // huggingface_hub, offline, finds our files.
    let found = python(
        "import sys\n\
         from huggingface_hub import snapshot_download, try_to_load_from_cache\n\
         cache = sys.argv[1]\n\
         print(snapshot_download('org/tiny', cache_dir=cache, local_files_only=True))\n\
         for f in sys.argv[2:]:\n    print(try_to_load_from_cache('org/tiny', f, cache_dir=cache))\n",
        &[&[ours.to_str().expect("utf-8")][..], &wanted_tiny()[..]].concat(),
        &home,
    );
    let lines: Vec<&str> = found.lines().collect();
    assert_eq!(lines[0], dir.display().to_string());
    for (line, f) in lines[1..].iter().zip(wanted_tiny()) {
        assert_eq!(*line, dir.join(f).display().to_string());
    }

    // huggingface_hub downloads the same files from the same fake hub: the caches are identical, and ours reads
    // theirs offline.
    python(
        "import sys\n\
         from huggingface_hub import hf_hub_download\n\
         for f in sys.argv[3:]:\n    hf_hub_download('org/tiny', f, cache_dir=sys.argv[1], endpoint=sys.argv[2])\n",
        &[&[theirs.to_str().expect("utf-8"), fake.uri().as_str()][..], &wanted_tiny()[..]].concat(),
        &home,
    );
    assert_eq!(tree(&theirs), tree(&ours));
    let mut off = hub("http://127.0.0.1:9", &theirs);
    off.offline = true;
    assert_eq!(
        off.snapshot("org/tiny", "main", &Want::HfFolder).expect("reads theirs"),
        theirs.join("models--org--tiny").join("snapshots").join(SHA)
    );
}

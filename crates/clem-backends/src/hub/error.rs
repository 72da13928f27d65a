//! What can go wrong between a `huggingface_id` and a filled cache, each error naming the repository, the file
//! and the URL (never the token, and never a CDN URL's signed query).

use std::path::PathBuf;
use std::sync::Arc;

/// Where to put a token, for messages about gated and private repositories.
const TOKEN_HINT: &str = "set model_config.requires_api_key to true and fill the \"huggingface\" section of key.json \
                          ({\"huggingface\": {\"api_key\": \"hf_...\"}}), or set HF_TOKEN";

/// A model that cannot be found, fetched or cached.
#[derive(Clone, Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "{id:?} is neither a local folder nor a Hugging Face repository id (\"org/name\"): give an existing folder \
         or a repository id"
    )]
    BadRepoId { id: String },
    #[error("HF_ENDPOINT {endpoint:?} is not a usable URL: {message}")]
    BadEndpoint { endpoint: String, message: String },
    #[error(
        "{repo}: {what} is not in the Hugging Face cache ({}) and offline mode is on (HF_HUB_OFFLINE): unset \
         HF_HUB_OFFLINE to download it, copy the model's cache folder there, or point huggingface_id at a local folder",
        cache.display()
    )]
    Offline { repo: String, what: String, cache: PathBuf },
    #[error(
        "{repo}: {what} is not in the Hugging Face cache ({}) and the hub at {endpoint} cannot be reached \
         ({detail}): download it on a machine that can reach the hub and copy its folder {} into that cache (as \
         huggingface_hub lays it out), or put the model's files in a folder and point huggingface_id at it",
        cache.display(), super::cache::repo_folder_name(repo)
    )]
    Unreachable { repo: String, what: String, endpoint: String, cache: PathBuf, detail: String },
    #[error(
        "{repo}: the model is gated on {endpoint} ({url}: {message}): {}",
        if *token_sent {
            format!("the token that was sent has no access; accept the model's conditions at {endpoint}/{repo} \
                     with the account of that token")
        } else {
            format!("accept the model's conditions at {endpoint}/{repo}, then {TOKEN_HINT}")
        }
    )]
    Gated { repo: String, endpoint: String, url: String, token_sent: bool, message: String },
    #[error(
        "{repo}: repository not found at {endpoint} ({url}: {message}){}",
        if *token_sent {
            "; check the id, and that the token's account can read the repository if it is private".to_string()
        } else {
            format!("; check the id; if the repository is private or gated, {TOKEN_HINT}")
        }
    )]
    RepoNotFound { repo: String, endpoint: String, url: String, token_sent: bool, message: String },
    #[error("{repo}: revision {revision:?} does not exist ({url})")]
    RevisionNotFound { repo: String, revision: String, url: String },
    #[error("{repo}: {file} does not exist at revision {revision} ({url})")]
    EntryNotFound { repo: String, revision: String, file: String, url: String },
    #[error(
        "{repo}: the hub rejected the token ({url}: {message}): check the \"huggingface\" api_key in key.json, or HF_TOKEN"
    )]
    BadToken { repo: String, url: String, message: String },
    #[error("{repo}: {url} answered HTTP {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status { repo: String, url: String, status: u16, message: String },
    #[error("{repo}: {url}: {message}")]
    Protocol { repo: String, url: String, message: String },
    #[error("{repo}: downloading {file} from {url} failed: {detail}; run again to retry")]
    Download { repo: String, file: String, url: String, detail: String },
    #[error("{repo}: {file} (needed by {needed_by}) is not in the repository at revision {revision}")]
    NotInRepo { repo: String, revision: String, file: String, needed_by: String },
    #[error("{repo}: model_config.{key}: {pattern:?} is not a valid glob: {message}")]
    BadPattern { repo: String, key: &'static str, pattern: String, message: String },
    #[error(
        "{repo}: model_config.{key}: no file of the repository matches {pattern:?}{}",
        if candidates.is_empty() { " (it holds no .gguf file)".to_string() }
        else { format!(" (.gguf files there: {})", candidates.join(", ")) }
    )]
    NoMatch { repo: String, key: &'static str, pattern: String, candidates: Vec<String> },
    #[error(
        "{repo}: model_config.{key}: {pattern:?} matches {} files of the repository: {}; make the pattern name one",
        matches.len(), matches.join(", ")
    )]
    Ambiguous { repo: String, key: &'static str, pattern: String, matches: Vec<String> },
    #[error("{repo}: {}: {message}", path.display())]
    Invalid { repo: String, path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: Arc<std::io::Error> },
    #[error("{repo}: {message}")]
    Internal { repo: String, message: String },
}

impl HubError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> HubError {
        HubError::Io { path: path.into(), source: Arc::new(source) }
    }
}

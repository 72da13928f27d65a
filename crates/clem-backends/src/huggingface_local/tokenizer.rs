//! `tokenizer.json` through the `tokenizers` crate (fancy-regex backend), used as transformers uses it here:
//! prompts are encoded without adding special tokens (the chat template has them), outputs are decoded with
//! special tokens kept, and `clean_up_tokenization_spaces` is applied when the tokenizer config asks for it.

use std::path::Path;

/// A tokenizer that cannot be loaded or used.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {message}")]
pub struct TokenizerError {
    pub context: String,
    pub message: String,
}

/// A loaded `tokenizer.json`.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    clean_up_spaces: bool,
}

impl HfTokenizer {
    /// Loads `dir/tokenizer.json`; `clean_up_spaces` is tokenizer_config's `clean_up_tokenization_spaces`.
    pub fn load(dir: &Path, clean_up_spaces: bool) -> Result<HfTokenizer, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| TokenizerError { context: path.display().to_string(), message: e.to_string() })?;
        Ok(HfTokenizer { inner, clean_up_spaces })
    }

    /// Token ids of a rendered prompt (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError { context: "encoding".into(), message: e.to_string() })
    }

    /// Text of ids, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let text = self
            .inner
            .decode(ids, false)
            .map_err(|e| TokenizerError { context: "decoding".into(), message: e.to_string() })?;
        Ok(if self.clean_up_spaces { clean_up_tokenization(&text) } else { text })
    }

    /// Text of ids with special tokens left out (stop strings and streamed text look at what a reader sees).
    pub fn decode_plain(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let text = self
            .inner
            .decode(ids, true)
            .map_err(|e| TokenizerError { context: "decoding".into(), message: e.to_string() })?;
        Ok(if self.clean_up_spaces { clean_up_tokenization(&text) } else { text })
    }

    /// The id of a token's text, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// transformers' `clean_up_tokenization`.
pub fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

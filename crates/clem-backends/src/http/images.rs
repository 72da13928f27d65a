//! Images in messages: whether an entry allows them (`model_config.multimodality`), and turning a message's
//! image (a URL, a data URL or a local file) into what a provider takes (a URL or base64 with its media type).
//!
//! Local files come from trusted callers (clembench games pass paths, as with clemcore); `clem serve` never
//! passes one on from a client (clem-serve `images.rs`). Even so a file is read only when it is a regular file
//! of at most [`MAX_IMAGE_FILE_BYTES`]. Which providers take what: OpenAI-style chat (`openai`,
//! `openai_compatible`, `openrouter`, `azure`, `mistral`, `cohere`) and `anthropic` take an `http(s)` URL as it
//! is (the provider fetches it) or inline data; `google` takes inline data only and refuses URLs.

use std::io::Read as _;

use base64::Engine as _;
use clem_core::{Message, ModelSpec};
use serde_json::Value;

/// Largest image file read from disk (providers take at most 20 MB per image).
pub const MAX_IMAGE_FILE_BYTES: u64 = 20 << 20;

/// What the entry's `multimodality` allows (clemcore: `{"single_image": true, "multiple_images": true}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImagePolicy {
    pub allowed: bool,
    pub multiple: bool,
}

impl ImagePolicy {
    pub fn from_spec(spec: &ModelSpec) -> Self {
        let Some(Value::Object(m)) = spec.config("multimodality") else {
            return ImagePolicy::default();
        };
        let flag = |k: &str| m.get(k).is_some_and(|v| v.as_bool().unwrap_or(!v.is_null()));
        let multiple = flag("multiple_images");
        ImagePolicy { allowed: multiple || flag("single_image"), multiple }
    }

    /// Refuses messages with images the entry does not allow, saying what to change.
    pub fn check(&self, model_id: &str, messages: &[Message]) -> Result<(), String> {
        for (i, m) in messages.iter().enumerate() {
            if m.image.is_empty() {
                continue;
            }
            if !self.allowed {
                return Err(format!(
                    "message {i} has an image but model {model_id} takes none: its registry entry needs \
                     model_config.multimodality, e.g. {{\"single_image\": true}}"
                ));
            }
            if m.image.len() > 1 && !self.multiple {
                return Err(format!(
                    "message {i} has {} images but model {model_id} takes one per message \
                     (model_config.multimodality.multiple_images is not set)",
                    m.image.len()
                ));
            }
        }
        Ok(())
    }
}

/// An image ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    /// An `http(s)` URL, sent as it is.
    Url(String),
    /// Bytes in base64 with their media type (from a local file or a data URL).
    Inline { media_type: String, base64: String },
}

impl Image {
    /// A message's image entry: an `http(s)` URL, a `data:` URL, or a local file read now.
    pub fn load(source: &str) -> Result<Image, String> {
        if source.starts_with("http://") || source.starts_with("https://") {
            return Ok(Image::Url(source.to_string()));
        }
        if let Some(rest) = source.strip_prefix("data:") {
            let (media_type, data) =
                rest.split_once(";base64,").ok_or_else(|| "image: a data URL must be base64 encoded".to_string())?;
            return Ok(Image::Inline { media_type: media_type.to_string(), base64: data.to_string() });
        }
        let bytes = read_file(source)?;
        let media_type = media_type(source, &bytes)
            .ok_or_else(|| format!("image {source}: not a PNG, JPEG, GIF or WebP file"))?
            .to_string();
        Ok(Image::Inline { media_type, base64: base64::engine::general_purpose::STANDARD.encode(bytes) })
    }

    /// As a URL: the URL itself, or a `data:` URL.
    pub fn url(&self) -> String {
        match self {
            Image::Url(u) => u.clone(),
            Image::Inline { media_type, base64 } => format!("data:{media_type};base64,{base64}"),
        }
    }
}

/// A regular file's bytes, at most [`MAX_IMAGE_FILE_BYTES`] (a device such as /dev/zero never ends, a FIFO
/// blocks: both refused before reading).
fn read_file(source: &str) -> Result<Vec<u8>, String> {
    let cannot = |e: std::io::Error| format!("image {source}: cannot read: {e}");
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // Opening a FIFO for reading waits for a writer; non-blocking, it opens at once (and is refused below).
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(source).map_err(cannot)?;
    if !file.metadata().map_err(cannot)?.is_file() {
        return Err(format!("image {source}: not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_IMAGE_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(format!("image {source}: larger than {MAX_IMAGE_FILE_BYTES} bytes"));
    }
    Ok(bytes)
}

/// The media type from the file's first bytes, else from its extension.
fn media_type(path: &str, bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG") {
        return Some("image/png");
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some("image/jpeg");
    }
    if bytes.starts_with(b"GIF8") {
        return Some("image/gif");
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Some("image/webp");
    }
    let ext = std::path::Path::new(path).extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "png" => Some("image/png"),
        "jpg" | "jpeg" => Some("image/jpeg"),
        "gif" => Some("image/gif"),
        "webp" => Some("image/webp"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(config: Value) -> ModelSpec {
        serde_json::from_value(json!({"model_name": "m", "model_config": config})).expect("spec")
    }

    #[test]
    fn policy_follows_multimodality() {
        let with_image = vec![Message { image: vec!["a.png".into()], ..Message::user("look") }];
        let two = vec![Message { image: vec!["a.png".into(), "b.png".into()], ..Message::user("look") }];
        let none = ImagePolicy::from_spec(&spec(json!({})));
        assert!(none.check("m", &[Message::user("x")]).is_ok());
        assert!(none.check("m", &with_image).expect_err("refused").contains("multimodality"));
        let single = ImagePolicy::from_spec(&spec(json!({"multimodality": {"single_image": true}})));
        assert!(single.check("m", &with_image).is_ok());
        assert!(single.check("m", &two).expect_err("one only").contains("2 images"));
        let multi = ImagePolicy::from_spec(&spec(json!({"multimodality": {"multiple_images": true}})));
        assert!(multi.check("m", &two).is_ok());
    }

    #[test]
    fn loads_files_urls_and_data_urls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pic.bin");
        std::fs::write(&path, b"\x89PNG\r\n\x1a\nrest").expect("write");
        let img = Image::load(path.to_str().expect("utf8")).expect("loads");
        assert_eq!(img.url(), "data:image/png;base64,iVBORw0KGgpyZXN0");
        assert_eq!(Image::load("https://x/y.jpg"), Ok(Image::Url("https://x/y.jpg".into())));
        assert_eq!(
            Image::load("data:image/gif;base64,AAAA"),
            Ok(Image::Inline { media_type: "image/gif".into(), base64: "AAAA".into() })
        );
        assert!(Image::load("/no/such/file.png").expect_err("missing").contains("cannot read"));
        let txt = dir.path().join("notes.txt");
        std::fs::write(&txt, b"hello").expect("write");
        assert!(Image::load(txt.to_str().expect("utf8")).is_err());
    }

    #[test]
    fn reads_only_regular_files_of_bounded_size() {
        // Before: std::fs::read("/dev/zero") read until memory ran out, and a FIFO blocked for a writer.
        assert!(Image::load("/dev/zero").expect_err("device").contains("not a regular file"));
        assert!(Image::load("/tmp").expect_err("folder").contains("not a regular file"));
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.png");
        let file = std::fs::File::create(&big).expect("create");
        file.set_len(MAX_IMAGE_FILE_BYTES + 1).expect("sparse file");
        assert!(Image::load(big.to_str().expect("utf8")).expect_err("too big").contains("larger than"));
        #[cfg(unix)]
        {
            let fifo = dir.path().join("fifo.png");
            let path = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("path");
            // SAFETY: mkfifo reads the NUL-terminated path only.
            assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
            assert!(Image::load(fifo.to_str().expect("utf8")).expect_err("fifo").contains("not a regular file"));
        }
    }
}

//! Images from clients. A client's `image_url` is accepted only as a `data:image/...;base64,` URL or an `http(s)`
//! URL: a `Message.image` entry may also be a local path (clembench games pass files, and backends read them),
//! so anything else would let a client make the server read its own files. A model whose entry allows no images
//! refuses image parts rather than dropping them silently.
//!
//! Providers that take URLs get `http(s)` URLs as they are and fetch them themselves. One needs the bytes: the
//! Gemini API (backend `google`) takes images inline only, so for it the server fetches the image itself, with a
//! size and a time limit, and only from public addresses (the host is resolved and every address checked; the
//! connection goes to the checked addresses) unless `--allow-private-urls`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use clem_core::{Message, ModelSpec};
use reqwest::Url;
use serde_json::Value;

use crate::error::ApiError;

/// Backends whose provider refuses image URLs (clem-backends `google`: inline data only).
const INLINE_ONLY_BACKENDS: &[&str] = &["google"];

/// Redirects followed when fetching an image, each one checked like the first URL.
const MAX_REDIRECTS: usize = 3;

/// The one answer for every image source that is neither a `data:` nor an `http(s)` URL. It never depends on the
/// source's content (a path that exists and one that does not get the same answer).
pub fn refused_source() -> ApiError {
    ApiError::invalid(
        Some("messages"),
        "image_url.url must be an http(s) URL or a data:image/...;base64 URL; local paths and file: URLs are not \
         accepted.",
    )
    .with_code("invalid_image_url")
}

/// Checks one client image source: a syntactically valid `http(s)` URL with a host, or a base64 image data URL.
pub fn check_source(url: &str) -> Result<(), ApiError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let ok = rest.split_once(";base64,").is_some_and(|(media, _)| media.starts_with("image/"));
        return if ok { Ok(()) } else { Err(refused_source()) };
    }
    match Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(refused_source()),
    }
}

/// What the model's entry allows (`model_config.multimodality`, read as clem-backends' `ImagePolicy` reads it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub allowed: bool,
    pub multiple: bool,
    /// The server must fetch `http(s)` images and pass them inline.
    pub inline_only: bool,
}

impl Policy {
    pub fn of(spec: &ModelSpec) -> Policy {
        let inline_only = spec.backend().is_some_and(|b| INLINE_ONLY_BACKENDS.contains(&b));
        let Some(Value::Object(m)) = spec.config("multimodality") else {
            return Policy { inline_only, ..Policy::default() };
        };
        let flag = |k: &str| m.get(k).is_some_and(|v| v.as_bool().unwrap_or(!v.is_null()));
        let multiple = flag("multiple_images");
        Policy { allowed: multiple || flag("single_image"), multiple, inline_only }
    }

    /// Refuses images the model does not take (today's alternative is a message that silently loses them).
    pub fn check(&self, model: &str, messages: &[Message]) -> Result<(), ApiError> {
        for (i, m) in messages.iter().enumerate() {
            let refuse = |why: String| {
                Err(ApiError::invalid(Some("messages"), format!("messages[{i}]: {why}"))
                    .with_code("image_not_supported"))
            };
            if !m.image.is_empty() && !self.allowed {
                return refuse(format!("model `{model}` does not take images."));
            }
            if m.image.len() > 1 && !self.multiple {
                return refuse(format!("model `{model}` takes one image per message, not {}.", m.image.len()));
            }
        }
        Ok(())
    }
}

/// How the server fetches an image for an inline-only provider.
#[derive(Clone, Debug)]
pub struct FetchLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
    pub allow_private: bool,
}

/// Replaces every `http(s)` image of `messages` by a `data:` URL of the fetched bytes.
pub async fn inline_http_images(messages: &mut [Message], limits: &FetchLimits) -> Result<(), ApiError> {
    for (i, m) in messages.iter_mut().enumerate() {
        for image in m.image.iter_mut() {
            if image.starts_with("data:") {
                continue;
            }
            let fetched = tokio::time::timeout(limits.timeout, fetch(image, limits))
                .await
                .unwrap_or_else(|_| Err(format!("no complete answer within {} s", limits.timeout.as_secs_f64())));
            *image = fetched.map_err(|why| {
                ApiError::invalid(Some("messages"), format!("messages[{i}]: the image could not be fetched: {why}"))
                    .with_code("invalid_image_url")
            })?;
        }
    }
    Ok(())
}

/// Fetches one image as a `data:` URL, following at most [`MAX_REDIRECTS`] redirects.
async fn fetch(source: &str, limits: &FetchLimits) -> Result<String, String> {
    // ring is the only crypto provider compiled in; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut url = Url::parse(source).map_err(|_| "not a valid URL".to_string())?;
    for _ in 0..=MAX_REDIRECTS {
        if !matches!(url.scheme(), "http" | "https") {
            return Err("only http(s) URLs are fetched".into());
        }
        let addrs = resolve(&url).await?;
        if !limits.allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
            return Err("its host is a private, loopback or link-local address, which this server does not fetch \
                        from (clem serve --allow-private-urls)"
                .into());
        }
        let mut client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("clemrs/", env!("CARGO_PKG_VERSION")));
        if let Host::Name(name) = host(&url)? {
            // Connect to the addresses just checked, not to a second (possibly different) DNS answer.
            client = client.resolve_to_addrs(name, &addrs);
        }
        let client = client.build().map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let mut response = client.get(url.clone()).send().await.map_err(|_| "the request failed".to_string())?;
        let status = response.status();
        if status.is_redirection() {
            let next = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| format!("HTTP {} without a valid Location", status.as_u16()))?;
            url = next;
            continue;
        }
        if !status.is_success() {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        if response.content_length().is_some_and(|n| n > limits.max_bytes as u64) {
            return Err(format!("larger than {} bytes", limits.max_bytes));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|_| "the download broke off".to_string())? {
            if bytes.len() + chunk.len() > limits.max_bytes {
                return Err(format!("larger than {} bytes", limits.max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        let media_type = media_type(&bytes).ok_or("not a PNG, JPEG, GIF or WebP image")?;
        return Ok(format!("data:{media_type};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)));
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// The URL's host: an address literal (IPv6 in brackets) or a name.
fn host(url: &Url) -> Result<Host<'_>, String> {
    let h = url.host_str().ok_or("the URL has no host")?;
    let literal = h.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(h);
    Ok(literal.parse::<IpAddr>().map_or(Host::Name(h), Host::Ip))
}

/// Every address the URL's host stands for.
async fn resolve(url: &Url) -> Result<Vec<SocketAddr>, String> {
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match host(url)? {
        Host::Ip(ip) => vec![SocketAddr::new(ip, port)],
        Host::Name(name) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|_| "its host name does not resolve".to_string())?
            .collect(),
    };
    if addrs.is_empty() {
        return Err("its host name does not resolve".into());
    }
    Ok(addrs)
}

/// The media type from the first bytes.
fn media_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF8") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// A globally routable unicast address: not loopback, private, link-local, shared (CGNAT), unspecified,
/// multicast, broadcast, documentation, benchmarking or reserved; IPv6 forms that embed an IPv4 address are
/// judged by it.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[..5] == [0; 5] && (s[5] == 0 || s[5] == 0xffff) {
        // ::/96 (IPv4-compatible, and :: and ::1) and ::ffff:0:0/96 (IPv4-mapped).
        return is_public_v4(embedded(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7])); // NAT64
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2])); // 6to4
    }
    !(ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0) // Teredo
        || s[..4] == [0x100, 0, 0, 0]) // discard-only
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_data_or_http_urls_only() {
        for ok in ["https://x.org/a.png", "http://1.2.3.4:8080/p?q", "data:image/png;base64,iVBO"] {
            assert!(check_source(ok).is_ok(), "{ok}");
        }
        let refused = [
            "/etc/passwd",
            "/no/such/file.png",
            "pic.png",
            "file:///etc/passwd",
            "FILE:/etc/passwd",
            "ftp://x/y.png",
            "data:text/plain;base64,aGk=",
            "data:image/png,raw",
            "http://",
            "",
        ];
        for bad in refused {
            assert_eq!(check_source(bad), Err(refused_source()), "{bad}");
        }
    }

    #[test]
    fn private_addresses_are_not_public() {
        let private = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
        ];
        for ip in private {
            assert!(!is_public(ip.parse().expect(ip)), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:0808:0808::"] {
            assert!(is_public(ip.parse().expect(ip)), "{ip}");
        }
    }

    #[test]
    fn policy_reads_multimodality_and_the_backend() {
        let spec = |v: Value| -> ModelSpec { serde_json::from_value(v).expect("spec") };
        let none = Policy::of(&spec(serde_json::json!({"model_name": "m", "backend": "openai"})));
        assert_eq!(none, Policy::default());
        let look = vec![Message { image: vec!["https://x/a.png".into()], ..Message::user("look") }];
        assert_eq!(none.check("m", &look).expect_err("no images").code, Some("image_not_supported"));
        let gemini = Policy::of(&spec(serde_json::json!({"model_name": "g", "backend": "google",
            "model_config": {"multimodality": {"single_image": true}}})));
        assert_eq!(gemini, Policy { allowed: true, multiple: false, inline_only: true });
        assert!(gemini.check("g", &look).is_ok());
        let two = vec![Message { image: vec!["https://x/a.png".into(); 2], ..Message::user("look") }];
        assert!(gemini.check("g", &two).is_err());
    }
}

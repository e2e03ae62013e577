//! One request, its redirects followed by hand: every hop's headers are kept (the Hub puts
//! `x-linked-etag` on the 302, not on the CDN's answer), and `Authorization` goes only to the
//! host it was given for, never to a CDN after a cross-host redirect.

use ureq::http::{HeaderMap, Uri};
use ureq::Body;

use super::{NetConfig, NetError};

/// Redirects followed before giving up.
const MAX_HOPS: usize = 10;

/// The request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Headers only.
    Head,
    /// Headers and body.
    Get,
}

/// A bearer token and the one host (`host:port`) it may be sent to.
#[derive(Clone)]
pub struct Auth {
    /// The authority the token belongs to, as in the URL (`huggingface.co`, `127.0.0.1:8080`).
    pub host: String,
    token: String,
}

impl Auth {
    /// A token for the host of `url`; `None` when the URL has no host.
    pub fn for_url(url: &str, token: String) -> Option<Self> {
        Some(Auth { host: authority(url)?, token })
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        write!(f, "Auth {{ host: {:?}, token: <hidden> }}", self.host)
    }
}

/// A redirect answered on the way.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The URL asked.
    pub url: String,
    /// The status (301, 302, 303, 307, 308).
    pub status: u16,
    /// Its headers.
    pub headers: HeaderMap,
}

/// The final answer and the redirects before it.
#[derive(Debug)]
pub struct Sent {
    /// The redirects, in order.
    pub hops: Vec<Hop>,
    /// The URL that gave the final answer.
    pub url: String,
    /// The final answer (any status; a redirect only when `follow_cross_host` was false).
    pub response: ureq::http::Response<Body>,
}

impl Sent {
    /// The header `name` from the latest answer that has it: the final one, then the hops
    /// from last to first.
    pub fn header(&self, name: &str) -> Option<String> {
        std::iter::once(self.response.headers())
            .chain(self.hops.iter().rev().map(|h| &h.headers))
            .find_map(|h| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string))
    }
}

/// Sends `method url` (with `Range: bytes={from}-` when `range_from` is given) and follows
/// redirects: relative and same-host ones always, cross-host ones only when
/// `follow_cross_host`. `auth` is attached only while the URL's host is `auth.host`.
pub fn send(
    agent: &ureq::Agent,
    cfg: &NetConfig,
    method: Method,
    url: &str,
    range_from: Option<u64>,
    auth: Option<&Auth>,
    follow_cross_host: bool,
) -> Result<Sent, NetError> {
    let mut hops = Vec::new();
    let mut url = url.to_string();
    loop {
        let host = authority(&url).ok_or_else(|| NetError::permanent(format!("bad URL: {url}")))?;
        let mut request = match method {
            Method::Head => agent.head(&url),
            Method::Get => agent.get(&url),
        };
        if let Some(from) = range_from {
            request = request.header("Range", format!("bytes={from}-"));
        }
        if let Some(auth) = auth.filter(|a| a.host == host) {
            request = request.header("Authorization", format!("Bearer {}", auth.token));
        }
        let response = request.call().map_err(|e| NetError::from_ureq(e, cfg.stall))?;
        let status = response.status().as_u16();
        if !matches!(status, 301 | 302 | 303 | 307 | 308) {
            return Ok(Sent { hops, url, response });
        }
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| NetError::permanent(format!("{url} answered HTTP {status} without a Location")))?;
        let next = join(&url, location).ok_or_else(|| NetError::permanent(format!("{url} redirected to a bad URL: {location}")))?;
        let cross = authority(&next).as_deref() != Some(host.as_str());
        hops.push(Hop { url: url.clone(), status, headers: response.headers().clone() });
        if cross && !follow_cross_host {
            return Ok(Sent { hops, url, response });
        }
        if hops.len() > MAX_HOPS {
            return Err(NetError::permanent(format!("more than {MAX_HOPS} redirects from {}", hops[0].url)));
        }
        url = next;
    }
}

/// `host[:port]` of an absolute URL.
pub(crate) fn authority(url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    uri.scheme()?;
    uri.authority().map(|a| a.as_str().rsplit('@').next().unwrap_or("").to_string())
}

/// Resolves a `Location` against the URL that sent it: absolute, scheme-relative (`//host/x`),
/// absolute path (`/api/x`) or relative path (`x`).
pub(crate) fn join(base: &str, location: &str) -> Option<String> {
    if location.contains("://") {
        return Some(location.to_string());
    }
    let uri: Uri = base.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let auth = uri.authority()?.as_str();
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Some(format!("{scheme}://{auth}{location}"));
    }
    let dir = uri.path().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    Some(format!("{scheme}://{auth}{dir}/{location}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_url_that_sent_them() {
        let base = "https://huggingface.co/timm/r50/resolve/main/config.json";
        assert_eq!(join(base, "/api/resolve-cache/x").unwrap(), "https://huggingface.co/api/resolve-cache/x");
        assert_eq!(join(base, "https://cdn.example/b?sig=1").unwrap(), "https://cdn.example/b?sig=1");
        assert_eq!(join(base, "//cdn.example/b").unwrap(), "https://cdn.example/b");
        assert_eq!(join(base, "other.json").unwrap(), "https://huggingface.co/timm/r50/resolve/main/other.json");
        assert_eq!(authority("http://127.0.0.1:8080/a").unwrap(), "127.0.0.1:8080");
        assert_eq!(authority("https://user@cdn.example/a").unwrap(), "cdn.example");
        assert_eq!(authority("/relative"), None);
    }

    #[test]
    fn the_token_is_never_printed() {
        let auth = Auth::for_url("https://huggingface.co/x", "hf_secret".into()).unwrap();
        assert!(!format!("{auth:?}").contains("hf_secret"));
        assert_eq!(auth.host, "huggingface.co");
    }
}

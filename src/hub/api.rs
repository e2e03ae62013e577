//! The Hub's documented JSON API for data set repositories, through lastlayer's own HTTP client
//! (timeouts, retries; the token to the Hub's host only):
//!
//! - `GET /api/datasets/{repo}/revision/{revision}`: the commit (`sha`), the files
//!   (`siblings`) and the README's YAML as JSON (`cardData`);
//! - `GET /api/datasets/{repo}/tree/{revision}/{path}?recursive=true`: the files, a page at a
//!   time, the next page named by the `Link: <...>; rel="next"` header;
//! - `GET /api/datasets/{repo}/parquet`: the Hub's parquet conversion,
//!   `{config: {split: [urls]}}`.

use serde::Deserialize;

use super::hf_cache::{endpoint, token};
use crate::net::{send, with_retries, Auth, Method, NetConfig, NetError};

/// Pages of a tree listing followed before giving up (1,000 files a page on the real Hub).
const MAX_PAGES: usize = 10_000;

/// What `/api/datasets/{repo}/revision/{revision}` says.
#[derive(Debug, Clone, Deserialize)]
pub struct RevisionInfo {
    /// The commit the revision resolves to.
    pub sha: String,
    /// The README's YAML header, as JSON (`configs`, `dataset_info`).
    #[serde(default, rename = "cardData")]
    pub card_data: Option<serde_json::Value>,
}

/// One entry of a tree listing.
#[derive(Debug, Clone, Deserialize)]
pub struct TreeEntry {
    /// `file` or `directory`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The path in the repository.
    pub path: String,
}

/// A client of one data set repository's API.
pub struct DatasetApi {
    repo: String,
    base: String,
    agent: ureq::Agent,
    net: NetConfig,
    auth: Option<Auth>,
}

impl DatasetApi {
    /// The API of data set `repo` (`owner/name`) on `HF_ENDPOINT`, with `HF_TOKEN` if set.
    pub fn new(repo: &str, net: &NetConfig) -> Self {
        let base = endpoint();
        let auth = token().and_then(|t| Auth::for_url(&base, t));
        DatasetApi { repo: repo.to_string(), base, agent: net.agent(), net: net.clone(), auth }
    }

    /// The revision's commit and card.
    pub fn revision(&self, revision: &str) -> Result<RevisionInfo, NetError> {
        let url = format!("{}/api/datasets/{}/revision/{}", self.base, self.repo, quote(revision));
        let (body, _) = self.get(&url)?;
        serde_json::from_str(&body).map_err(|e| NetError::permanent(format!("{url} did not answer the Hub's JSON ({e}); is HF_ENDPOINT a Hugging Face Hub?")))
    }

    /// Every file under `path` (the whole repository when empty) at `revision`, following the
    /// `Link` pages.
    pub fn tree(&self, revision: &str, path: &str) -> Result<Vec<TreeEntry>, NetError> {
        let mut url = format!("{}/api/datasets/{}/tree/{}", self.base, self.repo, quote(revision));
        if !path.is_empty() {
            url.push('/');
            url.push_str(path);
        }
        url.push_str("?recursive=true&expand=false");
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let (body, next) = self.get(&url)?;
            let page: Vec<TreeEntry> =
                serde_json::from_str(&body).map_err(|e| NetError::permanent(format!("{url} did not answer a file list ({e})")))?;
            out.extend(page);
            match next {
                Some(n) => url = crate::net::join_url(&url, &n).unwrap_or(n),
                None => return Ok(out),
            }
        }
        Err(NetError::permanent(format!("{url}: more than {MAX_PAGES} pages of files")))
    }

    /// The Hub's parquet conversion: `{config: {split: [urls]}}`; `None` when there is none
    /// (404).
    pub fn parquet(&self) -> Result<Option<serde_json::Value>, NetError> {
        let url = format!("{}/api/datasets/{}/parquet", self.base, self.repo);
        match self.get(&url) {
            Ok((body, _)) => serde_json::from_str(&body).map(Some).map_err(|e| NetError::permanent(format!("{url} did not answer JSON ({e})"))),
            Err(e) if e.message.contains("HTTP 404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A `GET` with retries: the body, and the `rel="next"` link if any.
    fn get(&self, url: &str) -> Result<(String, Option<String>), NetError> {
        with_retries(&self.net, url, || {
            let sent = send(&self.agent, &self.net, Method::Get, url, None, self.auth.as_ref(), true)?;
            let status = sent.response.status().as_u16();
            if !(200..300).contains(&status) {
                return Err(NetError::from_status(status, &sent.url));
            }
            let next = sent.header("link").and_then(|l| next_link(&l));
            let body = sent
                .response
                .into_body()
                .with_config()
                .limit(256 << 20)
                .read_to_string()
                .map_err(|e| NetError::from_ureq(e, self.net.stall))?;
            Ok((body, next))
        })
    }
}

/// A revision as one path segment (`refs/convert/parquet` → `refs%2Fconvert%2Fparquet`).
pub fn quote(revision: &str) -> String {
    revision.replace('%', "%25").replace('/', "%2F")
}

/// The `rel="next"` URL of a `Link` header.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        is_next.then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_give_the_next_page() {
        let h = "<https://huggingface.co/api/datasets/a/b/tree/main?recursive=true&cursor=ZXlK>; rel=\"next\"";
        assert_eq!(next_link(h).unwrap(), "https://huggingface.co/api/datasets/a/b/tree/main?recursive=true&cursor=ZXlK");
        assert_eq!(next_link("<https://x/1>; rel=\"prev\", <https://x/3>; rel=\"next\"").unwrap(), "https://x/3");
        assert_eq!(next_link("<https://x/1>; rel=\"prev\""), None);
        assert_eq!(quote("refs/convert/parquet"), "refs%2Fconvert%2Fparquet");
    }
}

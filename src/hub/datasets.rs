//! Data set repositories on the Hub: which parquet files hold which split, downloaded into the
//! Hugging Face cache (`datasets--OWNER--NAME/{blobs, refs, snapshots/<commit>}`, shared with
//! Python's `datasets` and `huggingface_hub`), the revision pinned on first use.
//!
//! The files are the repository's own parquet files (`data/train-00000-of-00003.parquet`, or
//! per config as the README's `configs:` says), else the Hub's conversion on the branch
//! `refs/convert/parquet` (`{config}/{split}/0000.parquet`). What was found is kept in
//! `<cache-dir>/hub-datasets/` so that `--offline` finds the same files; a cache filled by
//! `huggingface_hub` alone is read by the same naming rules as `datasets` uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::api::{DatasetApi, TreeEntry};
use super::hf_cache::{blob_etag, RepoCache};
use super::pins::Pins;
use super::registry::is_hex;
use super::remote;
use crate::error::{Error, Result};
use crate::fsutil::{sha256_file, write_json_atomic};
use crate::net::{NetConfig, NetError};
use crate::progress::Progress;

/// The revision asked when none is given.
pub const DEFAULT_REVISION: &str = "main";

/// The branch where the Hub keeps its parquet conversion.
pub const CONVERTED_REVISION: &str = "refs/convert/parquet";

/// Split names as Hugging Face `datasets` recognises them in file and folder names, by the
/// split they stand for.
pub const SPLIT_NAMES: [(&str, &[&str]); 3] = [
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "val", "dev"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

/// Which data set: `hf:OWNER/NAME[@REVISION][:CONFIG]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRequest {
    /// `OWNER/NAME`.
    pub repo: String,
    /// A branch, tag or commit; `None`: `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The config (subset); `None`: the default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// Where and how to look.
#[derive(Debug, Clone)]
pub struct DatasetOptions {
    /// lastlayer's cache folder (pins and what was found live there).
    pub cache_dir: PathBuf,
    /// No network: the Hugging Face cache only.
    pub offline: bool,
    /// Download progress.
    pub progress: Progress,
}

/// The parquet files of a data set's splits, at one commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetFiles {
    /// `OWNER/NAME`.
    pub repo: String,
    /// The revision the files come from (`main`, or `refs/convert/parquet`).
    pub revision: String,
    /// Its commit.
    pub commit: String,
    /// The config, when the repository has several.
    pub config: Option<String>,
    /// True when the files are the Hub's parquet conversion.
    pub converted: bool,
    /// Split (`train`, `validation`, `test`) → the files in the repository, sorted.
    pub splits: BTreeMap<String, Vec<String>>,
    /// Class names the README's `dataset_info` gives, by column.
    #[serde(default)]
    pub card_classes: BTreeMap<String, Vec<String>>,
}

impl DatasetFiles {
    /// The training files and the test files, with the name of the split used as test (`test`,
    /// else `validation`).
    pub fn train_and_test(&self) -> Result<(&[String], &[String], &'static str)> {
        let train = self.splits.get("train").filter(|f| !f.is_empty()).ok_or_else(|| self.missing("a train split"))?;
        for name in ["test", "validation"] {
            if let Some(files) = self.splits.get(name).filter(|f| !f.is_empty()) {
                return Ok((train, files, if name == "test" { "test" } else { "validation" }));
            }
        }
        Err(self.missing("a test or validation split"))
    }

    fn missing(&self, what: &str) -> Error {
        let found: Vec<&String> = self.splits.keys().collect();
        Error::bad_input(
            format!("hf:{}", self.repo),
            format!("has no parquet files for {what} (splits found: {found:?}, at {} {}); lastlayer needs train and test (or validation)", self.revision, self.commit),
        )
    }

    /// `snapshots/<commit>/<file>` in the Hugging Face cache.
    pub fn local(&self, file: &str) -> PathBuf {
        RepoCache::dataset_from_env(&self.repo).snapshot_file(&self.commit, file)
    }
}

/// Finds the split files of `req` and makes sure those of train and test (or validation) are
/// in the Hugging Face cache, verified: downloaded when missing (unless offline), checked
/// against their pinned sha256 (else the Hub's, else pinned now) when present.
pub fn resolve_dataset(req: &DatasetRequest, opts: &DatasetOptions) -> Result<DatasetFiles> {
    let cache = RepoCache::dataset_from_env(&req.repo);
    let asked = req.revision.clone().unwrap_or_else(|| DEFAULT_REVISION.to_string());
    let saved_at = saved_path(&opts.cache_dir, req, &asked);
    let files = if opts.offline {
        match read_saved(&saved_at) {
            Some(f) => f,
            None => from_cache(&cache, req, &asked, &opts.cache_dir).ok_or_else(|| offline_error(req, "its file list"))?,
        }
    } else {
        let net = NetConfig::from_env()?;
        let files = discover(req, &asked, &opts.cache_dir, &net)?;
        write_json_atomic(&saved_at, &files)?;
        files
    };
    let (train, test, _) = files.train_and_test()?;
    let wanted: Vec<String> = train.iter().chain(test).cloned().collect();
    let mut pins = Pins::load(&opts.cache_dir)?;
    let net = if opts.offline { None } else { Some(NetConfig::from_env()?) };
    for file in &wanted {
        ensure_file(&cache, &files, file, &mut pins, net.as_ref(), opts)?;
    }
    Ok(files)
}

fn pin_repo(repo: &str) -> String {
    format!("datasets/{repo}")
}

/// `<cache-dir>/hub-datasets/OWNER--NAME/<revision>@<config>.json`.
fn saved_path(cache_dir: &Path, req: &DatasetRequest, asked: &str) -> PathBuf {
    let safe = |s: &str| s.replace(['/', '\\', ':'], "--");
    cache_dir
        .join("hub-datasets")
        .join(safe(&req.repo))
        .join(format!("{}@{}.json", safe(asked), safe(req.config.as_deref().unwrap_or("default"))))
}

fn read_saved(path: &Path) -> Option<DatasetFiles> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn offline_error(req: &DatasetRequest, what: &str) -> Error {
    Error::Offline {
        what: format!("hf:{} ({what})", req.repo),
        hint: format!(
            "run the command once where the Hub is reachable, or fill $HF_HOME/hub with `huggingface_hub.snapshot_download(\"{}\", repo_type=\"dataset\")`",
            req.repo
        ),
    }
}

/// What the Hugging Face cache alone says (a cache `huggingface_hub` filled, say): the commit
/// of `refs/<revision>` (or the pinned one), the parquet files of its snapshot.
fn from_cache(cache: &RepoCache, req: &DatasetRequest, asked: &str, cache_dir: &Path) -> Option<DatasetFiles> {
    let pins = Pins::load(cache_dir).ok();
    for (revision, converted) in [(asked, false), (CONVERTED_REVISION, true)] {
        let commit = pins
            .as_ref()
            .and_then(|p| p.get(&pin_repo(&req.repo), &format!("@{revision}")).map(|p| p.revision.clone()))
            .or_else(|| cache.read_ref(revision))
            .or_else(|| is_hex(revision, 40).then(|| revision.to_string()));
        let Some(commit) = commit else { continue };
        let snapshot = cache.snapshot_file(&commit, "");
        let mut paths = Vec::new();
        list_parquet(&snapshot, &snapshot, &mut paths);
        let splits = if converted { converted_splits(&paths, req.config.as_deref()).ok()?.1 } else { own_splits(&paths, None, req.config.as_deref()).ok()?.1 };
        if !splits.is_empty() {
            return Some(DatasetFiles {
                repo: req.repo.clone(),
                revision: revision.to_string(),
                commit,
                config: req.config.clone(),
                converted,
                splits,
                card_classes: BTreeMap::new(),
            });
        }
    }
    None
}

fn list_parquet(dir: &Path, base: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            list_parquet(&p, base, out);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            if let Ok(rel) = p.strip_prefix(base) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
}

/// Asks the Hub: the revision's commit (pinned on first use), its parquet files, else the
/// parquet conversion's.
fn discover(req: &DatasetRequest, asked: &str, cache_dir: &Path, net: &NetConfig) -> Result<DatasetFiles> {
    let api = DatasetApi::new(&req.repo, net);
    let mut pins = Pins::load(cache_dir)?;
    let hub_error = |e: NetError| hub_failure(req, e);
    let info = revision_pinned(&api, &mut pins, req, asked).map_err(hub_error)?;
    let tree = api.tree(&info.0, "").map_err(hub_error)?;
    let paths: Vec<String> = files_of(&tree);
    let card = info.1.unwrap_or(serde_json::Value::Null);
    let (config, splits) = own_splits(&paths, Some(&card), req.config.as_deref()).map_err(|m| Error::bad_input(format!("hf:{}", req.repo), m))?;
    let card_classes = card_class_names(&card, config.as_deref());
    if !splits.is_empty() {
        return Ok(DatasetFiles { repo: req.repo.clone(), revision: asked.to_string(), commit: info.0, config, converted: false, splits, card_classes });
    }
    let Some(conversion) = api.parquet().map_err(hub_error)? else {
        return Err(Error::bad_input(
            format!("hf:{}", req.repo),
            format!("has no parquet files at {asked} and the Hub has no parquet conversion of it (refs/convert/parquet); lastlayer reads parquet data sets"),
        ));
    };
    let configs: Vec<String> = conversion.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    let config = choose_config(&configs, req.config.as_deref(), &req.repo)?;
    let (commit, _) = revision_pinned(&api, &mut pins, req, CONVERTED_REVISION).map_err(hub_error)?;
    let tree = api.tree(&commit, &config).map_err(hub_error)?;
    let (_, splits) = converted_splits(&files_of(&tree), Some(&config)).map_err(|m| Error::bad_input(format!("hf:{}", req.repo), m))?;
    tracing::info!("hf:{}: no parquet files of its own; using the Hub's parquet conversion ({CONVERTED_REVISION}, config {config})", req.repo);
    Ok(DatasetFiles {
        repo: req.repo.clone(),
        revision: CONVERTED_REVISION.to_string(),
        commit,
        config: Some(config.clone()),
        converted: true,
        splits,
        card_classes: card_class_names(&card, Some(&config)),
    })
}

fn files_of(tree: &[TreeEntry]) -> Vec<String> {
    tree.iter().filter(|e| e.kind == "file" && e.path.ends_with(".parquet")).map(|e| e.path.clone()).collect()
}

/// The commit of `revision` (the pinned one when it was pinned) and the card; pins it on
/// first use.
fn revision_pinned(api: &DatasetApi, pins: &mut Pins, req: &DatasetRequest, revision: &str) -> Result<(String, Option<serde_json::Value>), NetError> {
    let key = format!("@{revision}");
    let pinned = pins.get(&pin_repo(&req.repo), &key).map(|p| p.revision.clone());
    let info = api.revision(pinned.as_deref().unwrap_or(revision))?;
    if !is_hex(&info.sha, 40) {
        return Err(NetError::permanent(format!("the Hub gave '{}' as the commit of {revision}", info.sha)));
    }
    if pinned.is_none() {
        if let Err(e) = pins.record(&pin_repo(&req.repo), &key, &info.sha, "") {
            tracing::warn!("could not pin {} at {}: {e}", req.repo, info.sha);
        }
        // What the Hub says the revision is now, as `huggingface_hub` records it; a pinned
        // (older) commit is never written over the ref.
        if let Err(e) = RepoCache::dataset_from_env(&req.repo).write_ref(revision, &info.sha) {
            tracing::warn!("could not write refs/{revision} of {}: {e}", req.repo);
        }
    }
    Ok((info.sha, info.card_data))
}

fn hub_failure(req: &DatasetRequest, e: NetError) -> Error {
    let hint = if (e.message.contains("HTTP 401") || e.message.contains("HTTP 403")) && super::hf_cache::token().is_none() {
        "the Hub answers so for a gated or private data set, and for one that does not exist: check OWNER/NAME, and for a gated set accept its terms on the Hub and set HF_TOKEN (or `huggingface-cli login`)"
    } else if e.message.contains("HTTP 401") || e.message.contains("HTTP 403") {
        "the token (HF_TOKEN) is not allowed to read this data set: accept its terms on the Hub with that account, or use another token"
    } else if e.message.contains("HTTP 404") {
        "no such data set repository (check OWNER/NAME and the revision)"
    } else {
        "check the network (or HF_ENDPOINT, HTTPS_PROXY), or use --offline with a filled cache"
    };
    Error::Download { what: format!("the file list of hf:{}", req.repo), message: format!("{}; {hint}", e.message) }
}

fn choose_config(configs: &[String], asked: Option<&str>, repo: &str) -> Result<String> {
    match asked {
        Some(c) if configs.iter().any(|x| x == c) => Ok(c.to_string()),
        Some(c) => Err(Error::usage("--data", format!("hf:{repo} has no config '{c}'; its configs: {}", configs.join(", ")))),
        None if configs.len() == 1 => Ok(configs[0].clone()),
        None if configs.iter().any(|c| c == "default") => Ok("default".into()),
        None => Err(Error::usage("--data", format!("hf:{repo} has several configs ({}); name one: hf:{repo}:CONFIG", configs.join(", ")))),
    }
}

/// The canonical split a file or folder name stands for, as `datasets`' naming rules read it:
/// a path component that is a split name, or a file name starting with one followed by `-`,
/// `_`, `.` or a digit.
pub fn split_of(path: &str) -> Option<&'static str> {
    let parts: Vec<&str> = path.split('/').collect();
    let (file, dirs) = parts.split_last()?;
    let name_is = |s: &str| SPLIT_NAMES.iter().find(|(_, names)| names.iter().any(|n| s.eq_ignore_ascii_case(n))).map(|(c, _)| *c);
    let starts = |s: &str| {
        SPLIT_NAMES.iter().find_map(|(c, names)| {
            names.iter().any(|n| {
                s.len() > n.len()
                    && s[..n.len()].eq_ignore_ascii_case(n)
                    && s[n.len()..].starts_with(|ch: char| matches!(ch, '-' | '_' | '.') || ch.is_ascii_digit())
            }).then_some(*c)
        })
    };
    starts(file).or_else(|| dirs.iter().rev().find_map(|d| name_is(d).or_else(|| d.strip_prefix("partial-").and_then(name_is))))
}

/// The repository's own parquet files by split, for `config`: as the card's `configs:` maps
/// them when it does, else by the naming rules under the config's folder (`data/` for the
/// default one). Returns the config used.
#[allow(clippy::type_complexity)]
fn own_splits(paths: &[String], card: Option<&serde_json::Value>, config: Option<&str>) -> std::result::Result<(Option<String>, BTreeMap<String, Vec<String>>), String> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let configs = card.and_then(|c| c.get("configs")).and_then(|c| c.as_array()).cloned().unwrap_or_default();
    if !configs.is_empty() {
        let name = |c: &serde_json::Value| c.get("config_name").and_then(|n| n.as_str()).unwrap_or("default").to_string();
        let names: Vec<String> = configs.iter().map(name).collect();
        let chosen = match config {
            Some(c) => configs.iter().find(|x| name(x) == c).ok_or_else(|| format!("has no config '{c}'; its configs: {}", names.join(", ")))?,
            None => match configs.iter().find(|x| x.get("default").and_then(|d| d.as_bool()) == Some(true)) {
                Some(d) => d,
                None if configs.len() == 1 => &configs[0],
                None => configs.iter().find(|x| name(x) == "default").ok_or_else(|| {
                    format!("has several configs ({}); name one: hf:OWNER/NAME:CONFIG", names.join(", "))
                })?,
            },
        };
        let mut patterns: Vec<(Option<String>, String)> = Vec::new();
        let data_dir = chosen.get("data_dir").and_then(|d| d.as_str()).map(|d| d.trim_end_matches('/').to_string());
        match chosen.get("data_files") {
            Some(serde_json::Value::String(p)) => patterns.push((None, p.clone())),
            Some(serde_json::Value::Array(items)) => {
                for it in items {
                    match it {
                        serde_json::Value::String(p) => patterns.push((None, p.clone())),
                        serde_json::Value::Object(o) => {
                            let split = o.get("split").and_then(|s| s.as_str()).map(str::to_string);
                            match o.get("path") {
                                Some(serde_json::Value::String(p)) => patterns.push((split, p.clone())),
                                Some(serde_json::Value::Array(ps)) => patterns.extend(ps.iter().filter_map(|p| p.as_str()).map(|p| (split.clone(), p.to_string()))),
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        if patterns.is_empty() {
            let prefix = data_dir.map(|d| format!("{d}/")).unwrap_or_default();
            for p in paths.iter().filter(|p| p.starts_with(&prefix)) {
                if let Some(s) = split_of(&p[prefix.len()..]) {
                    out.entry(s.to_string()).or_default().push(p.clone());
                }
            }
        }
        for (split, pattern) in patterns {
            for p in paths.iter().filter(|p| glob(&pattern, p)) {
                let s = match &split {
                    Some(s) => canonical_split(s),
                    None => split_of(p).map(str::to_string).unwrap_or_else(|| "train".into()),
                };
                out.entry(s).or_default().push(p.clone());
            }
        }
        for files in out.values_mut() {
            files.sort();
            files.dedup();
        }
        return Ok((Some(name(chosen)), out));
    }
    // No card configs: a config is a top-level folder (`datasets`' `data_dir`).
    let prefix = match config {
        Some(c) => format!("{c}/"),
        None if paths.iter().any(|p| p.starts_with("data/")) => "data/".to_string(),
        None => {
            let mut tops: Vec<&str> = paths.iter().filter_map(|p| p.split_once('/').map(|(t, _)| t)).filter(|t| split_of(&format!("{t}/x")).is_none()).collect();
            tops.sort();
            tops.dedup();
            if tops.len() > 1 {
                return Err(format!("has parquet files in several folders ({}); name the config: hf:OWNER/NAME:CONFIG", tops.join(", ")));
            }
            String::new()
        }
    };
    for p in paths.iter().filter(|p| p.starts_with(&prefix)) {
        if let Some(s) = split_of(&p[prefix.len()..]) {
            out.entry(s.to_string()).or_default().push(p.clone());
        }
    }
    for files in out.values_mut() {
        files.sort();
    }
    Ok((config.map(str::to_string), out))
}

/// The Hub's conversion: `{config}/{split}/NNNN.parquet` (and `{config}/partial-{split}/`).
#[allow(clippy::type_complexity)]
fn converted_splits(paths: &[String], config: Option<&str>) -> std::result::Result<(Option<String>, BTreeMap<String, Vec<String>>), String> {
    let mut configs: Vec<&str> = paths.iter().filter_map(|p| p.split_once('/').map(|(c, _)| c)).collect();
    configs.sort();
    configs.dedup();
    let config = match config {
        Some(c) => c.to_string(),
        None if configs.len() == 1 => configs[0].to_string(),
        None if configs.contains(&"default") => "default".into(),
        None => return Err(format!("has several configs ({}); name one: hf:OWNER/NAME:CONFIG", configs.join(", "))),
    };
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in paths.iter().filter(|p| p.starts_with(&format!("{config}/"))) {
        let rest = &p[config.len() + 1..];
        let Some((dir, _)) = rest.split_once('/') else { continue };
        out.entry(canonical_split(dir.strip_prefix("partial-").unwrap_or(dir))).or_default().push(p.clone());
    }
    for files in out.values_mut() {
        files.sort();
    }
    Ok((Some(config), out))
}

/// `validation` for `val`, `dev`...; other names as they are.
fn canonical_split(name: &str) -> String {
    SPLIT_NAMES
        .iter()
        .find(|(_, names)| names.iter().any(|n| name.eq_ignore_ascii_case(n)))
        .map(|(c, _)| c.to_string())
        .unwrap_or_else(|| name.to_string())
}

/// `fnmatch`-style matching as `datasets` uses for `data_files`: `*` within a path segment,
/// `**` across them, `?` one character.
pub fn glob(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = if p.get(2) == Some(&b'/') { &p[3..] } else { &p[2..] };
                (0..=s.len()).any(|i| (i == 0 || s[i - 1] == b'/' || p.get(2) != Some(&b'/')) && go(rest, &s[i..]))
            }
            Some(b'*') => (0..=s.len()).take_while(|&i| i == 0 || s[i - 1] != b'/').any(|i| go(&p[1..], &s[i..])),
            Some(b'?') => !s.is_empty() && s[0] != b'/' && go(&p[1..], &s[1..]),
            Some(c) => s.first() == Some(c) && go(&p[1..], &s[1..]),
        }
    }
    go(pattern.trim_start_matches("./").as_bytes(), path.as_bytes())
}

/// Class names of `ClassLabel` columns in the card's `dataset_info` (one dict, or a list of
/// them by `config_name`): `{'0': airplane, ...}` or a list.
pub fn card_class_names(card: &serde_json::Value, config: Option<&str>) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let infos: Vec<&serde_json::Value> = match card.get("dataset_info") {
        Some(serde_json::Value::Array(a)) => {
            let want = config.unwrap_or("default");
            let matching: Vec<&serde_json::Value> = a.iter().filter(|i| i.get("config_name").and_then(|c| c.as_str()).unwrap_or("default") == want).collect();
            if matching.is_empty() && a.len() == 1 { a.iter().collect() } else { matching }
        }
        Some(v @ serde_json::Value::Object(_)) => vec![v],
        _ => vec![],
    };
    for info in infos {
        for f in info.get("features").and_then(|f| f.as_array()).into_iter().flatten() {
            let (Some(name), Some(names)) = (f.get("name").and_then(|n| n.as_str()), f.pointer("/dtype/class_label/names")) else { continue };
            let list: Option<Vec<String>> = match names {
                serde_json::Value::Array(a) => a.iter().map(|n| n.as_str().map(str::to_string)).collect(),
                serde_json::Value::Object(o) => {
                    let mut pairs: Vec<(usize, String)> = o.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string()))).collect();
                    pairs.sort();
                    pairs.iter().enumerate().all(|(i, (k, _))| i == *k).then(|| pairs.into_iter().map(|(_, v)| v).collect())
                }
                _ => None,
            };
            if let Some(list) = list {
                out.insert(name.to_string(), list);
            }
        }
    }
    out
}

/// Makes sure `file` is in the cache and verified: its pinned sha256, else the blob's name
/// when it is a sha256 (what the Hub vouched for), else pinned now.
fn ensure_file(cache: &RepoCache, files: &DatasetFiles, file: &str, pins: &mut Pins, net: Option<&NetConfig>, opts: &DatasetOptions) -> Result<()> {
    let pin_key = pin_repo(&files.repo);
    let pinned = pins.get(&pin_key, file).filter(|p| p.revision == files.commit).map(|p| p.sha256.clone());
    let describe = format!("{file} (hf:{}@{})", files.repo, &files.commit[..12.min(files.commit.len())]);
    if let Some(path) = cache.cached_file(&files.commit, file) {
        let sha = sha256_file(&path)?;
        let want = pinned.clone().or_else(|| blob_etag(&path).filter(|e| is_hex(e, 64)));
        match want {
            Some(w) if w != sha => {
                if let Ok(blob) = std::fs::canonicalize(&path) {
                    let _ = std::fs::remove_file(blob);
                }
                let _ = std::fs::remove_file(&path);
                let err = Error::Checksum {
                    path: path.clone(),
                    algorithm: "sha256",
                    expected: w,
                    actual: sha,
                    action: "the damaged file was removed from the Hugging Face cache; run the command again (without --offline) to download it".into(),
                };
                if net.is_none() {
                    return Err(err);
                }
                tracing::warn!("{err}; downloading it again");
            }
            _ => {
                if pinned.is_none() {
                    pins.record(&pin_key, file, &files.commit, &sha)?;
                }
                return Ok(());
            }
        }
    }
    let Some(net) = net else {
        return Err(Error::Offline {
            what: describe,
            hint: "run the command once where the Hub is reachable, or copy the Hugging Face cache (datasets--OWNER--NAME) here".into(),
        });
    };
    let got = remote::download(cache, &pin_key, &files.commit, file, pinned.as_deref(), net, &opts.progress, &describe)?;
    if pinned.is_none() {
        pins.record(&pin_key, file, &files.commit, &got.sha256)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_follow_datasets_rules() {
        assert_eq!(split_of("data/train-00000-of-00003.parquet"), Some("train"));
        assert_eq!(split_of("plain_text/test-00000-of-00001.parquet"), Some("test"));
        assert_eq!(split_of("data/validation-00000-of-00001.parquet"), Some("validation"));
        assert_eq!(split_of("default/train/0000.parquet"), Some("train"));
        assert_eq!(split_of("default/partial-test/0000.parquet"), Some("test"));
        assert_eq!(split_of("data/val.parquet"), Some("validation"));
        assert_eq!(split_of("data/trainer.parquet"), None);
        assert_eq!(split_of("data/other-0000.parquet"), None);
    }

    #[test]
    fn globs_match_as_fnmatch() {
        assert!(glob("plain_text/train-*", "plain_text/train-00000-of-00001.parquet"));
        assert!(!glob("plain_text/train-*", "plain_text/x/train-0.parquet"));
        assert!(glob("data/**/*.parquet", "data/a/b/c.parquet"));
        assert!(glob("data/**/*.parquet", "data/c.parquet"));
        assert!(!glob("data/test-*", "data/train-0.parquet"));
    }

    #[test]
    fn card_configs_and_class_names() {
        let card = serde_json::json!({
            "configs": [{"config_name": "plain_text", "data_files": [
                {"split": "train", "path": "plain_text/train-*"}, {"split": "test", "path": "plain_text/test-*"}]}],
            "dataset_info": {"config_name": "plain_text", "features": [
                {"name": "img", "dtype": "image"},
                {"name": "label", "dtype": {"class_label": {"names": {"0": "airplane", "1": "automobile"}}}}]}
        });
        let paths = vec!["plain_text/train-00000-of-00001.parquet".to_string(), "plain_text/test-00000-of-00001.parquet".to_string(), "README.md".into()];
        let (config, splits) = own_splits(&paths, Some(&card), None).unwrap();
        assert_eq!(config.as_deref(), Some("plain_text"));
        assert_eq!(splits["train"], vec!["plain_text/train-00000-of-00001.parquet"]);
        assert_eq!(splits["test"], vec!["plain_text/test-00000-of-00001.parquet"]);
        assert_eq!(card_class_names(&card, Some("plain_text"))["label"], vec!["airplane", "automobile"]);
        assert!(own_splits(&paths, Some(&card), Some("other")).unwrap_err().contains("plain_text"));
    }
}

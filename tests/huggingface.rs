//! `--data hf:OWNER/NAME`: image-classification data sets on the Hugging Face Hub, read from
//! parquet files that pyarrow writes as `datasets` does, served by the fake Hub (API routes,
//! `Link` pagination, 302s to a CDN host). Same pictures, same features as from folders; the
//! Hub's parquet conversion; validation as the test split; offline; a cache shared with
//! `huggingface_hub` both ways; bad input named.

use std::path::{Path, PathBuf};

use crate::common::*;
use serde_json::{json, Value};

/// Commits of the fake repositories: the Hub's answers carry them; lastlayer learns them.
const MAIN_COMMIT: &str = "5f1b7f2c9a4e0d3b8c6a1e2f4d7b9c0a3e5f8d21";
const CONVERT_COMMIT: &str = "a07c3e9d1b5f2468ace0b1d3f5e7092c4a6b8d0e";

fn weights(sb: &Sandbox) -> String {
    random_weights("resnet18", sb.path()).0.display().to_string()
}

/// CIFAR-10 sample records as PNG files, `per_class` of each of the first `classes` classes
/// from `data_batch_1.bin` (train) and `test_batch.bin` (test), in
/// `root/{train,test}/<class>/<record>.png`: the pictures of the folder run and of the
/// parquet files. Returns the class names and, by split, `(class index, file)` in the order a
/// folder lists them (class, then name).
fn cifar_pngs(root: &Path, classes: usize, per_class: [usize; 2]) -> (Vec<String>, [Vec<(i64, PathBuf)>; 2]) {
    let dir = cifar_sample_dir();
    let names: Vec<String> = std::fs::read_to_string(dir.join("batches.meta.txt")).unwrap().lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    let mut out: [Vec<(i64, PathBuf)>; 2] = [Vec::new(), Vec::new()];
    for (s, (split, file)) in [("train", "data_batch_1.bin"), ("test", "test_batch.bin")].iter().enumerate() {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let mut taken = vec![0usize; classes];
        for (i, rec) in bytes.chunks(3073).enumerate() {
            let c = rec[0] as usize;
            if c >= classes || taken[c] >= per_class[s] {
                continue;
            }
            taken[c] += 1;
            let mut rgb = vec![0u8; 3072];
            for p in 0..1024 {
                for ch in 0..3 {
                    rgb[p * 3 + ch] = rec[1 + ch * 1024 + p];
                }
            }
            let path = root.join(split).join(&names[c]).join(format!("{i:05}.png"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            image::RgbImage::from_raw(32, 32, rgb).unwrap().save(&path).unwrap();
            out[s].push((c as i64, path));
        }
        out[s].sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    }
    (names[..classes].to_vec(), out)
}

/// Writes a parquet file with `tests/python/make_hf_parquet.py`; returns its bytes.
fn parquet(out: &Path, spec: Value) -> Vec<u8> {
    let mut spec = spec;
    spec["out"] = json!(out);
    let spec_path = out.with_extension("json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let py = python_script("make_hf_parquet.py", &[spec_path.to_str().unwrap()]);
    assert!(py.ok, "{}", py.stderr);
    std::fs::read(out).unwrap()
}

fn rows_spec(rows: &[(i64, PathBuf)], names: &[String], image: &str, label: &str) -> Value {
    json!({"row_group_size": 4, "image_column": image, "label_column": label, "label_kind": "classlabel", "names": names,
           "images": rows.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(), "labels": rows.iter().map(|(c, _)| c).collect::<Vec<_>>()})
}

/// A CIFAR-10-like repository `uoft-cs/cifar10`, config `plain_text` (as the real one): an
/// `img` column, two shards of train, one of test, row groups of 4 rows, the README's
/// `configs:` and `dataset_info` as the API's `cardData`. Returns the files served.
fn serve_cifar_like(sb: &Sandbox, hub: &FakeServer, rows: &[Vec<(i64, PathBuf)>; 2], names: &[String]) -> Vec<(String, Vec<u8>)> {
    let made = sb.path().join("made");
    let half = rows[0].len() / 2;
    let mut files = Vec::new();
    for (name, part) in [
        ("plain_text/train-00000-of-00002.parquet", &rows[0][..half]),
        ("plain_text/train-00001-of-00002.parquet", &rows[0][half..]),
        ("plain_text/test-00000-of-00001.parquet", &rows[1][..]),
    ] {
        files.push((name.to_string(), parquet(&made.join(name), rows_spec(part, names, "img", "label"))));
    }
    files.push(("README.md".to_string(), b"---\nconfigs: ...\n---\n# CIFAR-10\n".to_vec()));
    let names_map: serde_json::Map<String, Value> = names.iter().enumerate().map(|(i, n)| (i.to_string(), json!(n))).collect();
    let card = json!({
        "configs": [{"config_name": "plain_text", "data_files": [
            {"split": "train", "path": "plain_text/train-*"}, {"split": "test", "path": "plain_text/test-*"}], "default": true}],
        "dataset_info": {"config_name": "plain_text", "features": [
            {"name": "img", "dtype": "image"}, {"name": "label", "dtype": {"class_label": {"names": names_map}}}]}
    });
    hub.serve_dataset("uoft-cs/cifar10", "main", MAIN_COMMIT, &files, card, 2);
    files
}

fn train_args<'a>(data: &'a str, w: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["--json", "train", "--model", "resnet18", "--data", data, "--weights", w, "--precision", "fp32", "--input-size", "64", "--epochs", "5", "--out", out]
}

fn split<'a>(out: &'a Value, name: &str) -> &'a Value {
    out["features"]["splits"].as_array().unwrap().iter().find(|s| s["split"] == name).unwrap()
}

/// The same PNG pictures from class folders and from a Hub data set's parquet files (two
/// train shards, multiple row groups, a paginated tree): the same features, byte for byte,
/// and the same head. The files land in the Hugging Face cache's layout; a second run with
/// `--offline` needs nothing from the network; review names a row `hf:OWNER/NAME/<file>#<row>`.
#[test]
fn cifar_like_set_gives_the_features_of_the_same_pictures_in_folders() {
    let mut sb = Sandbox::new();
    let hub = FakeServer::start();
    sb.set("HF_ENDPOINT", hub.base.clone());
    let w = weights(&sb);
    let folder = sb.path().join("pngs/cifar10");
    let (names, rows) = cifar_pngs(&folder, 4, [6, 3]);
    let files = serve_cifar_like(&sb, &hub, &rows, &names);

    let from_folder = sb.run_json(&train_args(folder.to_str().unwrap(), &w, "run-folder"));
    let from_hub = sb.run_json(&train_args("hf:uoft-cs/cifar10:plain_text", &w, "run-hub"));
    assert_eq!(from_hub["features"]["classes"], json!(names));
    for s in ["train", "test"] {
        let (a, b) = (split(&from_folder, s), split(&from_hub, s));
        assert_eq!(a["rows"], b["rows"], "{s}");
        let read = |v: &Value| std::fs::read(v["features"].as_str().unwrap()).unwrap();
        assert!(read(a) == read(b), "{s}: the Hub data set's features differ from the folders'");
    }
    let head = |run: &str| std::fs::read(sb.path().join(run).join("head.safetensors")).unwrap();
    assert!(head("run-folder") == head("run-hub"), "the heads differ");
    // The store already had every picture: nothing went through the backbone for the Hub set.
    assert_eq!(split(&from_hub, "train")["source"], "store");

    // The Hugging Face cache, as huggingface_hub lays it out; the tree was read page by page.
    let repo = sb.path().join("hf/hub/datasets--uoft-cs--cifar10");
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), MAIN_COMMIT);
    for (name, bytes) in files.iter().filter(|(n, _)| n.ends_with(".parquet")) {
        let snap = repo.join("snapshots").join(MAIN_COMMIT).join(name);
        assert!(std::fs::symlink_metadata(&snap).unwrap().file_type().is_symlink(), "{name}");
        assert_eq!(std::fs::read(&snap).unwrap(), *bytes);
        assert!(repo.join("blobs").join(sha256(bytes)).is_file());
    }
    assert!(hub.log().iter().any(|l| l.path.contains("/tree/") && l.status == 200) && hub.hits(&format!("/api/datasets/uoft-cs/cifar10/tree/{MAIN_COMMIT}")) >= 1);
    let pins: Value = serde_json::from_slice(&std::fs::read(sb.path().join("cache/pins.json")).unwrap()).unwrap();
    assert_eq!(pins["datasets/uoft-cs/cifar10/@main"]["revision"], MAIN_COMMIT);

    // Offline, with the Hub gone: the same features from the cache.
    let requests = hub.log().len();
    sb.set("HF_ENDPOINT", "http://127.0.0.1:9");
    let mut args = train_args("hf:uoft-cs/cifar10:plain_text", &w, "run-offline");
    args.insert(1, "--offline");
    let offline = sb.run_json(&args);
    assert_eq!(split(&offline, "test")["features"], split(&from_hub, "test")["features"]);
    assert_eq!(hub.log().len(), requests);

    // review names pictures by file and row.
    let review = sb.run_json(&["--json", "--offline", "review", "run-hub"]);
    let named: Vec<&str> = ["mistakes", "label_issues"].iter().flat_map(|k| review[k].as_array().unwrap()).map(|m| m["picture"].as_str().unwrap()).collect();
    assert!(!named.is_empty());
    for n in named {
        assert!(n.starts_with("hf:uoft-cs/cifar10/plain_text/t") && n.contains(".parquet#"), "review names {n}");
    }
}

/// A set whose repository has no parquet files of its own (the Hub's conversion on
/// `refs/convert/parquet` only), with a `labels` column, an extra string column
/// (`image_file_path`, as beans has), and only train and validation splits.
#[test]
fn converted_branch_with_labels_and_validation_only() {
    let mut sb = Sandbox::new();
    let hub = FakeServer::start();
    sb.set("HF_ENDPOINT", hub.base.clone());
    let w = weights(&sb);
    let (names, rows) = cifar_pngs(&sb.path().join("pngs"), 3, [4, 2]);
    let made = sb.path().join("made");
    let mut files = Vec::new();
    for (name, part) in [("default/train/0000.parquet", &rows[0]), ("default/validation/0000.parquet", &rows[1])] {
        let mut spec = rows_spec(part, &names, "image", "labels");
        spec["extra"] = json!({"image_file_path": part.iter().map(|(_, p)| p.display().to_string()).collect::<Vec<_>>()});
        files.push((name.to_string(), parquet(&made.join(name), spec)));
    }
    hub.serve_dataset("AI-Lab-Makerere/beans", "main", MAIN_COMMIT, &[("README.md".into(), b"# beans\n".to_vec()), ("beans.py".into(), b"# a script\n".to_vec())], json!({}), 100);
    hub.serve_dataset("AI-Lab-Makerere/beans", "refs/convert/parquet", CONVERT_COMMIT, &files, json!({}), 1);
    hub.serve_parquet_listing("AI-Lab-Makerere/beans", &files.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());

    let out = sb.run(&train_args("hf://datasets/AI-Lab-Makerere/beans", &w, "run-beans"));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["features"]["classes"], json!(names));
    assert_eq!((split(&out, "train")["rows"].as_u64(), split(&out, "test")["rows"].as_u64()), (Some(12), Some(6)));
    assert!(err.contains("validation split is the test split"), "{err}");
    assert!(err.contains("label column 'labels'") && err.contains("image column 'image'"), "{err}");
    assert!(err.contains("parquet conversion"), "{err}");
    let repo = sb.path().join("hf/hub/datasets--AI-Lab-Makerere--beans");
    assert_eq!(std::fs::read_to_string(repo.join("refs/refs/convert/parquet")).unwrap(), CONVERT_COMMIT);
    assert!(repo.join("snapshots").join(CONVERT_COMMIT).join("default/validation/0000.parquet").is_file());

    // --shard cuts between row groups (three of four rows in the training file), in a cache
    // without the whole split's entry.
    let shard = |spec: &str| {
        let fresh = sb.path().join("cache-shards");
        sb.run(&["--cache-dir", fresh.to_str().unwrap(), "extract", "--model", "resnet18", "--data", "hf:AI-Lab-Makerere/beans", "--weights", &w, "--precision", "fp32", "--input-size", "64", "--split", "train", "--shard", spec])
    };
    let out = shard("1/3");
    assert!(out.status.success() && stderr(&out).contains("shard 1/3, rows 4..8 of the entry's 12"), "{}", stderr(&out));
    assert_fails(&shard("0/4"), 2, &["3 row group(s)"]);
}

/// The commit of `main` is pinned at first use, as weights are: when the Hub's `main` moves
/// on, later runs still read the pinned commit's files.
#[test]
fn the_revision_is_pinned_at_first_use() {
    let mut sb = Sandbox::new();
    let hub = FakeServer::start();
    sb.set("HF_ENDPOINT", hub.base.clone());
    let w = weights(&sb);
    let (names, rows) = cifar_pngs(&sb.path().join("pngs"), 2, [4, 2]);
    let made = sb.path().join("made");
    let serve = |commit: &str, train_rows: &[(i64, PathBuf)]| {
        let train = parquet(&made.join(commit).join("train.parquet"), rows_spec(train_rows, &names, "image", "label"));
        let test = parquet(&made.join(commit).join("test.parquet"), rows_spec(&rows[1], &names, "image", "label"));
        hub.serve_dataset("acme/moving", "main", commit, &[("data/train-00000-of-00001.parquet".into(), train), ("data/test-00000-of-00001.parquet".into(), test)], json!({}), 10);
    };
    serve(MAIN_COMMIT, &rows[0]);
    let first = sb.run_json(&train_args("hf:acme/moving", &w, "run-1"));
    assert_eq!(split(&first, "train")["rows"].as_u64(), Some(8));
    // main moves on to a commit with half the training rows.
    serve(CONVERT_COMMIT, &rows[0][..4]);
    let out = sb.run(&train_args("hf:acme/moving", &w, "run-2"));
    assert!(out.status.success(), "{}", stderr(&out));
    let second: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(split(&second, "train")["rows"].as_u64(), Some(8), "the pinned commit's files");
    assert!(stderr(&out).contains(&MAIN_COMMIT[..12]), "{}", stderr(&out));
    assert!(!hub.log().iter().any(|l| l.path.contains(CONVERT_COMMIT)), "the moved main was read");
    let repo = sb.path().join("hf/hub/datasets--acme--moving");
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), MAIN_COMMIT);
}

/// A file `huggingface_hub` downloaded from the fake Hub is what lastlayer reads offline; a file
/// lastlayer downloaded is what `huggingface_hub` finds with `local_files_only`.
#[test]
fn the_cache_is_shared_with_huggingface_hub_both_ways() {
    let mut sb = Sandbox::new();
    let hub = FakeServer::start();
    sb.set("HF_ENDPOINT", hub.base.clone());
    let w = weights(&sb);
    let (names, rows) = cifar_pngs(&sb.path().join("pngs"), 3, [4, 2]);
    let files = serve_cifar_like(&sb, &hub, &rows, &names);
    let cache = sb.path().join("hf/hub");
    // huggingface_hub downloads every parquet file; lastlayer runs offline on them.
    for (name, _) in files.iter().filter(|(n, _)| n.ends_with(".parquet")) {
        let py = python_script("hf_hub_file.py", &["download", &hub.base, cache.to_str().unwrap(), "uoft-cs/cifar10", name]);
        assert!(py.ok, "{}", py.stderr);
    }
    let mut args = train_args("hf:uoft-cs/cifar10:plain_text", &w, "run-py");
    args.insert(1, "--offline");
    let out = sb.run_json(&args);
    assert_eq!(split(&out, "train")["rows"].as_u64(), Some(12));

    // The other way: lastlayer downloads into a fresh cache, huggingface_hub reads it offline.
    let mut sb2 = Sandbox::new();
    sb2.set("HF_ENDPOINT", hub.base.clone());
    let w2 = weights(&sb2);
    sb2.run_json(&train_args("hf:uoft-cs/cifar10:plain_text", &w2, "run-ll"));
    let cache2 = sb2.path().join("hf/hub");
    for (name, bytes) in files.iter().filter(|(n, _)| n.ends_with(".parquet")) {
        let py = python_script("hf_hub_file.py", &["cached", &hub.base, cache2.to_str().unwrap(), "uoft-cs/cifar10", name]);
        assert!(py.ok, "{}", py.stderr);
        let path = String::from_utf8(py.stdout).unwrap();
        assert_eq!(std::fs::read(path.trim()).unwrap(), *bytes, "{name}");
    }
}

/// Unknown repository (401 without a token, 404 with one, as the Hub answers), gated without a token, no image column or two, a label column that
/// is not a class label, a damaged or cut download: each named, with the project's exit
/// statuses, and no half file left in the cache.
#[test]
fn bad_hub_data_sets_are_named() {
    let mut sb = Sandbox::new();
    let hub = FakeServer::start();
    sb.set("HF_ENDPOINT", hub.base.clone());
    let w = weights(&sb);
    let (names, rows) = cifar_pngs(&sb.path().join("pngs"), 2, [2, 1]);
    let all: Vec<(i64, PathBuf)> = rows[0].clone();
    let made = sb.path().join("made");
    let run = |sb: &Sandbox, data: &str, extra: &[&str]| {
        let mut a = train_args(data, &w, "run-bad");
        a.extend_from_slice(extra);
        sb.run(&a)
    };

    // Unknown: the Hub answers 401 without a token (a missing repository looks private), 404
    // with one.
    assert_fails(&run(&sb, "hf:nobody/nothing", &[]), 4, &["hf:nobody/nothing", "401", "check OWNER/NAME", "HF_TOKEN"]);

    let serve = |repo: &str, spec: Value| {
        let train = parquet(&made.join(repo).join("train.parquet"), spec.clone());
        let test = parquet(&made.join(repo).join("test.parquet"), spec);
        hub.serve_dataset(repo, "main", MAIN_COMMIT, &[("data/train-00000-of-00001.parquet".into(), train.clone()), ("data/test-00000-of-00001.parquet".into(), test)], json!({}), 10);
        train
    };
    serve("acme/gated", rows_spec(&all, &names, "image", "label"));
    hub.gate("acme/gated", "hf_secret");
    assert_fails(&run(&sb, "hf:acme/gated", &[]), 4, &["401", "HF_TOKEN"]);
    sb.set("HF_TOKEN", "hf_secret");
    let ok = run(&sb, "hf:acme/gated", &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_fails(&run(&sb, "hf:nobody/nothing", &[]), 4, &["hf:nobody/nothing", "404", "no such data set"]);

    let mut spec = rows_spec(&all, &names, "image", "label");
    spec["second_image"] = json!("thumbnail");
    serve("acme/two-images", spec);
    assert_fails(&run(&sb, "hf:acme/two-images", &[]), 3, &["image", "thumbnail", "--image-column"]);
    let ok = run(&sb, "hf:acme/two-images", &["--image-column", "thumbnail"]);
    assert!(ok.status.success(), "{}", stderr(&ok));

    // A table without pictures (only a URL column): the error names its columns and the flag.
    let mut spec = rows_spec(&all, &names, "image", "label");
    spec["image_column"] = Value::Null;
    spec["extra"] = json!({"url": all.iter().map(|_| "https://example.org/x.jpg").collect::<Vec<_>>()});
    serve("acme/no-images", spec);
    assert_fails(&run(&sb, "hf:acme/no-images", &[]), 3, &["no image column", "url", "--image-column"]);
    assert_fails(&run(&sb, "hf:acme/no-images", &["--image-column", "url"]), 3, &["--image-column url", "not pictures"]);

    let mut spec = rows_spec(&all, &names, "image", "score");
    spec["label_kind"] = json!("float");
    spec["labels"] = json!(all.iter().map(|(c, _)| *c as f64 + 0.5).collect::<Vec<_>>());
    serve("acme/float-labels", spec);
    assert_fails(&run(&sb, "hf:acme/float-labels", &["--label-column", "score"]), 3, &["score", "not class labels"]);

    let mut spec = rows_spec(&all, &names, "image", "label");
    spec["label_kind"] = json!("string");
    spec["labels"] = json!(all.iter().map(|(c, _)| names[*c as usize].clone()).collect::<Vec<_>>());
    serve("acme/string-labels", spec);
    let out = run(&sb, "hf:acme/string-labels", &[]);
    assert!(out.status.success() && stderr(&out).contains("holds strings"), "{}", stderr(&out));

    // No `huggingface` metadata in the files: the class names come from the README's
    // dataset_info (the API's cardData).
    let mut spec = rows_spec(&all, &names, "image", "label");
    spec["metadata"] = json!(false);
    let file = parquet(&made.join("card").join("train.parquet"), spec);
    let card = json!({"dataset_info": {"features": [{"name": "image", "dtype": "image"},
        {"name": "label", "dtype": {"class_label": {"names": {"0": names[0], "1": names[1]}}}}]}});
    hub.serve_dataset("acme/card-names", "main", MAIN_COMMIT, &[("data/train-00000-of-00001.parquet".into(), file.clone()), ("data/test-00000-of-00001.parquet".into(), file)], card, 10);
    let out = run(&sb, "hf:acme/card-names", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["features"]["classes"], json!(names));

    // A download cut half-way resumes with Range.
    let train = serve("acme/cut", rows_spec(&all, &names, "image", "label"));
    hub.fault(Fault::CutAt(0.5), 1);
    let out = run(&sb, "hf:acme/cut", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(hub.body_gets().iter().any(|l| l.header("range").is_some()), "no resumed request");
    let _ = train;

    // A CDN that serves a damaged copy: the sha256 check fails (exit 5) and no file is kept.
    let train = serve("acme/damaged", rows_spec(&all, &names, "image", "label"));
    let mut bad = train.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    hub.replace_cdn_bytes(&train, bad);
    assert_fails(&run(&sb, "hf:acme/damaged", &[]), 5, &["sha256"]);
    let blobs = sb.path().join("hf/hub/datasets--acme--damaged/blobs");
    let left: Vec<String> = std::fs::read_dir(&blobs).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.ends_with(".lock")).collect()).unwrap_or_default();
    assert!(left.iter().all(|n| n != &sha256(&train) && !n.ends_with(".part")), "{left:?}");

    // A file the Hub itself holds damaged (its sha256 is the damaged bytes'): a parquet error naming it.
    let truncated = train[..train.len() - 40].to_vec();
    hub.serve_dataset("acme/truncated", "main", MAIN_COMMIT, &[("data/train-00000-of-00001.parquet".into(), truncated.clone()), ("data/test-00000-of-00001.parquet".into(), truncated)], json!({}), 10);
    assert_fails(&run(&sb, "hf:acme/truncated", &[]), 3, &["train-00000-of-00001.parquet", "not a readable parquet file"]);
}

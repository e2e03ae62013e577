//! `--augment` and `--tta flip`: the views are what they claim (checked with pictures whose
//! mirror images are also in the data), an augmented extraction killed twice resumes to the
//! same bytes, the head's validation split is drawn by picture, and a bad spec is named.


use std::path::{Path, PathBuf};

use crate::common::*;
use serde_json::Value;

const RECORD: usize = 3073;

/// A CIFAR-10 folder whose splits hold the first `n` records of the shared sample's test batch
/// and then their mirror images (each row of each channel reversed), `2 n` records in all.
fn mirrored_cifar(sb: &Sandbox, n: usize) -> PathBuf {
    let src = std::fs::read(cifar_sample_dir().join("test_batch.bin")).unwrap();
    // The first n records with n different labels where possible: real pictures, not a pattern.
    let originals: Vec<&[u8]> = src.chunks(RECORD).take(n).collect();
    let mut bytes = Vec::with_capacity(2 * n * RECORD);
    for r in &originals {
        bytes.extend_from_slice(r);
    }
    for r in &originals {
        bytes.push(r[0]);
        for row in r[1..].chunks(32) {
            bytes.extend(row.iter().rev());
        }
    }
    let dir = sb.path().join("mirrored");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["data_batch_1.bin", "test_batch.bin"] {
        std::fs::write(dir.join(f), &bytes).unwrap();
    }
    std::fs::copy(cifar_sample_dir().join("batches.meta.txt"), dir.join("batches.meta.txt")).unwrap();
    dir
}

fn tensors(path: &str) -> (tch::Tensor, tch::Tensor) {
    let t = tch::Tensor::read_safetensors(path).unwrap();
    let get = |n: &str| t.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
    (get("features"), get("labels"))
}

/// Largest |a - b| relative to the largest |a|.
fn rel_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / a.abs().max().double_value(&[])
}

fn extract(sb: &Sandbox, w: &str, data: &Path, split: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--json", "extract", "--model", "resnet18", "--weights", w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(),
        "--split", split, "--precision", "fp32", "--input-size", "64", "--extract-batch-size", "8"];
    args.extend_from_slice(extra);
    sb.run_json(&args)
}

/// The mirror view of a picture is the plain view of its mirror image; view 0 is the plain
/// picture; crops are other pictures again; and `--tta flip` makes a picture and its mirror
/// image have the same features (the mean of the two), which they do not have without it.
#[test]
fn views_are_the_picture_its_mirror_and_crops_and_tta_averages_with_the_mirror() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let n = 6;
    let data = mirrored_cifar(&sb, n);
    let n = n as i64;

    let plain = extract(&sb, &w, &data, "train", &[]);
    let views = extract(&sb, &w, &data, "train", &["--augment", "flip,crops=2,jitter=0.2"]);
    assert_eq!(views["splits"][0]["rows"], 2 * n * 4, "4 views a picture: {views}");
    let (x, _) = tensors(plain["splits"][0]["features"].as_str().unwrap());
    let (v, labels) = tensors(views["splits"][0]["features"].as_str().unwrap());
    let v = v.view([2 * n, 4, -1]);
    let view = |i: i64| v.select(1, i);
    let (originals, mirrors) = (x.narrow(0, 0, n), x.narrow(0, n, n));
    // Picture-major rows, each picture's label repeated for its views.
    assert!(labels.view([2 * n, 4]).select(1, 3).equal(&labels.view([2 * n, 4]).select(1, 0)));
    let d0 = rel_diff(&x, &view(0));
    let d1 = rel_diff(&mirrors, &view(1).narrow(0, 0, n));
    let d1b = rel_diff(&originals, &view(1).narrow(0, n, n));
    let apart = rel_diff(&originals, &mirrors);
    let crops = [rel_diff(&x, &view(2)), rel_diff(&x, &view(3)), rel_diff(&view(2), &view(3))];
    println!("view 0 vs plain {d0:.1e}; mirror view vs mirrored picture {d1:.1e} / {d1b:.1e}; picture vs its mirror {apart:.3}; crops {crops:.3?}");
    assert!(d0 < 1e-5 && d1 < 1e-5 && d1b < 1e-5, "views are not the picture and its mirror");
    assert!(apart > 1e-2, "the pictures are too symmetric for this test ({apart})");
    assert!(crops.iter().all(|&c| c > 1e-2), "crop views equal other views: {crops:?}");

    let tta = extract(&sb, &w, &data, "test", &["--tta", "flip"]);
    assert_eq!(tta["splits"][0]["rows"], 2 * n, "one row a picture: {tta}");
    let (t, _) = tensors(tta["splits"][0]["features"].as_str().unwrap());
    let same = rel_diff(&t.narrow(0, 0, n), &t.narrow(0, n, n));
    println!("--tta flip: a picture vs its mirror image {same:.1e}");
    assert!(same < 1e-5, "a picture and its mirror image differ by {same} under --tta flip");
    let (plain_test, _) = tensors(extract(&sb, &w, &data, "test", &[])["splits"][0]["features"].as_str().unwrap());
    let expected = (&plain_test.narrow(0, 0, n) + &plain_test.narrow(0, n, n)) * 0.5;
    assert!(rel_diff(&expected, &t.narrow(0, 0, n)) < 1e-5, "--tta flip is not the mean of the picture and its mirror");
}


/// Views are a function of the picture, the view and the seed: an augmented extraction killed
/// twice and resumed gives the bytes of an uninterrupted one, and another seed other crops.
#[test]
fn augmented_extraction_killed_twice_resumes_to_identical_bytes() {
    let mut sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_copy(&sb);
    let args = |augment: &'static str| {
        ["--json", "extract", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(), "--split", "train",
         "--limit", "40", "--precision", "fp32", "--input-size", "64", "--extract-batch-size", "8", "--chunk-rows", "8", "--augment", augment]
            .map(String::from)
            .to_vec()
    };
    let strs = |v: &[String]| v.iter().map(String::to_string).collect::<Vec<_>>();
    let run = |sb: &Sandbox, a: &[String]| sb.run_json(&a.iter().map(String::as_str).collect::<Vec<_>>());
    sb.set("LASTLAYER_CACHE", sb.path().join("cache-ref").display().to_string());
    let reference = run(&sb, &args("flip,crops=2,jitter=0.1"));
    assert_eq!(reference["splits"][0]["rows"], 160);

    let cache = sb.path().join("cache");
    sb.set("LASTLAYER_CACHE", cache.display().to_string());
    let a = strs(&args("flip,crops=2,jitter=0.1"));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    kill_after_chunks(&sb, &a, &cache, "resnet18", 3);
    kill_after_chunks(&sb, &a, &cache, "resnet18", 9);
    let out = sb.run(&a);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming, "), "no resume in\n{}", stderr(&out));
    let resumed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (x, _) = tensors(reference["splits"][0]["features"].as_str().unwrap());
    let (y, _) = tensors(resumed["splits"][0]["features"].as_str().unwrap());
    assert!(x.equal(&y), "resumed views differ from an uninterrupted run's by {}", rel_diff(&x, &y));

    // Another seed: the same picture and mirror views, other crops; a separate cache entry.
    let other = run(&sb, &args("flip,crops=2,jitter=0.1,seed=1"));
    assert_ne!(other["splits"][0]["features"], resumed["splits"][0]["features"]);
    assert_eq!(other["backbone_rows"], 80, "only the 2 x 40 new crops go through the backbone: {other}");
    let (z, _) = tensors(other["splits"][0]["features"].as_str().unwrap());
    let (x4, z4) = (x.view([40, 4, -1]), z.view([40, 4, -1]));
    assert!(x4.narrow(1, 0, 2).equal(&z4.narrow(1, 0, 2)), "the picture and its mirror do not depend on the seed");
    assert!(rel_diff(&x4.select(1, 2), &z4.select(1, 2)) > 1e-2, "the seed does not change the crops");
}

/// Training on views: head.json records them, the validation pictures are judged on one row a
/// picture, and the run's test features follow `--tta`.
#[test]
fn train_on_views_records_them_and_eval_agrees() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_sample_dir();
    let run = sb.run_json(&["--json", "train", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(),
        "--limit", "60", "--precision", "fp32", "--input-size", "64", "--augment", "flip,crops=1", "--tta", "flip", "--out", "run"]);
    let card: Value = serde_json::from_slice(&std::fs::read(sb.path().join("run/head.json")).unwrap()).unwrap();
    assert_eq!(card["data"]["augment"]["crops"], 1, "{}", card["data"]);
    assert_eq!(card["data"]["tta"], "flip");
    // 60 pictures of 10 classes, one of each class held out: 50 x 3 view rows trained on, and
    // the 10 validation pictures' 3 x 10 rows added by the refit.
    assert_eq!((card["report"]["train_rows"].as_u64(), card["report"]["val_rows"].as_u64()), (Some(150), Some(30)));
    assert_eq!(card["report"]["refit"]["rows"], 180);
    assert_eq!(card["data"]["test_rows"], 60);
    let eval = sb.run_json(&["--json", "eval", "run"]);
    assert_eq!(eval["test_accuracy"], run["test_accuracy"], "eval re-scores the --tta flip features: {eval}");
    assert_eq!(eval["features"]["source"], "cache");

    // A sweep over the same views: every trial from the cache, the backbone never runs.
    let sweep = sb.run_json(&["--json", "sweep", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(),
        "--limit", "60", "--precision", "fp32", "--input-size", "64", "--augment", "flip,crops=1", "--tta", "flip", "--lr", "1e-3,1e-2",
        "--weight-decay", "1e-4", "--epochs", "3", "--out", "swept"]);
    assert_eq!(sweep["trials"].as_array().map(Vec::len), Some(2), "{sweep}");
    assert_eq!(sweep["best"]["features"]["backbone_runs"], 0);
    assert_eq!(sweep["best"]["report"]["train_rows"], 150);
}

#[test]
fn a_bad_augment_spec_is_named_with_an_example() {
    let sb = Sandbox::new();
    let data = cifar_sample_dir();
    let out = sb.run(&["extract", "--model", "resnet18", "--data", "cifar10", "--data-dir", data.to_str().unwrap(), "--augment", "flip,crop=4"]);
    assert_fails(&out, 2, &["--augment", "'crop=4' is not a view option", "flip,crops=4"]);
}

/// Views and shards together: with `--augment` a shard holds whole pictures with all their
/// views, with `--tta flip` averaged rows, and the merged entries are the bytes of an
/// unsharded extraction; a missing shard's printed command carries the views.
#[test]
fn sharded_views_merge_into_the_unsharded_bytes() {
    let mut sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_sample_dir();
    let args = |shard: Option<&str>| -> Vec<String> {
        let mut a: Vec<String> = ["--json", "extract", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(),
            "--limit", "30", "--precision", "fp32", "--input-size", "64", "--extract-batch-size", "8", "--augment", "flip,crops=1", "--tta", "flip"]
            .map(String::from)
            .to_vec();
        if let Some(s) = shard {
            a.extend(["--shard".to_string(), s.to_string()]);
        }
        a
    };
    let run = |sb: &Sandbox, a: Vec<String>| sb.run_json(&a.iter().map(String::as_str).collect::<Vec<_>>());
    sb.set("LASTLAYER_CACHE", sb.path().join("cache-ref").display().to_string());
    let reference = run(&sb, args(None));
    sb.set("LASTLAYER_CACHE", sb.path().join("cache").display().to_string());
    run(&sb, args(Some("0/3")));
    run(&sb, args(Some("2/3")));
    // Shard 1 is missing: the merge names it, with a command that keeps the views.
    let a = args(None);
    let out = sb.run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("1/3") && err.contains("--augment flip,crops=1"), "{err}");
    run(&sb, args(Some("1/3")));
    let merged = run(&sb, args(None));
    for i in 0..2 {
        let (a, b) = (reference["splits"][i]["features"].as_str().unwrap(), merged["splits"][i]["features"].as_str().unwrap());
        assert_eq!(reference["splits"][i]["rows"], merged["splits"][i]["rows"]);
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "{} split: merged shards differ from the unsharded bytes", reference["splits"][i]["split"]);
    }
    assert_eq!((reference["splits"][0]["rows"].as_u64(), reference["splits"][1]["rows"].as_u64()), (Some(90), Some(30)));
}

//! The `lastlayer` binary end to end, with no network: a fake Hub and CIFAR-10 mirror on
//! 127.0.0.1 serve random ResNet-18 weights and a small tarball made from `../shared/data`.


use crate::common::*;
use serde_json::Value;

const REPO: &str = "timm/resnet18.tv_in1k";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn setup() -> (Sandbox, FakeServer, Vec<u8>, Vec<u8>, String) {
    let mut sb = Sandbox::new();
    let server = FakeServer::start();
    let (_, weights) = random_weights("resnet18", sb.path());
    let sha = sha256(&weights);
    server.serve_hub_file(REPO, "model.safetensors", weights, COMMIT);
    let (tarball, train, test) = cifar_tarball(60, 40);
    sb.set("LASTLAYER_CIFAR10_MD5", md5(&tarball));
    // As the real CIFAR-10 host: a redirect to another host, which serves the archive.
    server.serve_archive("/cifar-10-binary.tar.gz", tarball, false);
    sb.set("HF_ENDPOINT", server.base.clone());
    sb.set("LASTLAYER_CIFAR10_URL", format!("{}/cifar-10-binary.tar.gz", server.base));
    (sb, server, train, test, sha)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn fetch_extract_train_eval_export_predict() {
    let (sb, server, train_bytes, test_bytes, sha) = setup();

    // fetch: downloads into the HF cache, verifies, pins.
    let w = sb.run_json(&["--json", "fetch", "resnet18"]);
    assert_eq!(w["sha256"], sha);
    assert_eq!(w["downloaded"], true);
    let snapshot = sb.path().join(format!("hf/hub/models--timm--resnet18.tv_in1k/snapshots/{COMMIT}/model.safetensors"));
    assert!(snapshot.is_file(), "{}", snapshot.display());
    let pins: Value = serde_json::from_slice(&std::fs::read(sb.path().join("cache/pins.json")).unwrap()).unwrap();
    assert_eq!(pins[format!("{REPO}/model.safetensors")]["sha256"], sha);
    assert_eq!(pins[format!("{REPO}/model.safetensors")]["revision"], COMMIT);

    // run: downloads CIFAR-10, extracts both splits, trains, evaluates, exports.
    let out = sb.run_json(&["--json", "run", "--model", "resnet18", "--data", "cifar10", "--precision", "fp32", "--out", "run1"]);
    assert_eq!(server.hits("/cifar-10-binary.tar.gz"), 1);
    assert_eq!(server.hits("/mirror/cifar-10-binary.tar.gz"), 1);
    let acc = f(&out["test_accuracy"]);
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(out["run_dir"], "run1");
    let conf = out["test"]["confusion"].as_array().unwrap();
    let total: u64 = conf.iter().flat_map(|r| r.as_array().unwrap()).map(|v| v.as_u64().unwrap()).sum();
    let diag: u64 = (0..10).map(|i| conf[i][i].as_u64().unwrap()).sum();
    assert_eq!(total, 40);
    assert!((acc - diag as f64 / 40.0).abs() < 1e-12, "accuracy {acc} vs confusion diagonal {diag}/40");
    let splits = out["features"]["splits"].as_array().unwrap();
    assert!(splits.iter().all(|s| s["source"] == "extracted"));

    // The cache files hold N x 512 features and the labels in the data files' order.
    for (split, bytes, n) in [("train", &train_bytes, 60usize), ("test", &test_bytes, 40)] {
        let s = splits.iter().find(|s| s["split"] == split).unwrap();
        let tensors = tch::Tensor::read_safetensors(s["features"].as_str().unwrap()).unwrap();
        let get = |name: &str| tensors.iter().find(|(k, _)| k == name).unwrap().1.shallow_clone();
        assert_eq!(get("features").size(), vec![n as i64, 512]);
        assert_eq!(get("features").kind(), tch::Kind::Float);
        let labels: Vec<i64> = Vec::try_from(get("labels")).unwrap();
        let want: Vec<i64> = (0..n).map(|i| bytes[i * 3073] as i64).collect();
        assert_eq!(labels, want, "{split} labels out of order");
        let manifest: Value = serde_json::from_slice(&std::fs::read(s["manifest"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(manifest["key"]["weights_sha256"], sha);
        assert_eq!(manifest["rows"], n);
    }

    // The run folder: head.safetensors [10, 512] + [10], head.json with what is needed later.
    let run = sb.path().join("run1");
    let head = tch::Tensor::read_safetensors(run.join("head.safetensors")).unwrap();
    let shape = |name: &str| head.iter().find(|(k, _)| k == name).unwrap().1.size();
    assert_eq!((shape("weight"), shape("bias")), (vec![10, 512], vec![10]));
    let card: Value = serde_json::from_slice(&std::fs::read(run.join("head.json")).unwrap()).unwrap();
    assert_eq!(card["classes"][3], "cat");
    assert_eq!(card["feature_width"], 512);
    assert_eq!(card["backbone"]["hub_repo"], REPO);
    assert_eq!(card["backbone"]["revision"], COMMIT);
    assert_eq!(card["backbone"]["weights_sha256"], sha);
    assert_eq!(card["preprocessing"]["input_size"], 224);
    assert_eq!(card["preprocessing"]["interpolation"], "bilinear");
    assert_eq!(card["training"]["optimizer"], "adamw");
    assert!((f(&card["metrics"]["test_accuracy"]) - acc).abs() < 1e-12);
    assert!(run.join("metrics.json").is_file());

    // eval: the same accuracy from the exported head and the cached test features.
    let ev = sb.run_json(&["--json", "eval", "run1"]);
    assert!((f(&ev["test_accuracy"]) - acc).abs() < 1e-12);
    assert_eq!(ev["features"]["source"], "cache");

    // predict: top-3 per picture, probabilities descending and at most 1 in all.
    let cat = shared_data().join("imagenet-check/chelsea.png");
    let preds = sb.run_json(&["--json", "predict", "run1", cat.to_str().unwrap(), "-k", "3"]);
    let top = preds[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    let p: Vec<f64> = top.iter().map(|c| f(&c["probability"])).collect();
    assert!(p[0] >= p[1] && p[1] >= p[2] && p.iter().sum::<f64>() <= 1.0 + 1e-6, "{p:?}");

    // Human output of predict names the picture and classes.
    let human = sb.run(&["predict", "run1", cat.to_str().unwrap(), "-k", "2"]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("chelsea.png") && text.contains(top[0]["class"].as_str().unwrap()), "{text}");
}

#[test]
fn second_train_reuses_the_cache_without_the_backbone() {
    let (mut sb, server, _, _, _) = setup();
    let args = ["--json", "train", "--model", "resnet18", "--data", "cifar10", "--limit", "30", "--precision", "fp32"];
    let first = sb.run_json(&[&args[..], &["--out", "a"]].concat());
    assert_eq!(first["features"]["backbone_runs"], 2);
    drop(server);

    // The Hub's files are gone and the network is off: training can only use cached features.
    std::fs::remove_dir_all(sb.path().join("hf")).unwrap();
    sb.set("HF_ENDPOINT", "http://127.0.0.1:9");
    let second = sb.run_json(&[&args[..], &["--offline", "--lr", "0.01", "--seed", "3", "--out", "b"]].concat());
    assert_eq!(second["features"]["backbone_runs"], 0);
    let splits = second["features"]["splits"].as_array().unwrap();
    assert!(splits.iter().all(|s| s["source"] == "cache"), "{splits:?}");
    assert_eq!(second["features"]["splits"][0]["features"], first["features"]["splits"][0]["features"]);
    let card: serde_json::Value = serde_json::from_slice(&std::fs::read(sb.path().join("b/head.json")).unwrap()).unwrap();
    assert_eq!(card["training"]["lr"], 0.01);

    // Same settings, same seed: the same head, byte for byte.
    let third = sb.run_json(&[&args[..], &["--offline", "--lr", "0.01", "--seed", "3", "--out", "c"]].concat());
    assert_eq!(third["test_accuracy"], second["test_accuracy"]);
    assert_eq!(std::fs::read(sb.path().join("b/head.safetensors")).unwrap(), std::fs::read(sb.path().join("c/head.safetensors")).unwrap());

    // LASTLAYER_HEAD_DEVICE=backbone trains the head where --device says (the CPU here): the
    // same head, and the log says where; a value it does not know stops before any work.
    let on_backbone = sb
        .command(&[&args[..], &["--offline", "--device", "cpu", "--lr", "0.01", "--seed", "3", "--out", "e"]].concat())
        .env("LASTLAYER_HEAD_DEVICE", "backbone")
        .output()
        .unwrap();
    assert!(on_backbone.status.success(), "{}", stderr(&on_backbone));
    assert!(stderr(&on_backbone).contains("head: trained on the CPU, 30 x 512 features"), "{}", stderr(&on_backbone));
    assert_eq!(std::fs::read(sb.path().join("b/head.safetensors")).unwrap(), std::fs::read(sb.path().join("e/head.safetensors")).unwrap());
    let bad = sb.command(&[&args[..], &["--offline", "--out", "f"]].concat()).env("LASTLAYER_HEAD_DEVICE", "gpu").output().unwrap();
    assert_fails(&bad, 2, &["LASTLAYER_HEAD_DEVICE", "'gpu'", "backbone"]);
    assert!(!sb.path().join("f/head.json").exists());
    let status: Value = serde_json::from_slice(&std::fs::read(sb.path().join("f/status.json")).unwrap()).unwrap();
    assert_eq!(status["state"], "failed", "{status}");

    // The head is refit on all 30 training rows after the choice, and head.json says so;
    // --no-refit keeps the head trained on the rows outside validation, another head.
    assert_eq!(card["training"]["refit"], true);
    assert_eq!(card["report"]["refit"]["rows"], 30);
    assert_eq!(card["report"]["refit"]["l2"], card["report"]["l2"]);
    sb.run_json(&[&args[..], &["--offline", "--lr", "0.01", "--seed", "3", "--no-refit", "--out", "d"]].concat());
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(sb.path().join("d/head.json")).unwrap()).unwrap();
    assert_eq!(kept["training"]["refit"], false);
    assert!(kept["report"].get("refit").is_none(), "{}", kept["report"]);
    assert_eq!((&kept["report"]["train_rows"], &kept["report"]["l2"]), (&card["report"]["train_rows"], &card["report"]["l2"]));
    assert_ne!(std::fs::read(sb.path().join("b/head.safetensors")).unwrap(), std::fs::read(sb.path().join("d/head.safetensors")).unwrap());
}

#[test]
fn damaged_download_is_removed_and_reported() {
    let mut sb = Sandbox::new();
    let server = FakeServer::start();
    let (_, mut weights) = random_weights("resnet18", sb.path());
    let sha = sha256(&weights);
    let n = weights.len();
    weights[n - 10] ^= 0xff; // altered in transit: etag still says the original sha256
    server.serve_hub_file_with_etag(REPO, "model.safetensors", weights, COMMIT, &sha);
    sb.set("HF_ENDPOINT", server.base.clone());
    let out = sb.run(&["fetch", "resnet18"]);
    assert_fails(&out, 5, &["sha256", &sha]);
    let blobs = sb.path().join("hf/hub/models--timm--resnet18.tv_in1k/blobs");
    // Only the empty `<blob>.lock` may remain: no data file, not even a `.part` to resume from.
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).filter(|n| !n.to_string_lossy().ends_with(".lock")).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a damaged blob was left in the HF cache: {left:?}");
    assert!(!sb.path().join("cache/pins.json").exists(), "a damaged download must not be pinned");
}

#[test]
fn offline_without_a_cache_says_what_to_do() {
    let sb = Sandbox::new();
    let out = sb.run(&["--offline", "fetch", "resnet50"]);
    assert_fails(&out, 4, &["--offline", "lastlayer fetch resnet50"]);
    let out = sb.run(&["--offline", "train", "--model", "resnet18", "--data", "cifar10", "--out", "x"]);
    assert_fails(&out, 4, &["--offline"]);
}

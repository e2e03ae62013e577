//! A user's own folders, Python reading the cache, other backbones, and bad input: each
//! failure ends with one `error:` line naming the file or flag, a meaningful exit status, and
//! no panic.


use std::path::Path;

use crate::common::*;
use serde_json::Value;

fn weights(sb: &Sandbox, model: &str) -> String {
    random_weights(model, sb.path()).0.display().to_string()
}



#[test]
fn own_folders_train_predict_and_python_reads_the_cache() {
    let sb = Sandbox::new();
    let w = weights(&sb, "resnet18");
    let data = shared_data().join("imagefolder-sample");
    let out = sb.run_json(&[
        "--json", "train", "--model", "resnet18", "--data", data.to_str().unwrap(), "--limit", "40", "--weights", &w, "--precision", "fp32",
        "--out", "folders",
    ]);
    let classes = out["features"]["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 10);
    let splits = out["features"]["splits"].as_array().unwrap();
    assert_eq!((splits[0]["rows"].as_u64(), splits[1]["rows"].as_u64()), (Some(40), Some(40)));
    assert_eq!(out["test"]["rows"], 40);
    let card: Value = serde_json::from_slice(&std::fs::read(sb.path().join("folders/head.json")).unwrap()).unwrap();
    assert_eq!(card["preprocessing"]["resize"]["mode"], "shorter_side_center_crop");
    assert_eq!(card["backbone"]["weights"]["kind"], "local");

    // Python's safetensors reads the cache entry: same rows, width, labels and values.
    let entry = Path::new(splits[0]["features"].as_str().unwrap()).parent().unwrap().to_path_buf();
    let py = python_script("read_cache.py", &[entry.to_str().unwrap()]);
    assert!(py.ok, "{}", py.stderr);
    let py: Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!((py["rows"].as_u64(), py["width"].as_u64()), (Some(40), Some(512)));
    assert_eq!(py["labels_dtype"], "torch.int64");
    let tensors = tch::Tensor::read_safetensors(entry.join("features.safetensors")).unwrap();
    let feats = &tensors.iter().find(|(n, _)| n == "features").unwrap().1;
    let rust_sum = feats.to_kind(tch::Kind::Double).sum(tch::Kind::Double).double_value(&[]);
    assert!((py["sum"].as_f64().unwrap() - rust_sum).abs() <= 1e-9 * rust_sum.abs().max(1.0));
    assert_eq!(py["classes"][0], classes[0]);

    // predict takes a folder: one prediction per picture, every class name known.
    let val_cats = data.join("val/cat");
    let n_files = std::fs::read_dir(&val_cats).unwrap().count();
    let preds = sb.run_json(&["--json", "predict", "folders", val_cats.to_str().unwrap(), "-k", "1"]);
    let preds = preds.as_array().unwrap();
    assert_eq!(preds.len(), n_files);
    assert!(preds.iter().all(|p| classes.contains(&p["top"][0]["class"])));
}

#[test]
fn inception_v3_gives_2048_features_at_299() {
    let sb = Sandbox::new();
    let w = weights(&sb, "inception_v3");
    let dir = cifar_copy(&sb);
    let out = sb.run_json(&[
        "--json", "extract", "--model", "inception_v3", "--data", "cifar10", "--data-dir", dir.to_str().unwrap(), "--split", "test",
        "--limit", "6", "--weights", &w, "--precision", "fp32",
    ]);
    assert_eq!(out["preprocessing"]["input_size"], 299);
    let path = out["splits"][0]["features"].as_str().unwrap();
    let t = tch::Tensor::read_safetensors(path).unwrap();
    assert_eq!(t.iter().find(|(n, _)| n == "features").unwrap().1.size(), vec![6, 2048]);
    // A second extract finds the entry instead of recomputing it.
    let again = sb.run_json(&[
        "--json", "extract", "--model", "inception_v3", "--data", "cifar10", "--data-dir", dir.to_str().unwrap(), "--split", "test",
        "--limit", "6", "--weights", &w, "--precision", "fp32",
    ]);
    assert_eq!(again["splits"][0]["source"], "cache");
    assert_eq!(again["backbone_runs"], 0);
}

#[test]
fn flags_out_of_range_name_the_flag() {
    let sb = Sandbox::new();
    let dir = cifar_copy(&sb);
    let d = dir.to_str().unwrap();
    let base = ["train", "--model", "resnet18", "--data", "cifar10", "--data-dir", d, "--out", "x"];
    assert_fails(&sb.run(&[&base[..], &["--sample", "0"]].concat()), 2, &["--sample"]);
    assert_fails(&sb.run(&[&base[..], &["--lr", "-1"]].concat()), 2, &["--lr"]);
    assert_fails(&sb.run(&[&base[..], &["--val-fraction", "1.5"]].concat()), 2, &["--val-fraction"]);
    let weighted = sb.run(&[&base[..], &["--class-weight", "rare"]].concat());
    assert_fails(&weighted, 2, &["--class-weight", "rare"]);
    assert!(stderr(&weighted).contains("possible values: none, balanced"), "{}", stderr(&weighted));
    // Five pictures of ten classes: five classes have none, and balanced weights name one.
    // (Found once the features are there: the run folder holds its status, `failed`.)
    let w = weights(&sb, "resnet18");
    let out = sb.run(&["train", "--model", "resnet18", "--data", "cifar10", "--data-dir", d, "--out", "y", "--limit", "5", "--class-weight", "balanced", "--precision", "fp32", "--weights", &w]);
    assert_fails(&out, 2, &["--class-weight", "has no training picture"]);
    let line = stderr(&out).lines().find(|l| l.starts_with("error:")).unwrap().to_string();
    let names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
    assert!(names.iter().any(|n| line.contains(&format!("'{n}'"))), "no class named: {line}");
    assert_fails(&sb.run(&["train", "--model", "resnet9", "--data", "cifar10", "--data-dir", d, "--out", "x"]), 2, &["resnet9", "resnet50"]);
    assert_fails(&sb.run(&["train", "--model", "resnet18", "--data", "no/such/folder", "--out", "x"]), 2, &["--data", "no/such/folder"]);
    assert!(!sb.path().join("x").exists(), "a failed command wrote its run folder");
}

#[test]
fn damaged_cifar_files_are_named() {
    let sb = Sandbox::new();
    let w = weights(&sb, "resnet18");
    let dir = cifar_copy(&sb);
    let args = |d: &Path| {
        ["extract", "--model", "resnet18", "--data", "cifar10", "--data-dir", d.to_str().unwrap(), "--weights", &w, "--limit", "5"]
            .map(String::from)
            .to_vec()
    };
    let run = |d: &Path| sb.run(&args(d).iter().map(String::as_str).collect::<Vec<_>>());

    let test_batch = dir.join("test_batch.bin");
    let good = std::fs::read(&test_batch).unwrap();
    std::fs::write(&test_batch, &good[..good.len() - 100]).unwrap();
    assert_fails(&run(&dir), 3, &["test_batch.bin", "3073"]);

    let mut bad_label = good.clone();
    bad_label[3073 * 2] = 11;
    std::fs::write(&test_batch, &bad_label).unwrap();
    assert_fails(&run(&dir), 3, &["test_batch.bin", "label 11"]);

    std::fs::remove_file(&test_batch).unwrap();
    assert_fails(&run(&dir), 3, &["test_batch.bin", "missing"]);
    std::fs::write(&test_batch, &good).unwrap();
    assert!(run(&dir).status.success());
}

#[test]
fn wrong_weights_files_are_explained() {
    let sb = Sandbox::new();
    let dir = cifar_copy(&sb);
    let d = dir.to_str().unwrap();
    let r18 = weights(&sb, "resnet18");
    let args = |model: &str, w: &str| sb.run(&["extract", "--model", model, "--data", "cifar10", "--data-dir", d, "--weights", w, "--limit", "5"]);
    // ResNet-18 weights for a ResNet-50: missing tensors, named.
    assert_fails(&args("resnet50", &r18), 3, &["missing", "layer1.0.conv3.weight"]);
    // Not safetensors at all.
    let junk = sb.path().join("junk.safetensors");
    std::fs::write(&junk, b"this is not a safetensors file").unwrap();
    assert_fails(&args("resnet18", junk.to_str().unwrap()), 3, &["junk.safetensors", "safetensors"]);
    // No such file.
    assert_fails(&args("resnet18", "nowhere.safetensors"), 3, &["nowhere.safetensors"]);
}

#[test]
fn folder_with_one_class_is_refused() {
    let sb = Sandbox::new();
    let root = sb.path().join("pics/only");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(shared_data().join("imagenet-check/chelsea.png"), root.join("a.png")).unwrap();
    let w = weights(&sb, "resnet18");
    let out = sb.run(&["extract", "--model", "resnet18", "--data", sb.path().join("pics").to_str().unwrap(), "--weights", &w]);
    assert_fails(&out, 3, &["at least two"]);
}

/// `lastlayer models`: every registry model once, in columns that line up whatever the names'
/// lengths (the hub repo starts at one column on every row), the published linear-probe figures
/// with their numbered sources, and the same facts in `--json`.
#[test]
fn models_table_is_aligned_and_names_its_sources() {
    let sb = Sandbox::new();
    let out = sb.run(&["models"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let header = lines[0];
    let repo_col = header.find("hub repo").expect("a hub repo column");
    let registry = lastlayer::hub::Registry::builtin();
    for m in registry.models() {
        let row = lines.iter().find(|l| l.trim_start().starts_with(&format!("{} ", m.name))).unwrap_or_else(|| panic!("no row for {}\n{text}", m.name));
        assert_eq!(row.find(&m.hub_repo), Some(repo_col), "{}'s hub repo is not in the column\n{text}", m.name);
    }
    let dino = lines.iter().find(|l| l.trim_start().starts_with("vit_base_patch14_dinov2 ")).unwrap();
    assert!(dino.contains("98.7% [2]") && dino.contains("43.9"), "{dino}");
    assert!(text.contains("[2] DINOv2 (Oquab et al., 2023)"), "{text}");
    let json = sb.run_json(&["--json", "models"]);
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), registry.models().len());
    assert!(rows.iter().all(|r| r["entry"]["gflops"].as_f64().is_some_and(|g| g > 0.0)), "{json}");
}

/// A Vision Transformer's input size must be a multiple of its patch: refused before any work,
/// naming the flag and the two nearest sizes that would do.
#[test]
fn vit_input_size_that_is_not_a_multiple_of_the_patch_is_refused() {
    let sb = Sandbox::new();
    let w = weights(&sb, "vit_small_patch14_dinov2");
    let data = cifar_sample_dir();
    let out = sb.run(&["extract", "--model", "vit_small_patch14_dinov2", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(),
        "--split", "test", "--limit", "10", "--input-size", "100"]);
    assert_fails(&out, 2, &["--input-size", "100", "patch size 14", "98", "112"]);
    assert!(!sb.path().join("cache/features").exists() || std::fs::read_dir(sb.path().join("cache/features")).unwrap().next().is_none());
}

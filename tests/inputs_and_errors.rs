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

/// Copies `per_class` training and `test` validation pictures of each of `classes` from the
/// shared folder sample, named `<class>-<file>` (unique across classes), into `place(split,
/// class, name)` under `root`; returns `(split, class, name)` of each, `split` `train` or `val`.
fn copy_pictures(root: &Path, classes: &[&str], per_class: usize, test: usize, place: impl Fn(&str, &str, &str) -> String) -> Vec<(String, String, String)> {
    let src = shared_data().join("imagefolder-sample");
    let mut out = Vec::new();
    for (split, n) in [("train", per_class), ("val", test)] {
        for c in classes {
            let mut files: Vec<_> = std::fs::read_dir(src.join(split).join(c)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            files.sort();
            for f in files.into_iter().take(n) {
                let name = format!("{c}-{f}");
                let to = root.join(place(split, c, &name));
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(src.join(split).join(c).join(&f), &to).unwrap();
                out.push((split.to_string(), c.to_string(), name));
            }
        }
    }
    out
}

/// Every file under `dir` with its size: what a failed command must leave as it was.
fn tree(dir: &Path) -> Vec<(String, u64)> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, u64)>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.push((p.strip_prefix(base).unwrap().display().to_string(), p.metadata().unwrap().len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The same pictures labelled three ways (class folders in train/ and val/; one metadata.csv
/// at the top naming `train/...` and `val/...`; a metadata.jsonl in each of training/ and
/// validation/ naming `pics/...`) give the same classes, the same cached features and labels,
/// byte for byte, and the same head.
#[test]
fn metadata_files_label_as_class_folders_do() {
    let sb = Sandbox::new();
    let w = weights(&sb, "resnet18");
    let classes = ["cat", "dog", "ship"];
    // One folder name (it is the data set's name, part of the cache key).
    let folders = sb.path().join("folders/pets");
    let csv = sb.path().join("csv/pets");
    let jsonl = sb.path().join("jsonl/pets");
    let pics = copy_pictures(&folders, &classes, 4, 2, |s, c, n| format!("{s}/{c}/{n}"));
    copy_pictures(&csv, &classes, 4, 2, |s, _, n| format!("{s}/{n}"));
    copy_pictures(&jsonl, &classes, 4, 2, |s, _, n| format!("{}/pics/{n}", if s == "train" { "training" } else { "validation" }));
    // Rows out of order, and a row written twice with the same label: neither changes anything.
    let mut rows: Vec<String> = pics.iter().rev().map(|(s, c, n)| format!("{s}/{n},{c}")).collect();
    rows.push(rows[0].clone());
    std::fs::write(csv.join("metadata.csv"), format!("file_name,label\n{}\n", rows.join("\n"))).unwrap();
    for (split, dir) in [("train", "training"), ("val", "validation")] {
        let lines: Vec<String> = pics
            .iter()
            .filter(|(s, _, _)| s == split)
            .map(|(_, c, n)| serde_json::json!({"file_name": format!("pics/{n}"), "caption": "a photo", "label": c}).to_string())
            .collect();
        std::fs::write(jsonl.join(dir).join("metadata.jsonl"), lines.join("\n") + "\n").unwrap();
    }

    let mut results = Vec::new();
    for (name, data) in [("folders", &folders), ("csv", &csv), ("jsonl", &jsonl)] {
        let cache = sb.path().join(format!("cache-{name}"));
        let out = sb.run_json(&[
            "--json", "--cache-dir", cache.to_str().unwrap(), "train", "--model", "resnet18", "--data", data.to_str().unwrap(), "--weights", &w,
            "--precision", "fp32", "--input-size", "64", "--epochs", "5", "--out", &format!("run-{name}"),
        ]);
        assert_eq!(out["features"]["classes"], serde_json::json!(classes), "{name}");
        let splits = out["features"]["splits"].as_array().unwrap();
        let mut files = Vec::new();
        for split in ["train", "test"] {
            let s = splits.iter().find(|s| s["split"] == split).unwrap();
            assert_eq!(s["rows"].as_u64(), Some(if split == "train" { 12 } else { 6 }), "{name} {split}");
            assert_eq!(s["source"], "extracted", "{name} {split}: each layout has a cache of its own");
            let features = Path::new(s["features"].as_str().unwrap());
            files.push(std::fs::read(features).unwrap());
            // The cache entry's name is the digest of the model, preprocessing and the
            // pictures' keys, labels and bytes: the same whatever labelled them.
            files.push(features.parent().unwrap().file_name().unwrap().to_string_lossy().as_bytes().to_vec());
        }
        files.push(std::fs::read(sb.path().join(format!("run-{name}/head.safetensors"))).unwrap());
        results.push((name, files));
    }
    for (name, files) in &results[1..] {
        for (i, what) in ["train features", "train entry", "test features", "test entry", "head"].iter().enumerate() {
            assert!(files[i] == results[0].1[i], "{name}: {what} differ from the class folders'");
        }
    }
    // review names each picture by its path in the data folder, as the metadata file found it.
    let cache = sb.path().join("cache-jsonl");
    let review = sb.run_json(&["--json", "--cache-dir", cache.to_str().unwrap(), "review", "run-jsonl"]);
    let named: Vec<&str> = ["mistakes", "label_issues"].iter().flat_map(|k| review[k].as_array().unwrap()).map(|m| m["picture"].as_str().unwrap()).collect();
    assert!(!named.is_empty(), "a head on random features makes mistakes on 6 test pictures");
    for n in named {
        assert!((n.starts_with("training/pics/") || n.starts_with("validation/pics/")) && jsonl.join(n).is_file(), "review names {n}");
    }
}

/// A metadata row naming a missing file, a path outside the folder, an empty label, or a
/// picture listed twice with two labels: exit 3, the file and line named, and nothing written
/// to the cache or the run folder.
#[test]
fn bad_metadata_rows_are_refused_naming_the_line() {
    let sb = Sandbox::new();
    let w = weights(&sb, "resnet18");
    let data = sb.path().join("pics");
    let pics = copy_pictures(&data, &["cat", "dog"], 2, 0, |_, _, n| format!("images/{n}"));
    let good: Vec<String> = pics.iter().map(|(_, c, n)| format!("images/{n},{c}")).collect();
    std::fs::write(sb.path().join("outside.jpg"), std::fs::read(data.join(format!("images/{}", pics[0].2))).unwrap()).unwrap();
    let cache = sb.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let before = tree(&cache);
    let (first, second) = (&pics[0].2, &pics[2].2);
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("missing file", "images/nowhere.jpg,cat".into(), vec!["line 6", "'images/nowhere.jpg' does not exist"]),
        ("parent folder", "../outside.jpg,cat".into(), vec!["line 6", "'../outside.jpg'", ".."]),
        ("absolute path", format!("{},cat", sb.path().join("outside.jpg").display()), vec!["line 6", "absolute"]),
        ("URL", "https://example.com/a.jpg,cat".into(), vec!["line 6", "URL"]),
        ("empty label", format!("images/{first},"), vec!["line 6", "empty"]),
        ("two labels", format!("images/{second},cat"), vec!["line 6", "listed twice", "line 4"]),
    ];
    for (what, row, needles) in &cases {
        for file in ["metadata.csv", "labels.csv"] {
            let text = format!("file_name,label\n{}\n{row}\n", good.join("\n"));
            let mut args = vec!["train", "--model", "resnet18", "--data", data.to_str().unwrap(), "--weights", &w, "--precision", "fp32", "--input-size", "64", "--out", "run"];
            let labels = sb.path().join(file);
            if file == "labels.csv" {
                std::fs::remove_file(data.join("metadata.csv")).unwrap();
                args.extend(["--labels", labels.to_str().unwrap()]);
                std::fs::write(&labels, &text).unwrap();
            } else {
                std::fs::write(data.join(file), &text).unwrap();
            }
            let out = sb.run(&args);
            let mut needles = needles.clone();
            needles.push(file);
            assert_fails(&out, 3, &needles);
            assert!(!sb.path().join("run").exists(), "{what} ({file}): the run folder was written");
            assert_eq!(tree(&cache), before, "{what} ({file}): the cache changed");
        }
    }
    // The flags: a column the file lacks, a labels file that is missing or not CSV/JSONL, a
    // label column with class folders or CIFAR-10. Exit 2 for a flag, 3 for a missing file.
    std::fs::write(data.join("metadata.csv"), format!("file_name,label,note\n{}\n", good.iter().map(|r| format!("{r},x")).collect::<Vec<_>>().join("\n"))).unwrap();
    let folders = sb.path().join("folders");
    copy_pictures(&folders, &["cat", "dog"], 1, 0, |_, c, n| format!("{c}/{n}"));
    let d = data.to_str().unwrap();
    for (flags, code, needles) in [
        (vec!["--data", d, "--label-column", "species"], 2, vec!["--label-column", "'species'", "'label'", "'note'"]),
        (vec!["--data", d, "--labels", "nowhere.jsonl"], 3, vec!["nowhere.jsonl", "--labels"]),
        (vec!["--data", d, "--labels", "labels.txt"], 2, vec!["--labels", ".csv or .jsonl"]),
        (vec!["--data", folders.to_str().unwrap(), "--label-column", "label"], 2, vec!["--label-column", "no metadata.csv"]),
        (vec!["--data", "cifar10", "--label-column", "label"], 2, vec!["--label-column", "folder"]),
    ] {
        let mut args = vec!["train", "--model", "resnet18", "--weights", &w, "--out", "run"];
        args.extend(flags.iter().copied());
        assert_fails(&sb.run(&args), code, &needles);
        assert!(!sb.path().join("run").exists(), "{flags:?}: the run folder was written");
        assert_eq!(tree(&cache), before, "{flags:?}: the cache changed");
    }

    // The rows alone are fine: the same command trains.
    std::fs::write(data.join("metadata.csv"), format!("file_name,label\n{}\n", good.join("\n"))).unwrap();
    let out = sb.run_json(&[
        "--json", "train", "--model", "resnet18", "--data", data.to_str().unwrap(), "--weights", &w, "--precision", "fp32", "--input-size", "64",
        "--test-fraction", "0.5", "--epochs", "2", "--out", "run",
    ]);
    assert_eq!(out["features"]["classes"], serde_json::json!(["cat", "dog"]));
    let test_rows = out["test"]["rows"].as_u64().unwrap();
    assert!(test_rows > 0);

    // The same rows in a labels file elsewhere, the class in a column of another name: the run
    // folder remembers both flags, and eval opens the data again with them.
    std::fs::remove_file(data.join("metadata.csv")).unwrap();
    let labels = sb.path().join("elsewhere/labels.jsonl");
    std::fs::create_dir_all(labels.parent().unwrap()).unwrap();
    let rows: Vec<String> = pics.iter().map(|(_, c, n)| serde_json::json!({"file_name": format!("images/{n}"), "species": c, "note": ""}).to_string()).collect();
    std::fs::write(&labels, rows.join("\n")).unwrap();
    let out = sb.run_json(&[
        "--json", "train", "--model", "resnet18", "--data", data.to_str().unwrap(), "--labels", labels.to_str().unwrap(), "--label-column", "species",
        "--weights", &w, "--precision", "fp32", "--input-size", "64", "--test-fraction", "0.5", "--epochs", "2", "--out", "run2",
    ]);
    assert_eq!(out["features"]["classes"], serde_json::json!(["cat", "dog"]));
    let eval = sb.run_json(&["--json", "eval", "run2"]);
    assert_eq!(eval["rows"].as_u64().or(eval["test"]["rows"].as_u64()), Some(test_rows), "{eval}");
}

/// Split folders as Hugging Face names them: `training/` with `testing/` (and `validation/`,
/// not used: test is preferred), the log saying which; and a folder with `train/` alone, its
/// test split drawn from it by `--test-fraction`.
#[test]
fn split_folders_by_hugging_face_names_and_train_alone() {
    let sb = Sandbox::new();
    let w = weights(&sb, "resnet18");
    let named = sb.path().join("named");
    copy_pictures(&named, &["cat", "dog"], 3, 2, |s, c, n| format!("{}/{c}/{n}", if s == "train" { "training" } else { "testing" }));
    copy_pictures(&named, &["cat", "dog"], 0, 1, |_, c, n| format!("validation/{c}/{n}"));
    let out = sb.run(&[
        "--json", "extract", "--model", "resnet18", "--data", named.to_str().unwrap(), "--weights", &w, "--precision", "fp32", "--input-size", "64",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("training/ for training, testing/ for test") && err.contains("validation/ is not used"), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = |v: &Value, split: &str| v["splits"].as_array().or(v["features"]["splits"].as_array()).unwrap().iter().find(|s| s["split"] == split).unwrap()["rows"].as_u64();
    assert_eq!((rows(&v, "train"), rows(&v, "test")), (Some(6), Some(4)));

    let alone = sb.path().join("alone");
    copy_pictures(&alone, &["cat", "dog"], 10, 0, |_, c, n| format!("train/{c}/{n}"));
    let out = sb.run(&[
        "--json", "extract", "--model", "resnet18", "--data", alone.to_str().unwrap(), "--weights", &w, "--precision", "fp32", "--input-size", "64",
        "--test-fraction", "0.3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("train/ alone"), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (train, test) = (rows(&v, "train").unwrap(), rows(&v, "test").unwrap());
    assert_eq!(train + test, 20);
    assert!(test > 0 && train > test, "{train} train, {test} test");
}

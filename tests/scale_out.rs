//! Many workers, one cache: `extract --shard I/N` (and `auto` from Slurm's or Kubernetes'
//! variables) gives shard entries that `train` merges into the bytes of an unsharded
//! extraction; a missing or damaged shard is named with the command that makes it; a killed
//! shard resumes to the same bytes; WebDataset tar shards are read in place.


use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

fn run_in(sb: &Sandbox, cache: &Path, args: &[&str]) -> Output {
    let mut cmd = sb.command(args);
    cmd.env("LASTLAYER_CACHE", cache);
    cmd.output().unwrap()
}

fn ok(out: Output, what: &str) -> Value {
    assert!(out.status.success(), "{what} failed: {}\n{}", out.status, stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e})"))
}

fn blake3_of(path: &str) -> String {
    blake3::hash(&std::fs::read(path).unwrap()).to_hex().to_string()
}

/// The shard entry folders (finished or partial) under `cache`.
fn shard_dirs(cache: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for m in std::fs::read_dir(cache.join("features")).into_iter().flatten().flatten() {
        for e in std::fs::read_dir(m.path()).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.contains(".shard-") && !n.ends_with(".lock") {
                out.push(n);
            }
        }
    }
    out.sort();
    out
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The command printed after "make it with:" in `err`, as arguments (without `lastlayer`).
fn printed_command(err: &str) -> Vec<String> {
    let line = err.lines().skip_while(|l| !l.contains("make it with:")).nth(1).unwrap_or_else(|| panic!("no command in\n{err}"));
    let words: Vec<String> = line.split_whitespace().map(String::from).collect();
    assert_eq!(words[0], "lastlayer", "{line}");
    words[1..].to_vec()
}

#[test]
fn three_shards_one_killed_and_resumed_merge_into_the_unsharded_bytes_and_head() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_sample_dir().display().to_string();
    let common: Vec<&str> = vec![
        "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", &data, "--limit", "150", "--precision", "fp32",
        "--input-size", "64", "--extract-batch-size", "16", "--chunk-rows", "16",
    ];
    let with = |head: &[&str], tail: &[&str]| -> Vec<String> {
        head.iter().chain(common.iter()).chain(tail.iter()).map(|s| s.to_string()).collect()
    };
    let train_args = |out: &str| with(&["--json", "train"], &["--epochs", "5", "--out", out]);

    // Reference: one unsharded run.
    let ref_cache = sb.path().join("cache-ref");
    let reference = ok(run_in(&sb, &ref_cache, &strs(&train_args("ref"))), "reference train");

    // Shards 0/3 (killed once mid-way, then resumed) and 2/3 of both splits.
    let cache = sb.path().join("cache");
    let shard0 = with(&["--json", "extract"], &["--shard", "0/3"]);
    let mut cmd = sb.command(&strs(&shard0));
    cmd.env("LASTLAYER_CACHE", &cache);
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while find_model_chunks(&cache, "resnet18") < 1 {
        assert!(start.elapsed() < Duration::from_secs(120), "no chunk appeared");
        assert!(child.try_wait().unwrap().is_none(), "shard 0/3 ended before it could be killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = run_in(&sb, &cache, &strs(&shard0));
    assert!(stderr(&resumed).contains("resuming"), "{}", stderr(&resumed));
    let s0 = ok(resumed, "shard 0/3 resumed");
    assert!(s0["splits"][0]["features"].as_str().unwrap().contains(".shard-0-of-3/"), "{s0}");
    assert_eq!(s0["splits"][0]["rows"], 48, "shard 0 of 10 batches of 16 (150 rows) is 3 batches");
    ok(run_in(&sb, &cache, &strs(&with(&["--json", "extract"], &["--shard", "2/3"]))), "shard 2/3");

    // Shard 1/3 is missing: train names it, prints the command that makes it, exits 3, and
    // deletes nothing.
    let before = shard_dirs(&cache);
    assert_eq!(before.len(), 4, "{before:?}");
    let out = run_in(&sb, &cache, &strs(&train_args("sharded")));
    assert_fails(&out, 3, &["shard 1/3 is missing", ".shard-1-of-3"]);
    let err = stderr(&out);
    assert!(err.contains("--shard 1/3") && err.contains("--split train") && err.contains("--limit 150"), "{err}");
    assert_eq!(shard_dirs(&cache), before);

    // Running the printed commands (train's, then test's) completes the sets.
    for split in ["train", "test"] {
        let out = run_in(&sb, &cache, &strs(&train_args("sharded")));
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        let command = printed_command(&stderr(&out));
        assert!(command.contains(&split.to_string()), "{command:?}");
        ok(run_in(&sb, &cache, &command.iter().map(String::as_str).chain(["--json"]).collect::<Vec<_>>()), "printed command");
    }

    // Now train merges the shards: the same features file and the same head as unsharded.
    let sharded = ok(run_in(&sb, &cache, &strs(&train_args("sharded"))), "sharded train");
    for i in 0..2 {
        let (a, b) = (reference["features"]["splits"][i]["features"].as_str().unwrap(), sharded["features"]["splits"][i]["features"].as_str().unwrap());
        assert!(!b.contains(".shard-"), "{b}");
        assert_eq!(blake3_of(a), blake3_of(b), "split {i}: merged features differ from unsharded ones");
    }
    assert_eq!(
        std::fs::read(sb.path().join("ref/head.safetensors")).unwrap(),
        std::fs::read(sb.path().join("sharded/head.safetensors")).unwrap(),
        "the head trained on merged features differs"
    );
    assert_eq!(sharded["test_accuracy"], reference["test_accuracy"]);
    assert!(shard_dirs(&cache).is_empty(), "the merged shards were not deleted: {:?}", shard_dirs(&cache));
}

#[test]
fn shard_auto_reads_slurm_and_kubernetes_variables_and_cache_merge_joins_them() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_sample_dir().display().to_string();
    let args: Vec<&str> = vec![
        "--json", "extract", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", &data, "--split", "test",
        "--limit", "40", "--precision", "fp32", "--input-size", "64", "--extract-batch-size", "8", "--shard", "auto",
    ];
    let cache = sb.path().join("cache");
    let mut slurm = sb.command(&args);
    slurm.env("LASTLAYER_CACHE", &cache).env("SLURM_ARRAY_TASK_ID", "1").env("SLURM_ARRAY_TASK_COUNT", "2");
    let a = ok(slurm.output().unwrap(), "slurm task 1");
    assert!(a["splits"][0]["features"].as_str().unwrap().contains(".shard-1-of-2/"), "{a}");
    assert_eq!(a["splits"][0]["rows"], 24, "5 batches of 8: shard 1/2 has batches 2..5, rows 16..40: {a}");
    let mut k8s = sb.command(&args);
    k8s.env("LASTLAYER_CACHE", &cache).env("JOB_COMPLETION_INDEX", "0").env("LASTLAYER_SHARDS", "2");
    let b = ok(k8s.output().unwrap(), "indexed job 0");
    assert!(b["splits"][0]["features"].as_str().unwrap().contains(".shard-0-of-2/"), "{b}");
    assert_eq!(b["splits"][0]["rows"], 16, "{b}");

    // Without a scheduler, `auto` is a usage error naming the variables.
    assert_fails(&run_in(&sb, &cache, &args), 2, &["--shard", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]);

    // A damaged shard is named by `cache merge` (exit 3) and kept for inspection.
    let shard1 = a["splits"][0]["features"].as_str().unwrap().to_string();
    let good = std::fs::read(&shard1).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&shard1, &bad).unwrap();
    assert_fails(&run_in(&sb, &cache, &["cache", "merge"]), 3, &["shard 1/2: damaged", ".shard-1-of-2"]);
    std::fs::write(&shard1, &good).unwrap();

    // cache merge joins them into the bytes an unsharded extraction writes.
    let merged = ok(run_in(&sb, &cache, &["--json", "cache", "merge"]), "cache merge");
    assert_eq!(merged[0]["status"], "merged", "{merged}");
    assert_eq!(merged[0]["shards"], 2);
    assert!(shard_dirs(&cache).is_empty(), "{:?}", shard_dirs(&cache));
    let whole: Vec<&str> = args.iter().copied().take(args.len() - 2).collect();
    let again = ok(run_in(&sb, &cache, &whole), "extract after merge");
    assert_eq!(again["splits"][0]["source"], "cache", "{again}");
    assert_eq!(again["backbone_runs"], 0);
    let unsharded = ok(run_in(&sb, &sb.path().join("cache-ref"), &whole), "unsharded extract");
    assert_eq!(
        blake3_of(again["splits"][0]["features"].as_str().unwrap()),
        blake3_of(unsharded["splits"][0]["features"].as_str().unwrap())
    );
}

#[test]
fn webdataset_tars_are_read_in_place_skip_bad_samples_and_shard_by_whole_tars() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let wds = make_webdataset(sb.path(), 3, (3, 4), (3, 2));
    let train = format!("{}/train-{{000..003}}.tar", wds.display());
    let test = format!("{}/test-{{000..001}}.tar", wds.display());
    let base: Vec<&str> = vec![
        "--model", "resnet18", "--weights", &w, "--data", &train, "--test-data", &test, "--precision", "fp32", "--input-size", "64",
        "--extract-batch-size", "4",
    ];
    let cache_ref = sb.path().join("cache-ref");
    let whole: Vec<&str> = ["--json", "extract"].into_iter().chain(base.iter().copied()).collect();
    let out = run_in(&sb, &cache_ref, &whole);
    let err = stderr(&out);
    let reference = ok(out, "unsharded webdataset extract");
    assert_eq!(reference["splits"][0]["rows"], 36, "4 tars x 3 x 3 pictures");
    assert_eq!(reference["splits"][1]["rows"], 18);
    assert!(err.contains("train-001.tar:broken: not a readable picture"), "{err}");
    assert!(err.contains("train-001.tar:nolabel: no nolabel.cls member"), "{err}");
    assert!(err.contains("2 unusable WebDataset sample(s) skipped"), "{err}");
    // The class names come from classes.txt; nothing was unpacked next to the tars.
    assert_eq!(std::fs::read_dir(&wds).unwrap().count(), 4 + 2 + 1);

    // --strict refuses the broken sample, naming it.
    let strict: Vec<&str> = whole.iter().copied().chain(["--strict"]).collect();
    assert_fails(&run_in(&sb, &sb.path().join("cache-strict"), &strict), 3, &["train-001.tar:nolabel", "--strict"]);

    // Two shards by whole tars (train: tars 0-1 and 2-3 = 18 rows each; batches of 4 do not
    // fall on tar boundaries), merged by train's first use: the same bytes.
    let cache = sb.path().join("cache");
    for i in 0..2 {
        let shard = format!("{i}/2");
        let a: Vec<&str> = whole.iter().copied().chain(["--shard", &shard]).collect();
        let got = ok(run_in(&sb, &cache, &a), "webdataset shard");
        assert_eq!(got["splits"][0]["rows"], 18, "{got}");
        assert_eq!(got["splits"][1]["rows"], 9, "{got}");
    }
    let trained = ok(
        run_in(&sb, &cache, &["--json", "train"].into_iter().chain(base.iter().copied()).chain(["--epochs", "3", "--out", "run"]).collect::<Vec<_>>()),
        "train on merged webdataset shards",
    );
    for i in 0..2 {
        assert_eq!(
            blake3_of(trained["features"]["splits"][i]["features"].as_str().unwrap()),
            blake3_of(reference["splits"][i]["features"].as_str().unwrap()),
            "split {i}"
        );
    }
    let card: Value = serde_json::from_slice(&std::fs::read(sb.path().join("run/head.json")).unwrap()).unwrap();
    let names: Vec<&str> = card["classes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(names, ["airplane", "automobile", "bird"]);

    // More shards than tars is refused, naming the count (in a cache without the whole entry:
    // with it, a worker has nothing to do).
    let a: Vec<&str> = whole.iter().copied().chain(["--shard", "4/5"]).collect();
    assert_fails(&run_in(&sb, &sb.path().join("cache-5"), &a), 2, &["--shard", "4 tar file(s)", "at most 4"]);

    // Moved shards are the same data (a cache hit); a rewritten tar member is new data.
    let moved = sb.path().join("moved");
    std::fs::rename(&wds, &moved).unwrap();
    let (m_train, m_test) = (format!("{}/train-{{000..003}}.tar", moved.display()), format!("{}/test-{{000..001}}.tar", moved.display()));
    let margs = [
        "--json", "extract", "--model", "resnet18", "--weights", &w, "--data", &m_train, "--test-data", &m_test, "--precision", "fp32",
        "--input-size", "64", "--extract-batch-size", "4",
    ];
    let hit = ok(run_in(&sb, &cache_ref, &margs), "extract from moved shards");
    assert_eq!(hit["backbone_runs"], 0, "{hit}");
    let tar_path = moved.join("test-000.tar");
    let mut members: Vec<(String, Vec<u8>)> = tar::Archive::new(std::fs::File::open(&tar_path).unwrap())
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            (e.path().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    let pics: Vec<usize> = members.iter().enumerate().filter(|(_, (n, _))| n.ends_with(".jpg")).map(|(i, _)| i).collect();
    let swapped = members[pics[1]].1.clone();
    members[pics[0]].1 = swapped;
    write_tar(&tar_path, &members);
    // The rewritten member now holds the second picture's bytes: a new test entry, whose first
    // two rows are the same picture's features, from the feature store without the backbone.
    let changed = ok(run_in(&sb, &cache_ref, &margs), "extract after rewriting a member");
    assert_eq!(changed["backbone_runs"], 0, "{changed}");
    assert_eq!((changed["splits"][0]["source"].as_str(), changed["splits"][1]["source"].as_str()), (Some("cache"), Some("store")));
    let x = tch::Tensor::read_safetensors(changed["splits"][1]["features"].as_str().unwrap()).unwrap().into_iter().find(|(n, _)| n == "features").unwrap().1;
    let n = x.size()[0];
    let twins = (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).filter(|&(i, j)| x.get(i).equal(&x.get(j))).count();
    assert_eq!(twins, 1, "one pair of rows (the same bytes) must have the same features");
    // Bytes never seen before do go through the backbone, and only they.
    members[pics[0]].1 = shifted_jpeg(&members[pics[2]].1);
    write_tar(&tar_path, &members);
    let fresh = ok(run_in(&sb, &cache_ref, &margs), "extract after writing new bytes");
    assert_eq!((fresh["backbone_runs"].as_u64(), fresh["backbone_rows"].as_u64()), (Some(1), Some(1)), "{fresh}");
}

/// Other bytes of a picture: the JPEG re-encoded after shifting its pixels.
fn shifted_jpeg(jpeg: &[u8]) -> Vec<u8> {
    let img = image::load_from_memory(jpeg).unwrap().to_rgb8();
    let shifted = image::RgbImage::from_fn(img.width(), img.height(), |x, y| *img.get_pixel((x + 1) % img.width(), y));
    let mut out = std::io::Cursor::new(Vec::new());
    shifted.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

#[test]
fn train_streams_features_from_disk_when_asked_and_learns_the_same_classes() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_sample_dir().display().to_string();
    let args = |out: &str| -> Vec<String> {
        ["--json", "train", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", &data, "--limit", "400",
         "--precision", "fp32", "--input-size", "64", "--out", out]
            .map(String::from)
            .to_vec()
    };
    let cache = sb.path().join("cache");
    let mut cmd = sb.command(&strs(&args("streamed")));
    cmd.env("LASTLAYER_CACHE", &cache).env("LASTLAYER_HEAD_STREAM", "always");
    let out = cmd.output().unwrap();
    let log = stderr(&out);
    let streamed = ok(out, "streamed train");
    assert!(log.contains("(streamed)") && log.contains("read from"), "{log}");
    let report = &streamed["report"];
    assert_eq!(report["train_rows"].as_u64().unwrap() + report["val_rows"].as_u64().unwrap(), 400, "{report}");
    // As in memory: the penalty judged at its best temperature, then a refit on every row.
    assert_eq!(report["refit"]["rows"], 400, "{report}");
    assert!(report["logit_scale"].as_f64().is_some_and(|s| s > 0.0), "{report}");
    // The unknown threshold is fitted from the file too, keeping --keep of the validation pictures.
    let kept = streamed["unknown"]["validation_kept"].as_f64().unwrap_or_else(|| panic!("no unknown threshold: {streamed}"));
    assert!((0.95..0.98).contains(&kept), "{}", streamed["unknown"]);
    let mut cmd = sb.command(&strs(&args("in-memory")));
    cmd.env("LASTLAYER_CACHE", &cache).env("LASTLAYER_HEAD_STREAM", "never");
    let out = cmd.output().unwrap();
    assert!(!stderr(&out).contains("(streamed)"));
    let memory = ok(out, "in-memory train");
    // Random backbone weights: both heads learn something of 10 classes (chance is 10%), and
    // land near each other.
    let (a, b) = (streamed["test_accuracy"].as_f64().unwrap(), memory["test_accuracy"].as_f64().unwrap());
    println!("test accuracy: streamed {a}, in memory {b}");
    assert!(a > 0.15 && b > 0.15 && (a - b).abs() < 0.1, "streamed {a}, in memory {b}");
    // The same Mahalanobis part (the same pictures); the energy's head trained the other way.
    let (su, mu) = (&streamed["unknown"], &memory["unknown"]);
    println!("unknown: streamed threshold {} ({}), in memory {} ({})", su["threshold"], su["mahalanobis"], mu["threshold"], mu["mahalanobis"]);
    assert!((su["mahalanobis"]["mean"].as_f64().unwrap() - mu["mahalanobis"]["mean"].as_f64().unwrap()).abs() < 1e-6, "{su} {mu}");

    // `eval` scores a test split too big for memory from its file, a block of rows at a time:
    // the evaluation it gives is the in-memory one.
    let eval = |mode: &str| {
        let mut cmd = sb.command(&["--json", "eval", "streamed"]);
        cmd.env("LASTLAYER_CACHE", &cache).env("LASTLAYER_HEAD_STREAM", mode);
        let out = cmd.output().unwrap();
        (stderr(&out), ok(out, &format!("eval, LASTLAYER_HEAD_STREAM={mode}")))
    };
    let ((log, from_file), (_, loaded)) = (eval("always"), eval("never"));
    assert!(log.contains("rows scored from") && log.contains("(streamed)"), "{log}");
    assert_eq!(from_file["test"]["confusion"], loaded["test"]["confusion"]);
    assert_eq!((&from_file["test_accuracy"], &from_file["test"]["rows"]), (&streamed["test_accuracy"], &loaded["test"]["rows"]));
    let losses = (from_file["test"]["loss"].as_f64().unwrap(), loaded["test"]["loss"].as_f64().unwrap());
    assert!((losses.0 - losses.1).abs() < 1e-5, "{losses:?}");

    // `sweep` streams every trial from the file as `train` does.
    let mut swept = args("swept");
    swept[1] = "sweep".into();
    swept.extend(["--lr", "1e-3,1e-2", "--weight-decay", "1e-4", "--epochs", "10"].map(String::from));
    let mut cmd = sb.command(&strs(&swept));
    cmd.env("LASTLAYER_CACHE", &cache).env("LASTLAYER_HEAD_STREAM", "always");
    let out = cmd.output().unwrap();
    let log = stderr(&out);
    let swept = ok(out, "streamed sweep");
    assert!(log.contains("sweep: every trial reads 400 rows"), "{log}");
    let trials = swept["trials"].as_array().unwrap();
    println!("streamed sweep: {trials:?}");
    assert_eq!(trials.len(), 2, "{swept}");
    let val: Vec<f64> = trials.iter().map(|t| t["val_accuracy"].as_f64().unwrap()).collect();
    assert!(val[0] >= val[1] && trials.iter().all(|t| t["val_loss"].as_f64().is_some_and(f64::is_finite)), "{trials:?}");
    // The best setting, retrained (streamed) and scored on the 400 test rows, learned something
    // of 10 classes (validation has only 40 pictures, too few to ask that of every trial).
    let card: Value = serde_json::from_slice(&std::fs::read(sb.path().join("swept/head.json")).unwrap()).unwrap();
    assert_eq!(card["training"]["lr"], trials[0]["lr"], "{}", card["training"]);
    let best = swept["best"]["test_accuracy"].as_f64().unwrap();
    assert!(best > 0.15, "{best}");

    // Views: the validation split is drawn by picture and judged on the pictures themselves;
    // the refit streams every view.
    let mut views = args("views");
    views.extend(["--augment".to_string(), "flip".to_string()]);
    let mut cmd = sb.command(&strs(&views));
    cmd.env("LASTLAYER_CACHE", &cache).env("LASTLAYER_HEAD_STREAM", "always");
    let report = ok(cmd.output().unwrap(), "streamed train on views")["report"].clone();
    assert_eq!((report["train_rows"].as_u64(), report["val_rows"].as_u64(), report["refit"]["rows"].as_u64()), (Some(720), Some(40), Some(800)), "{report}");
}

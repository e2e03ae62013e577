//! Long runs and damaged state: a killed extraction resumes and gives the same features, logs
//! without a terminal are plain lines, `status` tells a died run from a finished one, two
//! processes share one cache entry, damaged cache files are found and recomputed, broken
//! downloads leave nothing that passes as complete, and a full disk loses nothing cached.


use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;


fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn features_of(path: &str) -> tch::Tensor {
    let t = tch::Tensor::read_safetensors(path).unwrap();
    t.into_iter().find(|(n, _)| n == "features").unwrap().1
}

fn spawn(sb: &Sandbox, args: &[&str]) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lastlayer"));
    cmd.args(args).current_dir(sb.path()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in &sb.env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn find_chunks(cache: &Path) -> usize {
    find_model_chunks(cache, "resnet18")
}


/// At 112 px: a quarter of the work at 224, and resuming does not depend on the input size.
#[test]
fn killed_run_resumes_from_its_chunks_and_gives_identical_features() {
    let mut sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_copy(&sb);
    let args = |out: &str| {
        ["--json", "train", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(), "--limit", "320",
         "--precision", "fp32", "--input-size", "112", "--extract-batch-size", "16", "--chunk-rows", "32", "--out", out]
            .map(String::from)
            .to_vec()
    };

    // An uninterrupted run, in its own cache.
    sb.set("LASTLAYER_CACHE", sb.path().join("cache-ref").display().to_string());
    let reference = sb.run_json(&strs(&args("ref")));

    // The same run, killed (SIGKILL) once a few chunks are saved.
    let cache = sb.path().join("cache");
    sb.set("LASTLAYER_CACHE", cache.display().to_string());
    let a = args("run");
    let mut child = spawn(&sb, &strs(&a));
    let start = Instant::now();
    while find_chunks(&cache) < 3 {
        assert!(start.elapsed() < Duration::from_secs(120), "no chunks appeared");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let saved = find_chunks(&cache);

    // status: the run died, part way through extracting train.
    let st = sb.run_json(&["--json", "status", "run"]);
    assert_eq!(st["state"], "died", "{st}");
    assert_eq!(st["stage"], "extract train");
    assert!(st["done"].as_u64().unwrap() > 0 && st["done"].as_u64().unwrap() < 320, "{st}");
    let human = sb.run(&["status", "run"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("run the same command again to resume"));
    // cache ls shows the feature store with the saved rows.
    let ls = sb.run_json(&["--json", "cache", "ls"]);
    let store = ls.as_array().unwrap().iter().find(|l| l["kind"] == "store").unwrap_or_else(|| panic!("no store in {ls}"));
    assert_eq!(store["rows"].as_u64().unwrap() as usize, 32 * saved, "{store}");

    // Run again: it resumes from the saved chunks and ends with the reference's features.
    let out = sb.run(&strs(&a));
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    let resumed: usize = log
        .lines()
        .find_map(|l| l.split("resuming, ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no resume line in\n{log}"));
    assert!(resumed >= 32 * saved.min(10) && resumed.is_multiple_of(32) && resumed < 320, "resumed {resumed} rows with {saved} records saved");
    let resumed_run: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Only the rows the store lacked went through the backbone.
    let through: u64 = resumed_run["features"]["splits"].as_array().unwrap().iter().map(|s| s["backbone_rows"].as_u64().unwrap()).sum();
    assert_eq!(through as usize, 640 - resumed, "{resumed_run}");
    for i in 0..2 {
        let (x, y) = (
            features_of(reference["features"]["splits"][i]["features"].as_str().unwrap()),
            features_of(resumed_run["features"]["splits"][i]["features"].as_str().unwrap()),
        );
        assert!(x.equal(&y), "split {i}: resumed features differ from an uninterrupted run's");
    }
    assert_eq!(resumed_run["test_accuracy"], reference["test_accuracy"]);
    assert_eq!(sb.run_json(&["--json", "status", "run"])["state"], "finished");
    // The store holds every row once, whole.
    let ls = sb.run_json(&["--json", "cache", "ls"]);
    assert_eq!(ls.as_array().unwrap().iter().find(|l| l["kind"] == "store").unwrap()["rows"], 640, "{ls}");
    assert!(sb.run(&["cache", "verify"]).status.success());
}


/// Features are a function of the pictures, weights and settings only: in bf16 (where the
/// frozen engine's first, profiled batches and a short last batch used to round differently)
/// and for a Vision Transformer, a run killed twice and resumed gives the bytes of an
/// uninterrupted one.
#[test]
fn killed_twice_bf16_and_vit_extractions_resume_to_identical_features() {
    // Each engine named, so that the cases are the same on every CPU: the ResNet frozen (what
    // it runs in bf16 on a split this large, 2,000 pictures, on any CPU), the ViT eager (its
    // default) and frozen, warm-up and all.
    for (model, precision, size, engine) in
        [("resnet18", "bf16", "112", "frozen"), ("vit_small_patch14_dinov2", "bf16", "56", "eager"), ("vit_small_patch14_dinov2", "bf16", "56", "frozen")]
    {
        let mut sb = Sandbox::new();
        sb.set("LASTLAYER_ENGINE", engine.to_string());
        let w = random_weights(model, sb.path()).0.display().to_string();
        let data = cifar_copy(&sb);
        // 200 rows: batches of 16 end in a short one of 8. Where bf16 is emulated, 52 rows in
        // batches of 8 (the short one has 4): the same seven batches' worth of kills.
        let (limit, batch) = if native_bf16() {
            ("200", "16")
        } else {
            bf16_shortened(&format!("killed_twice_{model}_{engine}"), "52 rows in batches of 8 instead of 200 in batches of 16");
            ("52", "8")
        };
        let args = ["--json", "extract", "--model", model, "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(),
            "--split", "train", "--limit", limit, "--precision", precision, "--input-size", size, "--extract-batch-size", batch, "--chunk-rows", batch];
        sb.set("LASTLAYER_CACHE", sb.path().join("cache-ref").display().to_string());
        let reference = sb.run_json(&args);

        let cache = sb.path().join("cache");
        sb.set("LASTLAYER_CACHE", cache.display().to_string());
        kill_after_chunks(&sb, &args, &cache, model, 2);
        kill_after_chunks(&sb, &args, &cache, model, 5);
        let out = sb.run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("resuming, "), "{model} {precision}: no resume in\n{}", stderr(&out));
        let resumed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let (x, y) = (
            features_of(reference["splits"][0]["features"].as_str().unwrap()),
            features_of(resumed["splits"][0]["features"].as_str().unwrap()),
        );
        let diff = (&x - &y).abs().max().double_value(&[]);
        assert!(x.equal(&y), "{model} {precision}: resumed features differ from an uninterrupted run's by up to {diff}");
    }
}

#[test]
fn log_without_a_terminal_is_plain_periodic_lines_and_log_file_gets_them_too() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_copy(&sb);
    let out = sb.run(&[
        "extract", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(), "--split", "test",
        "--limit", "64", "--extract-batch-size", "16", "--log-file", "run.log",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(!log.contains('\u{1b}') && !log.contains('\r'), "escape codes or carriage returns in a non-terminal log:\n{log:?}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("extract test: ")).collect();
    assert!(lines.len() >= 2, "{log}");
    for l in &lines {
        assert!(l.contains("images/s") && l.contains("ETA") && l.contains("/64 images"), "{l}");
    }
    let file = std::fs::read_to_string(sb.path().join("run.log")).unwrap();
    assert!(file.contains("extract test: 64/64 images") && !file.contains('\u{1b}'), "{file}");
}

#[test]
fn two_processes_extracting_the_same_entry_compute_it_once() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_copy(&sb);
    let args = ["--json", "extract", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(),
        "--split", "test", "--limit", "96", "--precision", "fp32"];
    let (a, b) = (spawn(&sb, &args), spawn(&sb, &args));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success(), "{}\n{}", stderr(&a), stderr(&b));
    let (ja, jb): (Value, Value) = (serde_json::from_slice(&a.stdout).unwrap(), serde_json::from_slice(&b.stdout).unwrap());
    let runs = ja["backbone_runs"].as_u64().unwrap() + jb["backbone_runs"].as_u64().unwrap();
    assert_eq!(runs, 1, "both processes ran the backbone:\n{}\n{}", stderr(&a), stderr(&b));
    assert_eq!(ja["splits"][0]["features"], jb["splits"][0]["features"]);
    assert!(sb.run(&["cache", "verify"]).status.success());
}

#[test]
fn damaged_or_stale_cache_entries_are_never_used() {
    let sb = Sandbox::new();
    let w1 = random_weights("resnet18", sb.path()).0;
    let w2 = sb.path().join("other.safetensors");
    tch::manual_seed(99);
    lastlayer::backbone::Backbone::random(lastlayer::backbone::Architecture::Resnet18, tch::Device::Cpu).save(&w2).unwrap();
    let data = cifar_copy(&sb);
    let extract = |w: &Path, precision: &str| {
        sb.run_json(&["--json", "extract", "--model", "resnet18", "--weights", w.to_str().unwrap(), "--data", "cifar10", "--data-dir",
            data.to_str().unwrap(), "--split", "test", "--limit", "20", "--precision", precision])
    };
    let first = extract(&w1, "fp32");
    let path = first["splits"][0]["features"].as_str().unwrap().to_string();
    // Other weights or another precision: other entries, computed afresh.
    for (w, p) in [(&w2, "fp32"), (&w1, "bf16")] {
        let other = extract(w, p);
        assert_eq!(other["splits"][0]["source"], "extracted");
        assert_ne!(other["splits"][0]["features"].as_str().unwrap(), path);
    }
    assert_eq!(extract(&w1, "fp32")["splits"][0]["source"], "cache");

    // Damage the file: verify names it (exit 5); the next extract recomputes it.
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 7] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let v = sb.run(&["cache", "verify"]);
    assert_eq!(v.status.code(), Some(5), "{}", stderr(&v));
    assert!(String::from_utf8_lossy(&v.stdout).contains("DAMAGED"), "{}", String::from_utf8_lossy(&v.stdout));
    let out = sb.run(&["--json", "extract", "--model", "resnet18", "--weights", w1.to_str().unwrap(), "--data", "cifar10", "--data-dir",
        data.to_str().unwrap(), "--split", "test", "--limit", "20", "--precision", "fp32"]);
    assert!(stderr(&out).contains("failed verification"), "{}", stderr(&out));
    // Remade from the feature store, without the backbone.
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((again["splits"][0]["source"].as_str(), again["backbone_rows"].as_u64()), (Some("store"), Some(0)), "{again}");
    assert!(sb.run(&["cache", "verify"]).status.success());

    // cache rm --model deletes them all: three entries and their three stores.
    let rm = sb.run_json(&["--json", "cache", "rm", "--model", "resnet18"]);
    assert_eq!(rm["removed"].as_array().unwrap().len(), 6, "{rm}");
    assert!(!Path::new(&path).exists());
}

/// A server that promises `promised` bytes and sends `body` then hangs up.
fn short_server(body: Vec<u8>, promised: usize) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cifar-10-binary.tar.gz", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {promised}\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(&body);
    });
    (url, handle)
}

#[test]
fn broken_cifar_download_leaves_nothing_that_passes_and_the_next_run_starts_again() {
    let mut sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let (tarball, _, _) = cifar_tarball(20, 20);
    sb.set("LASTLAYER_CIFAR10_MD5", md5(&tarball));
    let args = ["extract", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--split", "test", "--limit", "4"];

    let (url, h) = short_server(tarball[..tarball.len() / 2].to_vec(), tarball.len());
    sb.set("LASTLAYER_CIFAR10_URL", url);
    assert_fails(&sb.run(&args), 4, &["download", "cifar-10-binary.tar.gz"]);
    h.join().unwrap();
    let data = sb.path().join("cache/data");
    assert!(!data.join("cifar-10-batches-bin").exists(), "a broken download was unpacked");

    // Bytes altered in transit: the md5 check catches them.
    let mut altered = tarball.clone();
    altered[100] ^= 1;
    let (url, h) = short_server(altered.clone(), altered.len());
    sb.set("LASTLAYER_CIFAR10_URL", url);
    assert_fails(&sb.run(&args), 5, &["md5"]);
    h.join().unwrap();
    assert!(!data.join("cifar-10-batches-bin").exists());

    let (url, h) = short_server(tarball.clone(), tarball.len());
    sb.set("LASTLAYER_CIFAR10_URL", url);
    let ok = sb.run(&args);
    assert!(ok.status.success(), "{}", stderr(&ok));
    h.join().unwrap();
    assert!(data.join("cifar-10-batches-bin/test_batch.bin").is_file());
}

#[test]
fn full_disk_while_writing_the_cache_fails_cleanly_and_keeps_what_was_cached() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_copy(&sb);
    let d = data.to_str().unwrap();
    // fp32 on every CPU: this test is about the store and the full disk. (With `--precision
    // auto` on a CPU with AMX, bf16 would be chosen, and in bf16 the engine is part of the
    // store's recipe: these 16 pictures (eager) and the 160 below (frozen) would then go to two
    // stores; tests/store.rs asserts that per-CPU outcome.)
    let ok = sb.run(&["extract", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", d, "--split", "test", "--limit", "16",
        "--precision", "fp32"]);
    assert!(ok.status.success(), "{}", stderr(&ok));

    // The same binary under a 64 KiB file-size limit: the store's segment takes three records
    // of 8 rows (16.7 KB each), then appending the fourth fails.
    let args = ["--json", "extract", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", d, "--split", "train", "--limit", "160",
        "--extract-batch-size", "8", "--precision", "fp32"];
    let out = under_file_size_limit(&sb, &args, 64 * 1024);
    assert_fails(&out, 1, &["File too large", "free space", "--cache-dir"]);
    // Nothing half-written passes as cached; what was cached before is intact, and the rows
    // appended before the disk filled are kept.
    let v = sb.run(&["--json", "cache", "verify"]);
    assert!(v.status.success(), "{}", stderr(&v));
    let report: Value = serde_json::from_slice(&v.stdout).unwrap();
    let kinds: Vec<&str> = report.as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["store", "entry"], "{report}");
    let ls = sb.run_json(&["--json", "cache", "ls"]);
    assert_eq!(ls[0]["rows"], 16 + 24, "{ls}");
    let done = sb.run_json(&args);
    assert_eq!(done["backbone_rows"], 160 - 24, "{done}");
}

/// Runs `lastlayer ARGS` in the sandbox with files limited to `bytes` (a full disk, as far as
/// a write can tell: it fails with EFBIG instead of the process being signalled).
fn under_file_size_limit(sb: &Sandbox, args: &[&str], bytes: u64) -> std::process::Output {
    let mut cmd = sb.command(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn full_disk_while_exporting_fails_cleanly_and_leaves_no_file() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_copy(&sb);
    let train = ["train", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(), "--limit", "20"];
    let ok = sb.run(&[&train[..], &["--input-size", "64", "--precision", "fp32", "--out", "run"]].concat());
    assert!(ok.status.success(), "{}", stderr(&ok));
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(sb.path().join("run")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    let before = listing();
    // A ResNet-18 classifier is about 45 MB in either format; files may hold 1 MiB. The
    // TorchScript export used to abort the process here (libtorch's file writer), leaving a
    // half-written temporary file.
    for format in ["torchscript", "onnx"] {
        let out = under_file_size_limit(&sb, &["export", "run", "--format", format], 1 << 20);
        assert_fails(&out, 1, &["File too large", "free space", "--out"]);
        assert_eq!(listing(), before, "{format}: the run folder changed");
    }
    // With room, both exports are written.
    for (format, file) in [("torchscript", "model.pt"), ("onnx", "model.onnx")] {
        let out = sb.run(&["export", "run", "--format", format]);
        assert!(out.status.success(), "{format}: {}", stderr(&out));
        assert!(std::fs::metadata(sb.path().join("run").join(file)).unwrap().len() > 40 << 20, "{format}");
    }
}

#[test]
fn weights_with_a_wrong_dtype_or_shape_are_named() {
    let sb = Sandbox::new();
    let data = cifar_copy(&sb);
    let (good, _) = random_weights("resnet18", sb.path());
    let tensors = tch::Tensor::read_safetensors(&good).unwrap();
    let edit = |name: &str, f: &dyn Fn(&str, tch::Tensor) -> tch::Tensor| {
        let p = sb.path().join(name);
        let v: Vec<(String, tch::Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), f(n, t.shallow_clone()))).collect();
        tch::Tensor::write_safetensors(&v, &p).unwrap();
        p.display().to_string()
    };
    let ints = edit("ints.safetensors", &|n, t| if n == "layer2.0.conv1.weight" { t.to_kind(tch::Kind::Int) } else { t });
    let shaped = edit("shaped.safetensors", &|n, t| if n == "fc.weight" || n == "bn1.weight" { tch::Tensor::ones([3], (tch::Kind::Float, tch::Device::Cpu)) } else { t });
    let run = |w: &str| sb.run(&["extract", "--model", "resnet18", "--weights", w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(), "--limit", "4"]);
    assert_fails(&run(&ints), 3, &["layer2.0.conv1.weight", "dtype"]);
    assert_fails(&run(&shaped), 3, &["bn1.weight", "shape"]);
}

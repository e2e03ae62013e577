//! Downloads against servers that answer like the real Hub and CIFAR-10 host (see
//! `tests/common/fake_hub.rs`): the 302 to a CDN with `x-linked-etag`, the relative 307 of small
//! files, a proxy that ignores `Range`, a CDN that stalls or drops the connection, an archive
//! labelled `Content-Encoding: gzip`, the token kept from the CDN, and a symlink-free HF cache.
//! The "weights" here are a few MiB of seeded bytes: `fetch` verifies, it does not load them.


use std::time::Instant;

use crate::common::*;
use serde_json::Value;

const REPO: &str = "timm/resnet18.tv_in1k";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const FILE_PATH: &str = "/timm/resnet18.tv_in1k/resolve/main/model.safetensors";
const SECRET: &str = "hf_fake_secret_b7c9d0";

/// `n` seeded pseudo-random bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// A sandbox whose HF_ENDPOINT is a fake Hub serving 3 MiB of "weights" as an LFS file.
fn hub_with_weights() -> (Sandbox, FakeServer, Vec<u8>) {
    let mut sb = Sandbox::new();
    let server = FakeServer::start();
    let weights = bytes(3 << 20, 7);
    server.serve_hub_file(REPO, "model.safetensors", weights.clone(), COMMIT);
    sb.set("HF_ENDPOINT", server.base.clone());
    (sb, server, weights)
}

fn repo_dir(sb: &Sandbox) -> std::path::PathBuf {
    sb.path().join("hf/hub/models--timm--resnet18.tv_in1k")
}

fn cdn_gets(server: &FakeServer) -> Vec<Logged> {
    server.body_gets().into_iter().filter(|l| l.host == "cdn").collect()
}

#[test]
fn weights_come_through_the_cdn_redirect_and_are_named_and_checked_by_x_linked_etag() {
    let (sb, server, weights) = hub_with_weights();
    let sha = sha256(&weights);
    let w = sb.run_json(&["--json", "fetch", "resnet18"]);
    assert_eq!((w["sha256"].as_str(), w["downloaded"].as_bool()), (Some(sha.as_str()), Some(true)));

    // HEAD and GET to the Hub (302 each), then the bytes from the CDN, all as identity.
    let log = server.log();
    let seen: Vec<(&str, &str, u16)> = log.iter().map(|l| (l.host, l.method.as_str(), l.status)).collect();
    assert_eq!(seen, [("hub", "HEAD", 302), ("hub", "GET", 302), ("cdn", "GET", 200)], "{log:?}");
    assert_eq!(log[2].body_sent, weights.len());
    assert!(log.iter().all(|l| l.header("accept-encoding") == Some("identity")), "{log:?}");
    // The plain etag was a 40-hex id; the blob is named by the sha256 from x-linked-etag.
    let repo = repo_dir(&sb);
    let snapshot = repo.join(format!("snapshots/{COMMIT}/model.safetensors"));
    assert_eq!(std::fs::read_link(&snapshot).unwrap(), std::path::Path::new(&format!("../../blobs/{sha}")));
    assert_eq!(std::fs::read(&snapshot).unwrap(), weights);
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), COMMIT);
    let pins: Value = serde_json::from_slice(&std::fs::read(sb.path().join("cache/pins.json")).unwrap()).unwrap();
    assert_eq!(pins[format!("{REPO}/model.safetensors")]["sha256"], sha);
    assert_eq!(pins[format!("{REPO}/model.safetensors")]["revision"], COMMIT);

    // Again: from the cache, no request.
    let again = sb.run_json(&["--json", "fetch", "resnet18"]);
    assert_eq!((again["downloaded"].as_bool(), server.log().len()), (Some(false), 3));
}

#[test]
fn a_wrong_x_linked_etag_is_caught_and_nothing_is_kept() {
    let mut sb = Sandbox::new();
    let server = FakeServer::start();
    let weights = bytes(1 << 20, 3);
    let claimed = sha256(b"something else");
    server.serve_hub_file_with_etag(REPO, "model.safetensors", weights.clone(), COMMIT, &claimed);
    sb.set("HF_ENDPOINT", server.base.clone());
    assert_fails(&sb.run(&["fetch", "resnet18"]), 5, &["sha256", &claimed, &sha256(&weights)]);
    // Only the (empty) lock file may remain: no blob, no `.part` to resume from.
    let left: Vec<_> = std::fs::read_dir(repo_dir(&sb).join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!sb.path().join("cache/pins.json").exists());
}

#[test]
fn small_files_follow_the_hubs_relative_307_and_are_pinned_with_a_warning() {
    let mut sb = Sandbox::new();
    let server = FakeServer::start();
    let small = bytes(700, 11);
    server.serve_hub_small_file(REPO, "model.safetensors", small.clone(), COMMIT);
    sb.set("HF_ENDPOINT", server.base.clone());
    let out = sb.run(&["--json", "fetch", "resnet18"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["sha256"], sha256(&small));
    assert!(stderr(&out).contains("gave no sha256"), "{}", stderr(&out));
    let cache_path = format!("/api/resolve-cache/models/{REPO}/{COMMIT}/model.safetensors");
    let log = server.log();
    let seen: Vec<(&str, &str, &str, u16)> = log.iter().map(|l| (l.host, l.method.as_str(), l.path.as_str(), l.status)).collect();
    assert_eq!(
        seen,
        [("hub", "HEAD", FILE_PATH, 307), ("hub", "HEAD", cache_path.as_str(), 200), ("hub", "GET", FILE_PATH, 307), ("hub", "GET", cache_path.as_str(), 200)]
    );
}

#[test]
fn a_proxy_that_ignores_range_costs_a_restart_not_a_failure() {
    let (sb, server, weights) = hub_with_weights();
    server.ignore_range(true);
    server.fault(Fault::CutAt(0.6), 1);
    let out = sb.run(&["--json", "fetch", "resnet18"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gets = cdn_gets(&server);
    assert_eq!(gets.len(), 2, "{gets:?}");
    let cut = (weights.len() as f64 * 0.6) as usize;
    assert_eq!((gets[0].header("range"), gets[0].body_sent), (None, cut));
    // The retry asked for the rest; the server sent everything; lastlayer started over.
    assert_eq!(gets[1].header("range"), Some(format!("bytes={cut}-").as_str()));
    assert_eq!((gets[1].status, gets[1].body_sent), (200, weights.len()));
    assert!(stderr(&out).contains("ignores Range"), "{}", stderr(&out));
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["sha256"], sha256(&weights));
}

#[test]
fn a_stalled_download_times_out_retries_and_resumes() {
    let (mut sb, server, weights) = hub_with_weights();
    sb.set("LASTLAYER_TIMEOUT", "1");
    server.fault(Fault::StallAt(0.5), 1);
    let start = Instant::now();
    let out = sb.run(&["--json", "fetch", "resnet18"]);
    let secs = start.elapsed().as_secs_f64();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no data for 1 s") && err.contains("retrying in 0.02 s (1 of 5)"), "{err}");
    let gets = cdn_gets(&server);
    let half = weights.len() / 2;
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].body_sent, half);
    assert_eq!(gets[1].header("range"), Some(format!("bytes={half}-").as_str()));
    assert_eq!((gets[1].status, gets[1].body_sent), (206, weights.len() - half));
    // One stall limit (1 s) plus start-up, not a hang.
    assert!(secs < 30.0, "took {secs:.1} s");
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["sha256"], sha256(&weights));
}

#[test]
fn a_connection_cut_at_60_percent_resumes_on_the_next_run_with_only_the_rest() {
    let (mut sb, server, weights) = hub_with_weights();
    let sha = sha256(&weights);
    sb.set("LASTLAYER_RETRIES", "0");
    server.fault(Fault::CutAt(0.6), 1);
    assert_fails(&sb.run(&["fetch", "resnet18"]), 4, &["download of resnet18", "after"]);
    let cut = (weights.len() as f64 * 0.6) as usize;
    let part = repo_dir(&sb).join(format!("blobs/{sha}.part"));
    assert_eq!(std::fs::metadata(&part).map(|m| m.len()).ok(), Some(cut as u64), "the received bytes were not kept");
    assert!(!sb.path().join("cache/pins.json").exists());

    let out = sb.run(&["--json", "fetch", "resnet18"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gets = cdn_gets(&server);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[1].header("range"), Some(format!("bytes={cut}-").as_str()));
    assert_eq!((gets[1].status, gets[1].body_sent), (206, weights.len() - cut), "the second request did not ask for the rest only");
    assert!(stderr(&out).contains(&format!("resuming from {cut} bytes")), "{}", stderr(&out));
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["sha256"], sha);
    assert!(!part.exists());
}

#[test]
fn stale_partial_bytes_that_fail_the_checksum_are_downloaded_afresh() {
    let (sb, server, weights) = hub_with_weights();
    let sha = sha256(&weights);
    let blobs = repo_dir(&sb).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{sha}.part")), bytes(1 << 20, 99)).unwrap();
    let out = sb.run(&["--json", "fetch", "resnet18"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("downloading it afresh"), "{}", stderr(&out));
    let gets = cdn_gets(&server);
    let ranges: Vec<Option<&str>> = gets.iter().map(|g| g.header("range")).collect();
    assert_eq!(ranges, [Some("bytes=1048576-"), None]);
    let w: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["sha256"], sha);
}

#[test]
fn two_processes_fetching_the_same_weights_download_them_once() {
    let (sb, server, weights) = hub_with_weights();
    server.slow(true);
    let (a, b) = (sb.command(&["--json", "fetch", "resnet18"]).spawn().unwrap(), sb.command(&["--json", "fetch", "resnet18"]).spawn().unwrap());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success(), "{}\n{}", stderr(&a), stderr(&b));
    for out in [&a, &b] {
        let w: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(w["sha256"], sha256(&weights));
    }
    assert_eq!(cdn_gets(&server).len(), 1, "both processes downloaded the file");
    assert!(format!("{}{}", stderr(&a), stderr(&b)).contains("another lastlayer process is downloading"));
}

#[test]
fn the_token_goes_to_the_hub_and_never_to_the_cdn_or_the_log() {
    let (mut sb, server, _) = hub_with_weights();
    sb.set("HF_TOKEN", SECRET);
    let out = sb.run(&["-vv", "--json", "fetch", "resnet18"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = server.log();
    let bearer = format!("Bearer {SECRET}");
    for l in &log {
        match l.host {
            "hub" => assert_eq!(l.header("authorization"), Some(bearer.as_str()), "{l:?}"),
            _ => assert_eq!(l.header("authorization"), None, "the token reached the CDN: {l:?}"),
        }
    }
    assert!(log.iter().any(|l| l.host == "cdn"));
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!printed.contains(SECRET), "the token was printed:\n{printed}");

    // Without HF_TOKEN, the token file that `huggingface-cli login` writes.
    let (mut sb, server, _) = hub_with_weights();
    std::fs::create_dir_all(sb.path().join("hf")).unwrap();
    std::fs::write(sb.path().join("hf/token"), format!("{SECRET}\n")).unwrap();
    sb.set("LASTLAYER_CACHE", sb.path().join("cache2").display().to_string());
    assert!(sb.run(&["fetch", "resnet18"]).status.success());
    let hub: Vec<Logged> = server.log().into_iter().filter(|l| l.host == "hub").collect();
    assert!(!hub.is_empty() && hub.iter().all(|l| l.header("authorization") == Some(bearer.as_str())), "{hub:?}");
}

#[test]
fn an_unreachable_hub_gives_up_after_the_retries_with_what_to_check() {
    let mut sb = Sandbox::new();
    sb.set("LASTLAYER_RETRIES", "2");
    let out = sb.run(&["fetch", "resnet18"]);
    assert_fails(&out, 4, &["resnet18", "gave up after 2 retries", "HF_ENDPOINT"]);
    let err = stderr(&out);
    assert!(err.contains("(1 of 2)") && err.contains("(2 of 2)"), "{err}");
    sb.set("LASTLAYER_TIMEOUT", "soon");
    assert_fails(&sb.run(&["fetch", "resnet18"]), 2, &["LASTLAYER_TIMEOUT", "soon"]);
}

#[test]
fn a_symlink_free_hf_cache_is_used_as_it_is() {
    let mut sb = Sandbox::new();
    let weights = bytes(1 << 20, 5);
    let repo = repo_dir(&sb);
    let snapshot = repo.join(format!("snapshots/{COMMIT}/model.safetensors"));
    std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    std::fs::write(&snapshot, &weights).unwrap();
    let w = sb.run_json(&["--offline", "--json", "fetch", "resnet18"]);
    assert_eq!(w["sha256"], sha256(&weights));
    assert_eq!(w["downloaded"], false);
    assert_eq!(w["path"].as_str().map(std::path::PathBuf::from), Some(snapshot.clone()));
    let pins: Value = serde_json::from_slice(&std::fs::read(sb.path().join("cache/pins.json")).unwrap()).unwrap();
    assert_eq!(pins[format!("{REPO}/model.safetensors")]["revision"], COMMIT);

    // Pinned now: a changed file is caught.
    let mut changed = weights.clone();
    changed[10] ^= 1;
    std::fs::write(&snapshot, &changed).unwrap();
    sb.set("HF_ENDPOINT", "http://127.0.0.1:9");
    assert_fails(&sb.run(&["--offline", "fetch", "resnet18"]), 5, &["sha256", &sha256(&weights)]);
}

#[test]
fn cifar10_redirected_across_hosts_labelled_gzip_and_cut_midway_resumes() {
    let mut sb = Sandbox::new();
    let server = FakeServer::start();
    let (tarball, _, test) = cifar_tarball(20, 20);
    server.serve_archive("/cifar-10-binary.tar.gz", tarball.clone(), true);
    server.fault(Fault::CutAt(0.6), 1);
    sb.set("LASTLAYER_CIFAR10_URL", format!("{}/cifar-10-binary.tar.gz", server.base));
    sb.set("LASTLAYER_CIFAR10_MD5", md5(&tarball));
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let out = sb.run(&["extract", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--split", "test", "--limit", "4"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("retrying in") && !err.contains("decompression"), "{err}");

    let log = server.log();
    let seen: Vec<(&str, u16)> = log.iter().map(|l| (l.host, l.status)).collect();
    assert_eq!(seen, [("hub", 302), ("cdn", 200), ("hub", 302), ("cdn", 206)], "{log:?}");
    let cut = (tarball.len() as f64 * 0.6) as usize;
    assert_eq!(log[1].body_sent, cut);
    assert_eq!(log[3].header("range"), Some(format!("bytes={cut}-").as_str()));
    assert_eq!(log[3].body_sent, tarball.len() - cut, "the retry did not ask for the remaining bytes only");
    assert!(log.iter().all(|l| l.header("accept-encoding") == Some("identity")), "{log:?}");
    let data = sb.path().join("cache/data");
    assert_eq!(std::fs::read(data.join("cifar-10-batches-bin/test_batch.bin")).unwrap(), test);
    assert!(!data.join("cifar-10-binary.tar.gz.part").exists());

    // A complete archive left as the .part file (a run stopped before its md5 check, or one
    // copied there by hand) is checked and unpacked: the host answers 416, no byte is resent.
    std::fs::remove_dir_all(data.join("cifar-10-batches-bin")).unwrap();
    std::fs::write(data.join("cifar-10-binary.tar.gz.part"), &tarball).unwrap();
    let out = sb.run(&["extract", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--split", "test", "--limit", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let more: Vec<(&str, u16, usize)> = server.log()[4..].iter().map(|l| (l.host, l.status, l.body_sent)).collect();
    assert_eq!(more, [("hub", 302, 0), ("cdn", 416, 0)]);
    assert_eq!(std::fs::read(data.join("cifar-10-batches-bin/test_batch.bin")).unwrap(), test);
}

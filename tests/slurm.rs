//! A real Slurm run: a one-node cluster on 127.0.0.1 (scripts/slurm-cluster.sh), a 4-task
//! array of `lastlayer extract --shard auto` workers over WebDataset shards, then `train` on the
//! merged features gives the head of an unsharded run, byte for byte; also when one worker is
//! SIGKILLed mid-way and Slurm requeues it. Needs root and Debian's slurmctld, slurmd,
//! slurm-client and munge (scripts/test.sh installs them).


use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use serde_json::Value;

const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm-cluster.sh");

/// A running cluster, stopped on drop (also when the test fails).
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let out = Command::new(HARNESS).args(["start", dir.to_str().unwrap()]).output().unwrap();
        let cluster = Cluster { dir: dir.to_path_buf() };
        assert!(out.status.success(), "the Slurm cluster did not start:\n{}", String::from_utf8_lossy(&out.stderr));
        cluster
    }

    /// `program args` with this cluster's SLURM_CONF.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.dir.join("slurm.conf"));
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(HARNESS).args(["stop", self.dir.to_str().unwrap()]).output();
    }
}

/// The batch script of one worker. Task `kill_task`, on its first run only, SIGKILLs its
/// `lastlayer` once a record of its shard is in the feature store (its segment holds more
/// than the header) and exits 137, which Slurm requeues (RequeueExit=137).
fn job_script(dir: &Path, name: &str, extract: &[String], cache: &Path, kill_task: Option<usize>) -> PathBuf {
    let cmd = extract.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ");
    let kill = match kill_task {
        None => String::new(),
        Some(k) => format!(
            r#"if [ "$SLURM_ARRAY_TASK_ID" = {k} ] && [ -z "${{SLURM_RESTART_COUNT:-}}" ]; then
  {cmd} & pid=$!
  until [ -n "$(find {cache}/store -name "seg-*-$pid-*.rows" -size +1k 2>/dev/null)" ]; do
    kill -0 $pid 2>/dev/null || {{ echo "worker finished before it could be killed"; exit 3; }}
    sleep 0.01
  done
  kill -9 $pid; wait $pid; echo "killed worker $pid mid-way"; exit 137
fi
"#,
            cache = cache.display()
        ),
    };
    let script = format!(
        "#!/bin/bash\nset -u\necho \"slurm task $SLURM_ARRAY_TASK_ID of array $SLURM_ARRAY_JOB_ID (count $SLURM_ARRAY_TASK_COUNT) restart ${{SLURM_RESTART_COUNT:-0}}\"\n{kill}exec {cmd}\n"
    );
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    path
}

/// Runs a 4-task array of `script` with `sbatch --wait`; returns the array job id.
fn run_array(cluster: &Cluster, sb: &Sandbox, script: &Path, out_dir: &Path) -> String {
    let mut c = cluster.command("sbatch");
    c.args(["--array=0-3", "--wait", "--parsable", "--open-mode=append", "--cpus-per-task=1"])
        .arg(format!("--output={}/out-%A_%a.txt", out_dir.display()))
        .arg(script);
    for (k, v) in &sb.env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or("").to_string();
    let logs: String = (0..4).map(|i| std::fs::read_to_string(out_dir.join(format!("out-{id}_{i}.txt"))).unwrap_or_default()).collect();
    assert!(out.status.success(), "sbatch --wait failed ({}): {}\n{logs}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(id.parse::<u64>().is_ok(), "sbatch printed no job id: {:?}", String::from_utf8_lossy(&out.stdout));
    id
}

/// Asserts that Slurm ran task `i` of array `id`: its output file, its job's environment, and
/// the worker's JSON naming shard `i` of 4. Returns the output.
fn assert_ran(out_dir: &Path, cluster: &Cluster, id: &str, i: usize) -> String {
    let text = std::fs::read_to_string(out_dir.join(format!("out-{id}_{i}.txt")))
        .unwrap_or_else(|e| panic!("task {i} of array {id} wrote no output file: {e}"));
    assert!(text.contains(&format!("slurm task {i} of array {id} (count 4)")), "{text}");
    assert!(text.contains(&format!(".shard-{i}-of-4/features.safetensors")), "task {i} did not extract shard {i}/4:\n{text}");
    let comp = std::fs::read_to_string(cluster.dir.join("log/jobcomp.txt")).unwrap_or_default();
    assert!(
        comp.lines().any(|l| l.contains("JobState=COMPLETED") && l.contains(&format!("ArrayJobId={id} ")) && l.contains(&format!("ArrayTaskId={i} "))),
        "slurmctld recorded no completed task {i} of array {id}:\n{comp}"
    );
    text
}

#[test]
fn a_slurm_array_of_shard_workers_gives_the_unsharded_head_even_with_a_worker_killed_and_requeued() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let wds = make_webdataset(sb.path(), 3, (4, 4), (2, 4));
    let data: Vec<String> = [
        "--model", "resnet18", "--weights", &w, "--data", &format!("{}/train-{{000..003}}.tar", wds.display()),
        "--test-data", &format!("{}/test-{{000..003}}.tar", wds.display()), "--precision", "fp32", "--input-size", "64",
        "--extract-batch-size", "2", "--chunk-rows", "2",
    ]
    .map(String::from)
    .to_vec();
    let bin = env!("CARGO_BIN_EXE_lastlayer").to_string();
    let train = |cache: &Path, out: &str| {
        let args: Vec<String> =
            ["--cache-dir", cache.to_str().unwrap(), "--json", "train"].iter().map(|s| s.to_string()).chain(data.clone()).chain(["--epochs", "3", "--out", out].map(String::from)).collect();
        let o = sb.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "train failed: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        (v, std::fs::read(sb.path().join(out).join("head.safetensors")).unwrap())
    };
    let (reference, ref_head) = train(&sb.path().join("cache-ref"), "ref");

    // A short folder: the cluster's munge socket path must fit a Unix socket.
    let cluster_dir = tempfile::Builder::new().prefix("ll-slurm").tempdir_in("/tmp").unwrap();
    let cluster = Cluster::start(cluster_dir.path());

    for (round, kill) in [("plain", None), ("requeued", Some(1))] {
        let cache = sb.path().join(format!("cache-{round}"));
        let out_dir = sb.path().join(format!("slurm-{round}"));
        std::fs::create_dir_all(&out_dir).unwrap();
        let extract: Vec<String> = [bin.as_str(), "--cache-dir", cache.to_str().unwrap(), "--no-progress", "--json", "extract"]
            .iter()
            .map(|s| s.to_string())
            .chain(data.clone())
            .chain(["--shard".to_string(), "auto".to_string()])
            .collect();
        let script = job_script(sb.path(), &format!("{round}.sh"), &extract, &cache, kill);
        let id = run_array(&cluster, &sb, &script, &out_dir);
        for i in 0..4 {
            let text = assert_ran(&out_dir, &cluster, &id, i);
            if kill == Some(i) {
                assert!(text.contains("killed worker") && text.contains("restart 1"), "task {i} was not killed and rerun:\n{text}");
                assert!(text.contains("resuming"), "the requeued worker did not resume from the rows it saved:\n{text}");
            }
        }
        let (merged, head) = train(&cache, &format!("run-{round}"));
        for s in 0..2 {
            let f = |v: &Value| blake3::hash(&std::fs::read(v["features"]["splits"][s]["features"].as_str().unwrap()).unwrap()).to_hex().to_string();
            assert_eq!(f(&merged), f(&reference), "{round}: split {s}'s merged features differ from unsharded ones");
        }
        assert_eq!(head, ref_head, "{round}: the head differs from the unsharded run's");
    }
}

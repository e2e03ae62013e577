//! Test helpers: a fake Hugging Face Hub and CIFAR-10 host on 127.0.0.1 that answer like the
//! real ones (`fake_hub`), random backbone weights with the registry's key names, and runners
//! for the `lastlayer` binary.
#![allow(dead_code)]

mod browser;
mod fake_hub;
mod wds;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[allow(unused_imports)]
pub use browser::{headless_chromium, which, Browser};
#[allow(unused_imports)]
pub use fake_hub::{FakeServer, Fault, Logged, Served};
#[allow(unused_imports)]
pub use wds::{make_webdataset, webp, write_tar};

use lastlayer::backbone::Backbone;
use lastlayer::hub::Registry;
use sha2::Digest;

/// `../shared/data` from the project root.
pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

/// The shared CIFAR-10 sample folder.
pub fn cifar_sample_dir() -> PathBuf {
    shared_data().join("cifar10-sample/cifar-10-batches-bin")
}

pub fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn md5(bytes: &[u8]) -> String {
    md5::Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Random weights of registry model `model`, as safetensors bytes.
pub fn random_weights(model: &str, dir: &Path) -> (PathBuf, Vec<u8>) {
    let entry = Registry::builtin().get(model).unwrap().clone();
    let path = dir.join(format!("{model}-random.safetensors"));
    Backbone::random(entry.architecture, tch::Device::Cpu).save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// A small `cifar-10-binary.tar.gz` made from the shared sample: the first `train` records of
/// `data_batch_1.bin` and `test` of `test_batch.bin`. Returns (tarball, train bytes, test bytes).
pub fn cifar_tarball(train: usize, test: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let dir = cifar_sample_dir();
    let tr = std::fs::read(dir.join("data_batch_1.bin")).unwrap()[..train * 3073].to_vec();
    let te = std::fs::read(dir.join("test_batch.bin")).unwrap()[..test * 3073].to_vec();
    let meta = std::fs::read(dir.join("batches.meta.txt")).unwrap();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, bytes) in [("data_batch_1.bin", &tr), ("test_batch.bin", &te), ("batches.meta.txt", &meta)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, format!("cifar-10-batches-bin/{name}"), bytes.as_slice()).unwrap();
    }
    let mut gz = builder.into_inner().unwrap();
    gz.flush().unwrap();
    (gz.finish().unwrap(), tr, te)
}

/// The project's virtualenv Python (scripts/test.sh installs the test requirements into it).
pub fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.is_file(), "{} is missing: run scripts/test.sh, which installs it", p.display());
    p
}

/// What a script of `tests/python` printed, and whether it ended well.
pub struct ScriptOutput {
    pub ok: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// The long-lived interpreter of `tests/python/worker.py`, shared by every test of a binary.
struct PythonWorker {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    answers: std::io::BufReader<std::process::ChildStdout>,
}

static PYTHON_WORKER: std::sync::Mutex<Option<PythonWorker>> = std::sync::Mutex::new(None);

/// Runs `tests/python/SCRIPT ARGS...` as `python SCRIPT ARGS...` would, in one interpreter kept
/// for the whole test binary (torch, timm and onnxruntime are then imported once, not once per
/// call: `import timm` alone is 9 s of CPU on a 2-core EPYC). Calls from tests running at once
/// take turns. A worker that died is started again.
pub fn python_script(script: &str, args: &[&str]) -> ScriptOutput {
    use std::io::BufRead;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let request = serde_json::json!({ "script": script, "args": args }).to_string() + "\n";
    let mut slot = PYTHON_WORKER.lock().unwrap_or_else(|e| e.into_inner());
    for attempt in 0..2 {
        if slot.is_none() {
            let mut child = Command::new(python())
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/worker.py"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("starting tests/python/worker.py");
            let stdin = child.stdin.take().unwrap();
            let answers = std::io::BufReader::new(child.stdout.take().unwrap());
            *slot = Some(PythonWorker { child, stdin, answers });
        }
        let worker = slot.as_mut().unwrap();
        let mut line = String::new();
        let answered = worker.stdin.write_all(request.as_bytes()).and_then(|_| worker.stdin.flush()).and_then(|_| worker.answers.read_line(&mut line));
        match answered {
            Ok(n) if n > 0 => {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("worker.py answered {line:?}: {e}"));
                return ScriptOutput {
                    ok: v["ok"].as_bool().unwrap(),
                    stdout: v["stdout"].as_str().unwrap().as_bytes().to_vec(),
                    stderr: v["stderr"].as_str().unwrap().to_string(),
                };
            }
            _ => {
                // The interpreter died (a crash in native code, say): start a fresh one once.
                let mut dead = slot.take().unwrap();
                let status = dead.child.wait();
                assert!(attempt == 0, "tests/python/worker.py died twice running {}: {status:?}", script.display());
            }
        }
    }
    unreachable!()
}

/// A copy of the shared CIFAR-10 sample folder inside the sandbox, safe to damage.
pub fn cifar_copy(sb: &Sandbox) -> PathBuf {
    let dir = sb.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["data_batch_1.bin", "test_batch.bin", "batches.meta.txt"] {
        std::fs::copy(cifar_sample_dir().join(f), dir.join(f)).unwrap();
    }
    dir
}

/// A sandbox: its own cache, HF_HOME and environment for the binary.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let env = vec![
            ("HF_HOME".to_string(), dir.path().join("hf").display().to_string()),
            ("LASTLAYER_CACHE".to_string(), dir.path().join("cache").display().to_string()),
            // No endpoint by default: nothing may reach the real Hub.
            ("HF_ENDPOINT".to_string(), "http://127.0.0.1:9".to_string()),
            ("LASTLAYER_CIFAR10_URL".to_string(), "http://127.0.0.1:9/none".to_string()),
            ("LASTLAYER_LOG_INTERVAL".to_string(), "0".to_string()),
            // Retries wait 20, 40, 80 ms... instead of 1, 2, 4 s.
            ("LASTLAYER_RETRY_BASE_MS".to_string(), "20".to_string()),
        ];
        Sandbox { dir, env }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.into()));
    }

    /// Runs `lastlayer ARGS` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `lastlayer ARGS` in the sandbox, not started (stdout and stderr piped).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lastlayer"));
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        cmd.args(args).current_dir(self.path()).env_remove("RUST_BACKTRACE");
        // Nothing from the caller's environment may reach the fake servers or the real Hub.
        for k in ["HF_TOKEN", "HF_HUB_CACHE", "LASTLAYER_TIMEOUT", "LASTLAYER_RETRIES", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs and expects success; returns stdout parsed as JSON.
    pub fn run_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        assert!(out.status.success(), "lastlayer {args:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("stdout of {args:?} is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failure with `code`, one `error:` line mentioning each of `needles`, and no panic.
pub fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "expected exit {code}, got {:?}; stderr:\n{err}", out.status);
    assert!(!err.contains("panicked") && !err.contains("internal error") && !err.contains("stack backtrace"), "{err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error: line in\n{err}"));
    for n in needles {
        assert!(line.contains(n), "error line lacks '{n}': {line}");
    }
}

/// Records (saved batches) in `model`'s feature stores under `cache`: what a killed
/// extraction keeps.
pub fn find_model_chunks(cache: &Path, model: &str) -> usize {
    let Ok(recipes) = std::fs::read_dir(cache.join("store").join(model)) else { return 0 };
    let mut n = 0;
    for r in recipes.flatten() {
        let Ok(files) = std::fs::read_dir(r.path()) else { continue };
        for f in files.flatten() {
            if f.file_name().to_string_lossy().ends_with(".rows") {
                n += lastlayer::cache::store::segment::SegmentReader::open(&f.path()).map(|s| s.records.len()).unwrap_or(0);
            }
        }
    }
    n
}

/// Starts `lastlayer ARGS` in `sb`, and kills it (SIGKILL) once `model`'s feature store under
/// `cache` holds `chunks` records; fails if the run ends first or no such records appear in
/// 300 s.
pub fn kill_after_chunks(sb: &Sandbox, args: &[&str], cache: &Path, model: &str, chunks: usize) {
    let mut child = sb.command(args).spawn().unwrap();
    let start = std::time::Instant::now();
    while find_model_chunks(cache, model) < chunks {
        assert!(start.elapsed() < std::time::Duration::from_secs(300), "{model}: no {chunks} records appeared");
        assert!(child.try_wait().unwrap().is_none(), "{model}: the run ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// True when this CPU computes bf16 natively (AVX512-BF16 or AMX), detected as `--precision
/// auto` does. Elsewhere (AVX2 only) libtorch emulates bf16, many times slower than fp32, so the
/// tests that force bf16 run on fewer pictures there and say so with [`bf16_shortened`].
pub fn native_bf16() -> bool {
    lastlayer::backbone::cpu_bf16() != lastlayer::backbone::CpuBf16::None
}

/// Says (on the test's output, and on stderr for the log of a whole run) what a bf16 test
/// shortened on a CPU without native bf16, and why.
pub fn bf16_shortened(test: &str, what: &str) {
    let why = lastlayer::backbone::auto_precision(tch::Device::Cpu, lastlayer::backbone::Architecture::Resnet50, lastlayer::backbone::cpu_bf16()).1;
    let line = format!("{test}: bf16 shortened to {what}, because {why}");
    println!("{line}");
    eprintln!("{line}");
}

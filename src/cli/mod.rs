//! The `lastlayer` command: parses flags, sets up logging, calls the library, prints results.

pub mod args;
mod output;

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use args::{Cli, Command, DataArgs, DeviceArg, HeadArgs, OptimizerArg, PrecisionArg, ScheduleArg};
use lastlayer::backbone::{DeviceChoice, Precision, PrecisionChoice};
use lastlayer::data::sample::Subset;
use lastlayer::data::views::{Augment, Tta};
use lastlayer::data::DataSpec;
use lastlayer::head::{OptimizerKind, Schedule, TrainConfig};
use lastlayer::hub::{Pins, Registry};
use lastlayer::pipeline::{self, FeatureRequest, Session};
use lastlayer::progress::Progress;

/// Sets up logging: stderr (no colours unless it is a terminal) and `--log-file`.
pub fn init_logging(cli: &Cli) -> Result<()> {
    use tracing_subscriber::prelude::*;
    let level = match (cli.global.quiet, cli.global.verbose) {
        (q, _) if q >= 2 => "error",
        (1, _) => "warn",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = || tracing_subscriber::EnvFilter::new(format!("lastlayer={level},warn"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter());
    let file = match &cli.global.log_file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--log-file: cannot open {} for appending", path.display()))?;
            Some(tracing_subscriber::fmt::layer().with_writer(std::sync::Mutex::new(f)).with_ansi(false).with_target(false).with_filter(filter()))
        }
        None => None,
    };
    tracing_subscriber::registry().with(stderr).with(file).init();
    Ok(())
}

fn session(cli: &Cli) -> Result<Session> {
    let g = &cli.global;
    let registry = match &g.registry {
        Some(path) => Registry::from_file(path)?,
        None => Registry::builtin(),
    };
    Ok(Session {
        cache_dir: g.cache_dir.clone().unwrap_or_else(lastlayer::fsutil::default_cache_dir),
        offline: g.offline,
        device: match g.device {
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
            DeviceArg::Auto => DeviceChoice::Auto,
        },
        progress: Progress::for_stderr(g.quiet > 0, g.no_progress || g.log_file.is_some()),
        registry,
    })
}

fn feature_request(d: &DataArgs, splits: Vec<String>) -> Result<FeatureRequest> {
    let subset = match (d.sample, d.limit) {
        (Some(f), _) => Subset::Fraction(f),
        (None, Some(n)) => Subset::Limit(n),
        (None, None) => Subset::All,
    };
    let data = DataSpec::parse_with_test(&d.data, d.test_data.as_deref(), d.data_dir.as_deref(), d.test_fraction, d.strict)?
        .with_labels(d.labels.as_deref(), d.label_column.as_deref())?
        .with_image_column(d.image_column.as_deref())?;
    // Bad labels stop the command before it writes a run folder or a cache entry.
    data.check_labels()?;
    Ok(FeatureRequest {
        model: d.model.clone(),
        data,
        splits,
        subset,
        sample_seed: d.sample_seed,
        precision: match d.precision {
            PrecisionArg::Fp32 => PrecisionChoice::Fixed(Precision::Fp32),
            PrecisionArg::Bf16 => PrecisionChoice::Fixed(Precision::Bf16),
            PrecisionArg::Auto => PrecisionChoice::Auto,
        },
        weights: d.weights.clone(),
        input_size: d.input_size,
        batch_size: d.extract_batch_size,
        chunk_rows: d.chunk_rows.unwrap_or(lastlayer::pipeline::DEFAULT_CHUNK_ROWS),
        augment: d.augment.as_deref().map(Augment::parse).transpose()?.flatten(),
        tta: match d.tta {
            args::TtaArg::None => Tta::None,
            args::TtaArg::Flip => Tta::Flip,
        },
        shard: None,
    })
}

fn train_config(h: &HeadArgs, lr: f64, weight_decay: args::WeightDecayArg) -> TrainConfig {
    let (weight_decay, weight_decay_auto) = match weight_decay {
        args::WeightDecayArg::Auto => (0.0, true),
        args::WeightDecayArg::Value(v) => (v, false),
    };
    TrainConfig {
        epochs: h.epochs,
        lr,
        weight_decay,
        weight_decay_auto,
        batch_size: h.batch_size,
        optimizer: match h.optimizer {
            OptimizerArg::Adamw => OptimizerKind::Adamw,
            OptimizerArg::Adam => OptimizerKind::Adam,
            OptimizerArg::Sgd => OptimizerKind::Sgd,
        },
        val_fraction: h.val_fraction,
        seed: h.seed,
        patience: h.patience,
        schedule: match h.schedule {
            ScheduleArg::Cosine => Schedule::Cosine,
            ScheduleArg::Constant => Schedule::Constant,
        },
        refit: !h.no_refit,
        class_weight: match h.class_weight {
            args::ClassWeightArg::None => lastlayer::head::ClassWeight::None,
            args::ClassWeightArg::Balanced => lastlayer::head::ClassWeight::Balanced,
        },
        keep: h.keep,
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    let s = session(&cli)?;
    let json = cli.global.json;
    match &cli.command {
        Command::Models => {
            let architectures: Vec<_> = s.registry.models().iter().map(|m| m.architecture).collect();
            tracing::info!("{}", lastlayer::backbone::auto_precision_summary(&architectures));
            let pins = Pins::load(&s.cache_dir)?;
            let rows: Vec<_> = s
                .registry
                .models()
                .iter()
                .map(|m| {
                    let pin = pins.get(&m.hub_repo, &m.file);
                    json!({
                        "entry": m,
                        "revision": m.revision.clone().or_else(|| pin.map(|p| p.revision.clone())),
                        "sha256": m.sha256.clone().or_else(|| pin.map(|p| p.sha256.clone())),
                        "pinned": if m.sha256.is_some() { "registry" } else if pin.is_some() { "first use" } else { "not yet" },
                        "auto_precision": lastlayer::backbone::auto_precision(tch::Device::Cpu, m.architecture, lastlayer::backbone::cpu_bf16()).0,
                    })
                })
                .collect();
            if json {
                return print_json(&rows);
            }
            print!("{}", output::models_table(s.registry.models(), &rows));
        }
        Command::Fetch { model } => {
            let w = pipeline::fetch(&s, model)?;
            if json {
                return print_json(&w);
            }
            println!("{}\n  sha256 {} ({})", w.path.display(), w.sha256, if w.downloaded { "downloaded, verified" } else { "cached, verified" });
        }
        Command::Import { file, model, out } => {
            let entry = s.registry.get(model)?;
            let r = lastlayer::hub::import_weights(file, entry.architecture, out)?;
            if json {
                return print_json(&r);
            }
            println!(
                "wrote {} ({} tensors, {} layout, sha256 {}); use it with --model {model} --weights {}",
                r.out.display(),
                r.tensors,
                r.layout,
                r.sha256,
                r.out.display()
            );
        }
        Command::Extract(a) => {
            let mut req = feature_request(&a.data, a.split.clone())?;
            req.shard = a.shard.as_deref().map(|v| pipeline::ShardSpec::parse(v, |k| std::env::var(k).ok())).transpose()?;
            let fs = pipeline::features(&s, &req)?;
            if json {
                return print_json(&fs);
            }
            print!("{}", output::features(&fs));
        }
        Command::Train(a) => {
            let req = feature_request(&a.data, vec!["train".into(), "test".into()])?;
            let cfg = train_config(&a.head, a.rates.lr, a.rates.weight_decay);
            validate(&s, &req, &cfg)?;
            let out = with_status(&s, &a.out, |s| pipeline::train(s, &req, &cfg, &a.out))?;
            report_training(&out, json)?;
        }
        Command::Sweep(a) => {
            let req = feature_request(&a.data, vec!["train".into(), "test".into()])?;
            let base = train_config(
                &a.head,
                a.lr.first().copied().unwrap_or(1e-3),
                args::WeightDecayArg::Value(a.weight_decay.first().copied().unwrap_or(0.0)),
            );
            validate(&s, &req, &base)?;
            let mut grid = Vec::new();
            for &lr in &a.lr {
                for &wd in &a.weight_decay {
                    let cfg = TrainConfig { lr, weight_decay: wd, ..base.clone() };
                    cfg.validate()?;
                    grid.push(cfg);
                }
            }
            let out = with_status(&s, &a.out, |s| pipeline::sweep(s, &req, &grid, &a.out))?;
            if json {
                return print_json(&out);
            }
            print!("{}", output::sweep(&out.trials));
            report_training(&out.best, false)?;
        }
        Command::Run(a) => {
            let req = feature_request(&a.data, vec!["train".into(), "test".into()])?;
            let cfg = train_config(&a.head, a.rates.lr, a.rates.weight_decay);
            validate(&s, &req, &cfg)?;
            let run_dir = a.out.clone().unwrap_or_else(|| default_run_dir(&a.data));
            let out = with_status(&s, &run_dir, |s| {
                if a.data.weights.is_none() {
                    pipeline::fetch(s, &a.data.model)?;
                }
                pipeline::train(s, &req, &cfg, &run_dir)
            })?;
            // Evaluate what was exported, read back from disk, as a user of the run would.
            let check = pipeline::evaluate_run(&s, &out.run_dir, a.data.extract_batch_size, None)?;
            anyhow::ensure!(
                (check.test_accuracy - out.test_accuracy).abs() < 1e-9,
                "the exported head scores {} on test, the trained one {}",
                check.test_accuracy,
                out.test_accuracy
            );
            report_training(&out, json)?;
        }
        Command::Status { run_dir } => {
            let st = lastlayer::status::read_status(run_dir)?;
            if json {
                return print_json(&st);
            }
            print!("{}", output::status(run_dir, &st));
            if st.state == lastlayer::status::State::Finished {
                if let Ok((card, _)) = lastlayer::export::read_run(run_dir) {
                    print!("\n{}", output::evaluation("test", &card.metrics.test));
                }
            }
        }
        Command::Cache(c) => return cache_command(&s, c, json),
        Command::Export { run_dir, format, out } => {
            let format = match format {
                args::FormatArg::Torchscript => lastlayer::export::ExportFormat::Torchscript,
                args::FormatArg::Onnx => lastlayer::export::ExportFormat::Onnx,
            };
            let out = out.clone().unwrap_or_else(|| run_dir.join(format.default_file_name()));
            let path = pipeline::export(&s, run_dir, format, &out)?;
            if json {
                return print_json(&json!({ "format": format, "path": path }));
            }
            println!(
                "wrote {} (input: float32 [N, 3, S, S] RGB 0-255 resized as head.json's preprocessing says; output: [N, classes] probabilities)",
                path.display()
            );
        }
        Command::Eval { run_dir, extract_batch_size, unknown_dir } => {
            let out = pipeline::evaluate_run(&s, run_dir, *extract_batch_size, unknown_dir.as_deref())?;
            if json {
                return print_json(&out);
            }
            print!("{}", output::evaluation("test", &out.test));
            if let Some(u) = &out.unknown {
                print!("{}", output::unknown_eval(u));
            }
        }
        Command::Review { run_dir, folds, rank_by, min_similarity, no_page, show, extract_batch_size } => {
            let opts = pipeline::ReviewOptions {
                folds: *folds,
                rank_by: match rank_by {
                    args::RankByArg::SelfConfidence => lastlayer::review::RankBy::SelfConfidence,
                    args::RankByArg::NormalizedMargin => lastlayer::review::RankBy::NormalizedMargin,
                },
                min_similarity: *min_similarity,
                page: !no_page,
                batch_size: *extract_batch_size,
            };
            let review = pipeline::review_run(&s, run_dir, &opts)?;
            if json {
                return print_json(&review);
            }
            print!("{}", output::review(&review, *show));
        }
        Command::Predict { run_dir, images, top_k, batch_size, reject } => {
            let preds = pipeline::predict(&s, run_dir, images, *top_k, *batch_size, (*reject).into())?;
            if json {
                return print_json(&preds);
            }
            print!("{}", output::predictions(&preds));
        }
        Command::Serve { run_dir, host, port, max_body_mb, queue, max_batch, max_wait_ms, timeout, reject } => {
            let timeout = std::time::Duration::try_from_secs_f64(*timeout)
                .ok()
                .filter(|t| !t.is_zero())
                .ok_or_else(|| lastlayer::Error::usage("--timeout", format!("{timeout} is not a number of seconds above 0 (say 30, or 0.5)")))?;
            let opts = lastlayer::serve::ServeOptions {
                max_body_bytes: max_body_mb.saturating_mul(1 << 20),
                queue: *queue,
                max_batch: *max_batch,
                max_wait: std::time::Duration::from_millis(*max_wait_ms),
                timeout,
                reject: (*reject).into(),
                ..lastlayer::serve::ServeOptions::new(host.clone(), *port)
            };
            let server = lastlayer::serve::Server::bind(&s, run_dir, &opts)?;
            let url = format!("http://{}", server.local_addr());
            if json {
                println!("{}", json!({ "url": url, "run_dir": run_dir, "model": server.model(), "max_batch": server.max_batch() }));
            } else {
                println!("serving {} on {url}", run_dir.display());
            }
            std::io::Write::flush(&mut std::io::stdout())?;
            server.run()?;
        }
    }
    Ok(())
}

/// Checks flags before anything is written.
fn validate(s: &Session, req: &FeatureRequest, cfg: &TrainConfig) -> lastlayer::Result<()> {
    s.registry.get(&req.model)?;
    req.validate()?;
    cfg.validate()
}

/// Runs `work` with progress recorded in `RUN_DIR/status.json`, marking the run finished or
/// failed at the end.
fn with_status<T: pipeline::Finished>(
    s: &Session,
    run_dir: &std::path::Path,
    work: impl FnOnce(&Session) -> lastlayer::Result<T>,
) -> Result<T> {
    if run_dir.is_file() {
        return Err(lastlayer::Error::usage("--out", format!("{} is a file; give a folder for the run", run_dir.display())).into());
    }
    let status = std::sync::Arc::new(lastlayer::status::StatusFile::start(run_dir)?);
    let session = Session { progress: s.progress.with_status(status.clone()), ..s.clone() };
    match work(&session) {
        Ok(out) => {
            status.finish(out.test_accuracy())?;
            Ok(out)
        }
        Err(e) => {
            let _ = status.fail(&e.to_string());
            Err(e.into())
        }
    }
}

fn cache_command(s: &Session, c: &args::CacheCommand, json: bool) -> Result<()> {
    use lastlayer::cache::{FeatureCache, Listed};
    let cache = FeatureCache::new(&s.cache_dir);
    let listed = cache.list()?;
    match c {
        args::CacheCommand::Ls => {
            if json {
                return print_json(&listed);
            }
            print!("{}", output::cache_listing(&listed));
        }
        args::CacheCommand::Verify => {
            let report = lastlayer::cache::maintain::verify_all(&cache)?;
            let bad = report.iter().filter(|r| !r.ok).count();
            if json {
                print_json(&report)?;
            } else {
                for r in &report {
                    let verdict = match &r.error {
                        None => match r.records {
                            Some(n) => format!("ok ({n} records)"),
                            None => "ok".to_string(),
                        },
                        Some(e) => format!("DAMAGED: {e}"),
                    };
                    println!("{} {}  {verdict}", r.kind, r.dir.display());
                }
                println!("{} stores and entries checked, {bad} damaged", report.len());
            }
            if bad > 0 {
                return Err(lastlayer::Error::Checksum {
                    path: s.cache_dir.clone(),
                    algorithm: "blake3",
                    expected: "the recorded checksums".into(),
                    actual: format!("{bad} damaged stores or entries"),
                    action: "damaged rows and entries are recomputed when next needed (nothing else is); `lastlayer cache rm` deletes them now".into(),
                }
                .into());
            }
        }
        args::CacheCommand::Prune { older_than } => {
            let age = lastlayer::cache::maintain::parse_age(older_than)
                .ok_or_else(|| lastlayer::Error::usage("--older-than", format!("'{older_than}' is not a duration; write e.g. 30d, 12h, 90m or 0s")))?;
            let since = std::time::SystemTime::now().checked_sub(age).unwrap_or(std::time::UNIX_EPOCH);
            let report = lastlayer::cache::maintain::prune_all(&cache, since)?;
            if json {
                return print_json(&report);
            }
            for st in &report.stores {
                println!(
                    "store {}: {} -> {} rows, {} -> {}{}",
                    st.dir.display(),
                    st.rows_before,
                    st.rows_after,
                    output::mib(st.bytes_before),
                    output::mib(st.bytes_after),
                    if st.segments_skipped > 0 { format!(" ({} segment(s) being written, left alone)", st.segments_skipped) } else { String::new() }
                );
            }
            for d in &report.entries_removed {
                println!("removed entry {}", d.display());
            }
            println!("{} entries removed ({}); rows unused for {older_than} dropped", report.entries_removed.len(), output::mib(report.entry_bytes));
        }
        args::CacheCommand::Merge => {
            let report = lastlayer::cache::shards::merge_all(&cache)?;
            if json {
                print_json(&report)?;
            } else {
                for r in &report {
                    println!("{} {}: {} shards, {} ({})", r.model, r.split, r.shards, r.status, r.dir.display());
                    for p in &r.problems {
                        println!("    {p}");
                    }
                }
                println!("{} split(s) with shards", report.len());
            }
            if let Some(r) = report.iter().find(|r| r.status == "incomplete") {
                return Err(lastlayer::Error::bad_input(
                    &r.dir,
                    format!("{} {}: {}; extract the missing shards (`train` prints the command) and merge again", r.model, r.split, r.problems.join("; ")),
                )
                .into());
            }
        }
        args::CacheCommand::Rm { entries, model, partial, all } => {
            if entries.is_empty() && model.is_none() && !partial && !all {
                return Err(lastlayer::Error::usage("cache rm", "name entries (folders or digests), --model M, --partial or --all").into());
            }
            let mut removed = Vec::new();
            for l in &listed {
                let (dir, is_partial, busy) = match l {
                    Listed::Entry { dir, .. } => (dir, false, false),
                    Listed::Store(st) => (&st.dir, false, st.writers > 0),
                    Listed::Leftover { dir, .. } => (dir, true, false),
                };
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let model_name = dir.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
                let chosen = *all
                    || (*partial && is_partial)
                    || model.as_deref().is_some_and(|m| model_name.as_deref() == Some(m))
                    || entries.iter().any(|e| std::path::Path::new(e) == dir.as_path() || name.contains(e.as_str()));
                if !chosen {
                    continue;
                }
                if busy {
                    tracing::warn!("skipping {}: a lastlayer process is extracting into it now", dir.display());
                    continue;
                }
                std::fs::remove_dir_all(dir).with_context(|| format!("cannot delete {}", dir.display()))?;
                removed.push(dir.clone());
            }
            if json {
                return print_json(&json!({ "removed": removed }));
            }
            for d in &removed {
                println!("removed {}", d.display());
            }
            println!("{} removed", removed.len());
        }
    }
    Ok(())
}

fn default_run_dir(d: &DataArgs) -> PathBuf {
    let data = if d.data.eq_ignore_ascii_case("cifar10") {
        "cifar10".to_string()
    } else {
        PathBuf::from(&d.data).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into())
    };
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
    PathBuf::from("runs").join(format!("{}-{data}-{stamp}", d.model))
}

fn report_training(out: &pipeline::TrainOutcome, json: bool) -> Result<()> {
    if json {
        return print_json(out);
    }
    print!("{}", output::features(&out.features));
    let l2 = out.report.l2.map(|l2| format!(", L2 penalty {l2:e} (tuned)")).unwrap_or_default();
    let refit = match &out.report.refit {
        Some(r) if r.l2.is_some() => format!("; then refit on all {} training rows (L-BFGS, {} passes)", r.rows, r.epochs),
        Some(r) => format!("; then refit on all {} training rows ({} epochs)", r.rows, r.epochs),
        None => String::new(),
    };
    println!(
        "\nhead: best epoch {} of {} run{l2}, validation accuracy {:.2}%{refit}, trained in {:.2}s",
        out.report.best_epoch,
        out.report.history.len(),
        100.0 * out.val_accuracy,
        out.report.seconds
    );
    print!("\n{}", output::evaluation("test", &out.test));
    if let (Some(u), Some(c)) = (&out.unknown, &out.test_coverage) {
        println!(
            "\nunknown threshold {:.4}: keeps {:.1}% of validation pictures (--keep {}); {:.1}% of test pictures kept, accuracy on them {:.2}%",
            u.threshold,
            100.0 * u.validation_kept,
            u.keep,
            100.0 * c.kept,
            100.0 * c.accuracy_kept
        );
    }
    println!("\nrun folder: {} (head.safetensors, head.json, metrics.json)", out.run_dir.display());
    Ok(())
}

//! Benchmark helper for `benches/head_mmap.sh`: writes synthetic features bigger than memory
//! (streamed, block by block), trains a head on them with the streamed trainer and scores it on
//! them from the file, printing the time per epoch, the scoring time and the peak resident
//! memory (VmHWM).
//!
//!   cargo run --example head_streamed -- write FILE ROWS WIDTH CLASSES
//!   cargo run --example head_streamed -- train FILE CLASSES EPOCHS

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use lastlayer::head::{evaluate_streamed, train_head_streamed, TrainConfig, ViewLayout};
use lastlayer::progress::Progress;
use tch::{Kind, Tensor};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn write(path: &Path, rows: usize, width: usize, classes: usize) -> anyhow::Result<()> {
    let fbytes = rows * width * 4;
    let header = serde_json::json!({
        "features": {"dtype": "F32", "shape": [rows, width], "data_offsets": [0, fbytes]},
        "labels": {"dtype": "I64", "shape": [rows], "data_offsets": [fbytes, fbytes + rows * 8]},
    });
    let mut json = serde_json::to_vec(&header)?;
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    tch::manual_seed(0);
    let centers = Tensor::randn([classes as i64, width as i64], (Kind::Float, tch::Device::Cpu)) * 0.05;
    let label = |r: usize| ((r * 7919) % classes) as i64;
    let block = 16384;
    let mut buf = vec![0u8; block * width * 4];
    for start in (0..rows).step_by(block) {
        let n = block.min(rows - start);
        let y = Tensor::from_slice(&(start..start + n).map(label).collect::<Vec<_>>());
        let x = centers.index_select(0, &y) + Tensor::randn([n as i64, width as i64], (Kind::Float, tch::Device::Cpu));
        x.copy_data_u8(&mut buf[..n * width * 4], n * width);
        out.write_all(&buf[..n * width * 4])?;
    }
    for start in (0..rows).step_by(block) {
        let n = block.min(rows - start);
        let bytes: Vec<u8> = (start..start + n).flat_map(|r| label(r).to_le_bytes()).collect();
        out.write_all(&bytes)?;
    }
    out.flush()?;
    println!("wrote {} ({rows} x {width} f32, {:.2} GiB); peak RSS {:.0} MiB", path.display(), (fbytes as f64) / (1u64 << 30) as f64, peak_rss_mib());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["write", file, rows, width, classes] => write(Path::new(file), rows.parse()?, width.parse()?, classes.parse()?),
        ["train", file, classes, epochs] => {
            // No refit: the figures are per epoch of the fixed-penalty run (a refit is that many
            // epochs again, over every row).
            let cfg = TrainConfig { weight_decay_auto: false, weight_decay: 1e-4, epochs: epochs.parse()?, patience: 100, refit: false, ..TrainConfig::default() };
            let start = Instant::now();
            let (head, report) = train_head_streamed(Path::new(file), classes.parse()?, &cfg, &ViewLayout::single(), &Progress::hidden())?;
            let secs = start.elapsed().as_secs_f64();
            let epochs = report.history.len();
            println!(
                "trained {} rows ({} validation) for {epochs} epochs in {secs:.1}s: {:.1}s per epoch (statistics pass included in the total); \
                 val accuracy {:.2}%; peak RSS {:.0} MiB",
                report.train_rows,
                report.val_rows,
                secs / epochs as f64,
                100.0 * report.best_val_accuracy,
                peak_rss_mib()
            );
            // The file scored as a test split too big for memory would be (train, sweep, eval).
            let start = Instant::now();
            let names: Vec<String> = (0..classes.parse::<usize>()?).map(|c| c.to_string()).collect();
            let eval = evaluate_streamed(&head, Path::new(file), &names, report.logit_scale)?;
            println!(
                "scored {} rows from the file in {:.1}s: accuracy {:.2}%; peak RSS {:.0} MiB",
                eval.rows,
                start.elapsed().as_secs_f64(),
                100.0 * eval.accuracy,
                peak_rss_mib()
            );
            Ok(())
        }
        _ => anyhow::bail!("usage: head_streamed write FILE ROWS WIDTH CLASSES | train FILE CLASSES EPOCHS"),
    }
}

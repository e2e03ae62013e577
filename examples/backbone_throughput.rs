//! Backbone compute alone (no pictures to decode or resize, nothing written): images per
//! second for a random batch, to separate compute from the rest of the pipeline.
//!
//! ```sh
//! cargo run --release --example backbone_throughput -- resnet50 fp32 32 10
//! ```

use std::time::Instant;

use lastlayer::backbone::{Backbone, Precision};
use lastlayer::hub::Registry;
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().map_or("resnet50", String::as_str);
    let precision = match args.get(1).map_or("fp32", String::as_str) {
        "bf16" => Precision::Bf16,
        _ => Precision::Fp32,
    };
    let batch: i64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let batches: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    let entry = Registry::builtin().get(model)?.clone();
    let dir = tempfile::tempdir()?;
    let weights = dir.path().join("w.safetensors");
    Backbone::random(entry.architecture, Device::Cpu).save(&weights)?;
    let backbone = Backbone::load(entry.architecture, &weights, Device::Cpu, precision)?;
    let x = Tensor::randn([batch, 3, entry.input_size, entry.input_size], (Kind::Float, Device::Cpu));
    let _ = backbone.features(&x)?; // warm-up
    let start = Instant::now();
    for _ in 0..batches {
        let _ = backbone.features(&x)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{model} {precision:?} batch {batch}: {:.1} images/s", (batch as usize * batches) as f64 / secs);
    Ok(())
}

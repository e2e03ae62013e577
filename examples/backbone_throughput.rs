//! Backbone compute alone (no pictures to decode or resize, nothing written): images per
//! second for a random batch, to separate compute from the rest of the pipeline.
//!
//! ```sh
//! cargo run --release --example backbone_throughput -- resnet50 fp32 32 10
//! ```

use std::time::Instant;

use lastlayer::backbone::{Backbone, Engine, Precision};
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
    let mut backbone = Backbone::load_for_size(entry.architecture, &weights, Some(entry.input_size), Device::Cpu, precision)?;
    let x = Tensor::randn([batch, 3, entry.input_size, entry.input_size], (Kind::Float, Device::Cpu));
    // Each engine: one warm-up batch (which also traces and freezes), then `batches` timed;
    // the two alternate twice and the best of each is printed.
    let mut best = [0f64; 2];
    let mut features: [Option<Tensor>; 2] = [None, None];
    for _round in 0..2 {
        for (i, engine) in [Engine::Eager, Engine::Frozen].into_iter().enumerate() {
            backbone.set_engine(engine);
            let warm = Instant::now();
            features[i] = Some(backbone.features(&x)?);
            let warm = warm.elapsed().as_secs_f64();
            let start = Instant::now();
            for _ in 0..batches {
                let _ = backbone.features(&x)?;
            }
            let rate = (batch as usize * batches) as f64 / start.elapsed().as_secs_f64();
            println!("{model} {precision:?} {:?} batch {batch}: {rate:.1} images/s (first batch {warm:.1} s)", backbone.engine());
            best[i] = best[i].max(rate);
        }
    }
    if let [Some(a), Some(b)] = &features {
        let rel = (a - b).abs().max().double_value(&[]) / a.abs().max().double_value(&[]);
        println!("max |frozen - eager| / max |eager| = {rel:.1e}");
    }
    println!("{model} {precision:?}: eager {:.1}, frozen {:.1} images/s, frozen/eager {:.2}x", best[0], best[1], best[1] / best[0]);
    Ok(())
}

//! Transfer learning with the library API: features of a frozen ResNet-18 for CIFAR-10 (from
//! the cache when they are there), a new last layer trained on them, its test accuracy, and a
//! run folder (head.safetensors, head.json, plots) that `lastlayer predict`/`export`/`serve`
//! take.
//!
//! ```sh
//! cargo run --release --example retrain_in_30_lines -- ../shared/data/cifar10-sample [WEIGHTS.safetensors]
//! ```
//! Without WEIGHTS the ImageNet weights come from the Hugging Face Hub.

use std::path::PathBuf;

use lastlayer::backbone::{DeviceChoice, PrecisionChoice};
use lastlayer::data::{sample::Subset, views::Tta, DataSpec};
use lastlayer::head::TrainConfig;
use lastlayer::hub::Registry;
use lastlayer::pipeline::{self, FeatureRequest, Session, DEFAULT_CHUNK_ROWS};
use lastlayer::progress::Progress;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let data_dir = args.next().ok_or_else(|| anyhow::anyhow!("usage: retrain_in_30_lines CIFAR10_DIR [WEIGHTS]"))?;
    let session = Session {
        cache_dir: lastlayer::fsutil::default_cache_dir(),
        offline: false,
        device: DeviceChoice::Auto,
        progress: Progress::hidden(),
        registry: Registry::builtin(),
    };
    let request = FeatureRequest {
        model: "resnet18".into(),
        data: DataSpec::Cifar10 { data_dir: Some(data_dir) },
        splits: vec!["train".into(), "test".into()],
        subset: Subset::Fraction(0.1), // tune on a stratified 10% first
        sample_seed: 0,
        precision: PrecisionChoice::Auto,
        weights: args.next(),
        input_size: None, // the registry's default
        batch_size: None,
        chunk_rows: DEFAULT_CHUNK_ROWS,
        augment: None,  // or views::Augment::parse("flip,crops=4")?: more views of each picture
        tta: Tta::None, // or Tta::Flip: test pictures averaged with their mirror
        shard: None,
    };
    let outcome = pipeline::train(&session, &request, &TrainConfig::default(), "runs/example".as_ref())?;
    println!("test accuracy {:.2}% ({} backbone runs); run folder {}", 100.0 * outcome.test_accuracy, outcome.features.backbone_runs, outcome.run_dir.display());
    Ok(())
}

//! Parity with the reference implementation: for every registered backbone, random weights
//! (BatchNorm statistics randomised too) saved with the Hub's key names, real pictures from
//! `../shared/data`, lastlayer's fp32 features against timm's on the same input, and
//! lastlayer's preprocessing against torchvision's. Figures are printed (see docs/models.md).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use lastlayer::backbone::{Backbone, Engine, Precision};
use lastlayer::data::preprocess::Preprocessing;
use lastlayer::data::{cifar10, load_picture};
use lastlayer::hub::Registry;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

/// Randomises BatchNorm parameters and statistics so that no layer is an identity.
fn randomise_batchnorm(path: &Path) {
    tch::manual_seed(7);
    let tensors = Tensor::read_safetensors(path).unwrap();
    let out: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let n = t.size()[0];
            let opts = (Kind::Float, Device::Cpu);
            let t = if name.ends_with("running_var") {
                Tensor::rand([n], opts) + 0.5
            } else if name.ends_with("running_mean") {
                Tensor::randn([n], opts) * 0.2
            } else if t.dim() == 1 && name.ends_with(".weight") {
                Tensor::rand([n], opts) + 0.5
            } else if t.dim() == 1 && name.ends_with(".bias") {
                Tensor::randn([n], opts) * 0.2
            } else {
                t
            };
            (name, t)
        })
        .collect();
    Tensor::write_safetensors(&out, path).unwrap();
}


fn parity(model: &str, engine: Engine) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let entry = Registry::builtin().get(model).unwrap().clone();
    let weights = dir.path().join("weights.safetensors");
    tch::manual_seed(1);
    Backbone::random(entry.architecture, Device::Cpu).save(&weights).unwrap();
    randomise_batchnorm(&weights);
    let mut backbone = Backbone::load(entry.architecture, &weights, Device::Cpu, Precision::Fp32).unwrap();
    backbone.set_engine(engine);
    assert_eq!(backbone.engine(), engine);

    let records = cifar10::read_split(&cifar_sample_dir(), "test").unwrap();
    let mut px = Vec::new();
    for i in [0, 1, 2, 3] {
        px.extend_from_slice(records.pixels(i));
    }
    let cifar_pixels = Tensor::from_slice(&px).view([4, 3, 32, 32]);
    let cifar_input = Preprocessing::stretch(&entry).batch(&cifar_pixels);
    let photos: Vec<PathBuf> = ["chelsea.png", "coffee.png"].iter().map(|f| shared_data().join("imagenet-check").join(f)).collect();
    let crop = Preprocessing::center_crop(&entry);
    let photo_input = Tensor::cat(&photos.iter().map(|p| crop.batch(&load_picture(p).unwrap())).collect::<Vec<_>>(), 0);
    let features = backbone.features(&Tensor::cat(&[&cifar_input, &photo_input], 0)).unwrap();
    assert_eq!(features.size(), vec![6, entry.feature_width]);

    let tensors = dir.path().join("tensors.safetensors");
    Tensor::write_safetensors(
        &[("cifar_pixels", &cifar_pixels), ("cifar_input", &cifar_input), ("photo_input", &photo_input), ("features", &features)],
        &tensors,
    )
    .unwrap();
    let spec = json!({
        "timm_name": entry.hub_repo.trim_start_matches("timm/"),
        "weights": weights, "tensors": tensors, "photos": photos,
        "input_size": entry.input_size, "interpolation": entry.interpolation,
        "crop_pct": entry.crop_pct, "mean": entry.mean, "std": entry.std,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = std::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/parity.py"))
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "parity.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("PARITY {model} {engine:?} {report}");
    report
}

fn check(model: &str) {
    check_with(model, Engine::Eager);
}

fn check_with(model: &str, engine: Engine) {
    let r = parity(model, engine);
    let f = |k: &str| r[k].as_f64().unwrap();
    assert_eq!(r["missing_in_lastlayer"], json!([]), "{model}: timm has backbone tensors lastlayer does not load");
    assert_eq!(r["unexpected_from_lastlayer"], json!([]), "{model}: lastlayer has tensors timm does not know");
    assert!(f("feature_rel_diff") <= 1e-4, "{model}: features differ from timm's by {} of their scale", f("feature_rel_diff"));
    assert!(f("cifar_input_max_diff") <= 1e-5, "{model}: CIFAR input differs from F.interpolate by {}", f("cifar_input_max_diff"));
    // Both resize 8-bit pictures in two rounded passes; allow one level of rounding.
    let one_level = 1.0 / f("std_in_pixels");
    assert!(
        f("photo_input_max_diff_torchvision") <= 1.01 * one_level,
        "{model}: photo input differs from torchvision's by {} (one 8-bit level is {one_level})",
        f("photo_input_max_diff_torchvision")
    );
    // `end_to_end_rel_diff` (features from each side's own preprocessing) is reported, not
    // asserted: random weights amplify one-level input differences arbitrarily.
}

#[test]
fn resnet18_matches_timm() {
    check("resnet18");
}

/// The engine extraction uses for the ResNets (TorchScript-frozen, oneDNN-fused): the same
/// features up to float rounding.
#[test]
fn resnet18_frozen_matches_timm() {
    check_with("resnet18", Engine::Frozen);
}

#[test]
fn resnet50_frozen_matches_timm() {
    check_with("resnet50", Engine::Frozen);
}

#[test]
fn resnet34_matches_timm() {
    check("resnet34");
}

#[test]
fn resnet50_matches_timm() {
    check("resnet50");
}

#[test]
fn resnet101_matches_timm() {
    check("resnet101");
}

#[test]
fn resnet152_matches_timm() {
    check("resnet152");
}

#[test]
fn inception_v3_matches_timm() {
    check("inception_v3");
}

#[test]
fn efficientnet_lite0_matches_timm() {
    check("efficientnet_lite0");
}

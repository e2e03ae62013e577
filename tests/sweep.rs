//! `lastlayer sweep`: a grid of learning rates and weight decays on cached features, ranked by
//! validation accuracy, the best exported; the backbone never runs again.

mod common;

use common::*;

#[test]
fn sweep_ranks_settings_on_cached_features_and_exports_the_best() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_sample_dir();
    let common = ["--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(), "--limit", "80", "--precision", "fp32"];
    let filled = sb.run_json(&[&["--json", "extract"][..], &common[..]].concat());
    assert_eq!(filled["backbone_runs"], 2);

    let out = sb.run_json(&[&["--json", "sweep"][..], &common[..], &["--lr", "1e-3,1e-2", "--weight-decay", "0,1e-3", "--out", "best"]].concat());
    let trials = out["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    let accs: Vec<f64> = trials.iter().map(|t| t["val_accuracy"].as_f64().unwrap()).collect();
    assert!(accs.windows(2).all(|w| w[0] >= w[1]), "not sorted by validation accuracy: {accs:?}");
    let mut grid: Vec<(f64, f64)> = trials.iter().map(|t| (t["lr"].as_f64().unwrap(), t["weight_decay"].as_f64().unwrap())).collect();
    grid.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(grid, vec![(1e-3, 0.0), (1e-3, 1e-3), (1e-2, 0.0), (1e-2, 1e-3)]);
    // The best setting is the one exported, and nothing ran the backbone.
    let card: serde_json::Value = serde_json::from_slice(&std::fs::read(sb.path().join("best/head.json")).unwrap()).unwrap();
    assert_eq!(card["training"]["lr"], trials[0]["lr"]);
    assert_eq!(card["training"]["weight_decay"], trials[0]["weight_decay"]);
    assert_eq!(out["best"]["features"]["backbone_runs"], 0);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(sb.path().join("best/sweep.json")).unwrap()).unwrap();
    assert_eq!(saved.as_array().unwrap().len(), 4);
    assert_eq!(sb.run_json(&["--json", "status", "best"])["state"], "finished");
}

//! What a run folder holds besides the head: `lastlayer sweep`'s ranked grid (on cached
//! features, the backbone never running again) and every run's PNG pictures.


use crate::common::*;

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

#[test]
fn run_folders_get_training_curves_and_a_confusion_matrix_as_png() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_sample_dir();
    sb.run_json(&["--json", "train", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(),
        "--limit", "60", "--precision", "fp32", "--out", "run"]);
    for (name, min_w) in [("curves.png", 900), ("confusion.png", 300)] {
        let img = image::open(sb.path().join("run").join(name)).unwrap_or_else(|e| panic!("{name}: {e}")).to_rgb8();
        assert!(img.width() >= min_w && img.height() >= 300, "{name}: {}x{}", img.width(), img.height());
        // Drawn, not blank: many pixels are neither white nor one flat colour.
        let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(colours.len() > 20 && inked > 2000, "{name}: {} colours, {inked} non-white pixels", colours.len());
    }
    // The confusion matrix shades its diagonal green and the rest red: some of each is there.
    let img = image::open(sb.path().join("run/confusion.png")).unwrap().to_rgb8();
    assert!(img.pixels().any(|p| p.0[1] == 255 && p.0[0] < 200 && p.0[0] == p.0[2]), "no green diagonal cell");
    assert!(img.pixels().any(|p| p.0[0] == 255 && p.0[1] < 230 && p.0[1] == p.0[2]), "no red off-diagonal cell");
}

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

/// Every run folder's pictures are drawn, and `eval`'s class figures are scikit-learn's: a run
/// with `--class-weight balanced` on random-weight features (so that it makes mistakes), its
/// balanced accuracy, macro F1, per-class recall and calibration error recomputed by
/// scikit-learn and numpy from the cached test features and the saved head.
#[test]
fn run_folders_get_training_curves_and_a_confusion_matrix_as_png() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_sample_dir();
    let trained = sb.run_json(&["--json", "train", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(),
        "--limit", "60", "--precision", "fp32", "--class-weight", "balanced", "--out", "run"]);
    let card: serde_json::Value = serde_json::from_slice(&std::fs::read(sb.path().join("run/head.json")).unwrap()).unwrap();
    assert_eq!(card["training"]["class_weight"], "balanced");
    let ev = sb.run_json(&["--json", "eval", "run"]);
    assert_eq!(ev["test"]["balanced_accuracy"], trained["test"]["balanced_accuracy"]);
    let py = python_script("class_metrics.py", &[ev["features"]["features"].as_str().unwrap(), sb.path().join("run/head.safetensors").to_str().unwrap()]);
    assert!(py.ok, "class_metrics.py: {}", py.stderr);
    let sk: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    let close = |a: &serde_json::Value, b: &serde_json::Value, what: &str| {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!((a - b).abs() < 1e-9, "{what}: lastlayer {a}, scikit-learn {b}");
    };
    let t = &ev["test"];
    println!("eval: accuracy {}, balanced {}, macro F1 {}, ECE {}; scikit-learn: {sk}", t["accuracy"], t["balanced_accuracy"], t["macro_f1"], t["calibration"]["ece"]);
    close(&t["accuracy"], &sk["accuracy"], "accuracy");
    close(&t["balanced_accuracy"], &sk["balanced_accuracy"], "balanced accuracy");
    close(&t["macro_f1"], &sk["macro_f1"], "macro F1");
    assert!((t["calibration"]["ece"].as_f64().unwrap() - sk["ece"].as_f64().unwrap()).abs() < 1e-5, "ECE: {} against {}", t["calibration"]["ece"], sk["ece"]);
    assert!(t["balanced_accuracy"].as_f64().unwrap() < 1.0, "random features should leave mistakes to score");
    for (c, class) in t["per_class"].as_array().unwrap().iter().enumerate() {
        if let Some(recall) = sk["recall"].get(c.to_string()) {
            close(&class["accuracy"], recall, &format!("recall of class {c}"));
        }
    }
    assert_eq!(t["calibration"]["bins"].as_array().unwrap().len(), 15);
    assert!(t["calibration"]["ece_before_temperature"].is_number(), "{}", t["calibration"]);
    for (name, min_w) in [("curves.png", 900), ("confusion.png", 300), ("recall.png", 400), ("reliability.png", 500)] {
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

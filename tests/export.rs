//! `lastlayer export --format torchscript`: the whole classifier (normalisation, backbone, head)
//! as TorchScript, loaded with `torch.jit.load` in Python and with libtorch's C++ loader (through
//! tch), must give `lastlayer predict`'s probabilities on the same pictures.

mod common;

use std::path::Path;

use common::*;
use lastlayer::data::load_picture;
use serde_json::Value;

#[test]
fn torchscript_export_matches_predict_in_python_and_cpp() {
    let sb = Sandbox::new();
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_sample_dir();
    sb.run_json(&["--json", "train", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(),
        "--limit", "40", "--precision", "fp32", "--out", "run"]);
    let exported = sb.run_json(&["--json", "export", "run", "--format", "torchscript"]);
    let model = sb.path().join("run/model.pt");
    assert_eq!(exported["path"].as_str().map(Path::new), Some(Path::new("run/model.pt")));
    assert!(model.is_file());

    // The pictures as the exported model takes them: resized as head.json says, 0-255.
    let pictures: Vec<_> = ["chelsea.png", "coffee.png"].iter().map(|f| shared_data().join("imagenet-check").join(f)).collect();
    let (card, _) = lastlayer::export::read_run(&sb.path().join("run")).unwrap();
    let x = tch::Tensor::cat(&pictures.iter().map(|p| card.preprocessing.resized(&load_picture(p).unwrap())).collect::<Vec<_>>(), 0);
    let input = sb.path().join("x.safetensors");
    lastlayer::fsutil::write_safetensors(&input, &[("x", &x)]).unwrap();

    // lastlayer predict, every class.
    let args: Vec<&str> = ["--json", "predict", "run"].into_iter().chain(pictures.iter().map(|p| p.to_str().unwrap())).chain(["-k", "10"]).collect();
    let preds = sb.run_json(&args);
    let expected: Vec<Vec<f64>> = preds
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut probs = vec![0.0; 10];
            for c in p["top"].as_array().unwrap() {
                probs[c["index"].as_u64().unwrap() as usize] = c["probability"].as_f64().unwrap();
            }
            probs
        })
        .collect();
    let check = |got: &[Vec<f64>], who: &str| {
        for (g, e) in got.iter().zip(&expected) {
            let diff = g.iter().zip(e).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            let argmax = |v: &[f64]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
            println!("{who}: max |difference| {diff:.2e}");
            assert!(diff <= 1e-4, "{who}: probabilities differ from predict by {diff}");
            assert_eq!(argmax(g), argmax(e), "{who}: another top-1 class");
        }
    };

    // Python: torch.jit.load.
    let out = std::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/run_torchscript.py"))
        .arg(&model)
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let py: Value = serde_json::from_slice(&out.stdout).unwrap();
    let py: Vec<Vec<f64>> = serde_json::from_value(py).unwrap();
    check(&py, "python torch.jit.load");

    // C++: libtorch's loader (tch::CModule).
    let module = tch::CModule::load(&model).unwrap();
    let probs = module.forward_ts(&[x]).unwrap().to_kind(tch::Kind::Double);
    let cpp: Vec<Vec<f64>> = (0..2).map(|i| Vec::<f64>::try_from(probs.get(i)).unwrap()).collect();
    check(&cpp, "libtorch C++ loader");
}

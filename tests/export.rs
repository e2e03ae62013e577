//! `lastlayer export`: the whole classifier (normalisation, backbone, head) as TorchScript
//! (loaded with `torch.jit.load` in Python and with libtorch's C++ loader, through tch) and as
//! ONNX (checked with `onnx.checker` and run with onnxruntime) must give `lastlayer predict`'s
//! probabilities on the same pictures: the calibrated ones (the temperature fitted on validation
//! is folded into the head all of them apply), max difference 1e-6 in TorchScript and 2e-6 in
//! onnxruntime for ResNet-18 and EfficientNet-Lite0 (onnxruntime's float32 kernels sum in their
//! own order: 1.2e-7 to 1.31e-6 measured over runs of random weights), 1e-4 for the other
//! architectures, whose graphs sum in other orders; the same top-1 class.


use std::path::{Path, PathBuf};

use crate::common::*;
use lastlayer::data::load_picture;
use serde_json::Value;

/// A run folder trained on the CIFAR sample with random `model` weights, predict's
/// probabilities for the two check photos, and those photos as the exports take them.
struct Fixture {
    sb: Sandbox,
    /// The photos resized as head.json says, 0-255, `[2, 3, S, S]`.
    x: tch::Tensor,
    /// The same, as `x.safetensors` for Python.
    x_file: PathBuf,
    /// `lastlayer predict`'s probabilities, every class.
    expected: Vec<Vec<f64>>,
    /// `lastlayer predict`'s in-class scores.
    scores: Vec<f64>,
    classes: Vec<String>,
    /// Largest |difference| from predict allowed.
    tolerance: f64,
}

fn fixture(model: &str) -> Fixture {
    fixture_sized(model, None)
}

/// [`fixture`] at `--input-size size` (a smaller one keeps the transformers quick, and makes
/// their position embeddings resampled).
fn fixture_sized(model: &str, size: Option<&str>) -> Fixture {
    fixture_with(model, size, &[])
}

/// [`fixture_sized`] trained with `extra` flags.
fn fixture_with(model: &str, size: Option<&str>, extra: &[&str]) -> Fixture {
    let sb = Sandbox::new();
    let w = random_weights(model, sb.path()).0.display().to_string();
    let data = cifar_sample_dir();
    let mut args = vec!["--json", "train", "--model", model, "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(),
        "--limit", "30", "--precision", "fp32", "--out", "run"];
    if let Some(size) = size {
        args.extend(["--input-size", size]);
    }
    args.extend_from_slice(extra);
    sb.run_json(&args);

    let pictures: Vec<_> = ["chelsea.png", "coffee.png"].iter().map(|f| shared_data().join("imagenet-check").join(f)).collect();
    let (card, _) = lastlayer::export::read_run(&sb.path().join("run")).unwrap();
    let x = tch::Tensor::cat(&pictures.iter().map(|p| card.preprocessing.resized(&load_picture(p).unwrap())).collect::<Vec<_>>(), 0);
    let x_file = sb.path().join("x.safetensors");
    lastlayer::fsutil::write_safetensors(&x_file, &[("x", &x)]).unwrap();
    sharpen_head(&sb.path().join("run"), model, Path::new(&w), &card, &x);

    let classes = card.classes.len();
    let k = classes.to_string();
    let args: Vec<&str> = ["--json", "predict", "run"].into_iter().chain(pictures.iter().map(|p| p.to_str().unwrap())).chain(["-k", &k]).collect();
    let preds = sb.run_json(&args);
    let expected = preds
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut probs = vec![f64::NAN; classes];
            for c in p["top"].as_array().unwrap() {
                probs[c["index"].as_u64().unwrap() as usize] = c["probability"].as_f64().unwrap();
            }
            probs
        })
        .collect();
    let scores = preds.as_array().unwrap().iter().map(|p| p["score"].as_f64().expect("the run has an unknown score")).collect();
    Fixture { sb, x, x_file, expected, scores, classes: card.classes, tolerance: 1e-4 }
}

/// A head trained for seconds on random-weight features is nearly uniform, which would hide a
/// wrong backbone graph. Replace it with a random head scaled so that the logits of the
/// pictures have a standard deviation of 3: probabilities then hang on every feature. (The
/// trained head's temperature is folded into its weights, as any head's is: exports and predict
/// apply the saved weights, so the new head stands for a calibrated one.)
fn sharpen_head(run: &Path, model: &str, weights: &Path, card: &lastlayer::export::HeadCard, x: &tch::Tensor) {
    let entry = lastlayer::hub::Registry::builtin().get(model).unwrap().clone();
    let size = Some(card.preprocessing.input_size);
    let backbone = lastlayer::backbone::Backbone::load_for_size(entry.architecture, weights, size, tch::Device::Cpu, lastlayer::backbone::Precision::Fp32).unwrap();
    let features = backbone.features(&card.preprocessing.normalize(x)).unwrap();
    tch::manual_seed(7);
    let w = tch::Tensor::randn([card.classes.len() as i64, backbone.feature_width()], (tch::Kind::Float, tch::Device::Cpu));
    let logits = features.matmul(&w.tr());
    assert!(card.report.logit_scale.is_some(), "a trained head has a temperature");
    let w = w * (3.0 / logits.std(true).double_value(&[]));
    let b = tch::Tensor::zeros([card.classes.len() as i64], (tch::Kind::Float, tch::Device::Cpu));
    lastlayer::fsutil::write_safetensors(&run.join("head.safetensors"), &[("weight", &w), ("bias", &b)]).unwrap();
}

impl Fixture {
    /// Asserts `got` matches predict (max |difference| <= 1e-4, same top-1) and returns the
    /// max difference.
    fn check(&self, got: &[Vec<f64>], who: &str) -> f64 {
        assert_eq!(got.len(), self.expected.len(), "{who}: one row per picture");
        let argmax = |v: &[f64]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
        let mut worst = 0.0f64;
        for (g, e) in got.iter().zip(&self.expected) {
            assert_eq!(g.len(), e.len(), "{who}: one probability per class");
            let diff = g.iter().zip(e).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(diff <= self.tolerance, "{who}: probabilities differ from predict by {diff}");
            assert_eq!(argmax(g), argmax(e), "{who}: another top-1 class");
            worst = worst.max(diff);
        }
        let spread = self.expected.iter().flatten().fold(0.0f64, |m, &p| m.max(p)) - self.expected.iter().flatten().fold(1.0f64, |m, &p| m.min(p));
        println!("{who}: max |difference| from predict {worst:.2e}, same top-1 on both pictures (probabilities spread {spread:.3})");
        worst
    }

    /// Asserts an export's second output equals predict's score within 1e-5 of the score's
    /// size, `|difference| <= 1e-5 · max(1, |score|)` (5e-5 for the architectures whose exported
    /// graphs sum in other orders, whose features differ more): the score is on the scale of
    /// logits, where the backbone's last-bit differences show more than in probabilities (here
    /// up to 1.0e-5 on a score of 4.7). Returns the largest difference.
    fn check_scores(&self, got: &[f64], who: &str) -> f64 {
        self.check_scores_within(got, who, 1e-5)
    }

    fn check_scores_within(&self, got: &[f64], who: &str, tolerance: f64) -> f64 {
        assert_eq!(got.len(), self.scores.len(), "{who}: one score per picture");
        let diff = got.iter().zip(&self.scores).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!("{who}: in-class score max |difference| from predict {diff:.2e} (scores {:?})", self.scores);
        for (g, e) in got.iter().zip(&self.scores) {
            assert!((g - e).abs() <= tolerance * e.abs().max(1.0), "{who}: scores {got:?} differ from predict's {:?} by {diff}", self.scores);
        }
        diff
    }

    /// run_torchscript.py's answer: the probabilities and the scores.
    fn torchscript_outputs(&self, model: &Path) -> (Vec<Vec<f64>>, Vec<f64>) {
        let v = self.python("run_torchscript.py", model);
        let probs = serde_json::from_value(v["probabilities"].clone()).unwrap_or_else(|_| panic!("no second output (score): {v}"));
        (probs, serde_json::from_value(v["score"].clone()).unwrap())
    }

    fn python(&self, script: &str, model: &Path) -> Value {
        let out = python_script(script, &[model.to_str().unwrap(), self.x_file.to_str().unwrap()]);
        assert!(out.ok, "{script}: {}", out.stderr);
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[test]
fn torchscript_export_matches_predict_in_python_and_cpp() {
    torchscript_matches(Fixture { tolerance: 1e-6, ..fixture("resnet18") });
}

/// A Vision Transformer (attention through `scaled_dot_product_attention`, LayerNorm, GELU,
/// resampled position embeddings) traced into TorchScript.
#[test]
fn torchscript_export_of_a_vit_matches_predict() {
    torchscript_matches(fixture_sized("vit_small_patch14_dinov2", Some("112")));
}

fn torchscript_matches(f: Fixture) {
    let exported = f.sb.run_json(&["--json", "export", "run", "--format", "torchscript"]);
    let model = f.sb.path().join("run/model.pt");
    assert_eq!(exported["path"].as_str().map(Path::new), Some(Path::new("run/model.pt")));
    assert!(model.is_file());

    // Python: torch.jit.load.
    let (py, scores) = f.torchscript_outputs(&model);
    f.check(&py, "python torch.jit.load");
    f.check_scores(&scores, "python torch.jit.load");

    // C++: libtorch's loader (tch::CModule).
    let module = tch::CModule::load(&model).unwrap();
    let outputs = module.forward_is(&[tch::IValue::Tensor(f.x.shallow_clone())]).unwrap();
    let tch::IValue::Tuple(outputs) = outputs else { panic!("the module returns {outputs:?}, not (probabilities, score)") };
    let [tch::IValue::Tensor(probs), tch::IValue::Tensor(score)] = &outputs[..] else { panic!("not two tensors") };
    f.check_scores(&Vec::<f64>::try_from(score.to_kind(tch::Kind::Double)).unwrap(), "libtorch C++ loader");
    let probs = probs.to_kind(tch::Kind::Double);
    let cpp: Vec<Vec<f64>> = (0..2).map(|i| Vec::<f64>::try_from(probs.get(i)).unwrap()).collect();
    f.check(&cpp, "libtorch C++ loader");
}

// One test per architecture, so that two run at once: much of each (writing and checking the
// ONNX file, onnxruntime's session) runs on one core.
#[test]
fn onnx_export_of_resnet18_matches_predict_in_onnxruntime() {
    onnx_matches("resnet18", None, 2e-6);
}

#[test]
fn onnx_export_of_inception_v3_matches_predict_in_onnxruntime() {
    onnx_matches("inception_v3", None, 1e-4);
}

#[test]
fn onnx_export_of_efficientnet_lite0_matches_predict_in_onnxruntime() {
    onnx_matches("efficientnet_lite0", None, 2e-6);
}

#[test]
fn onnx_export_of_a_dinov2_vit_with_registers_matches_predict_in_onnxruntime() {
    onnx_matches("vit_small_patch14_reg4_dinov2", Some("112"), 1e-4);
}

#[test]
fn onnx_export_of_siglip_matches_predict_in_onnxruntime() {
    onnx_matches("vit_base_patch16_siglip_224", Some("96"), 1e-4);
}

#[test]
fn onnx_export_of_convnext_matches_predict_in_onnxruntime() {
    onnx_matches("convnext_tiny", Some("128"), 1e-4);
}

/// Every architecture family: ResNet (residual adds, max pool), Inception-v3 (concatenations,
/// average pools counting padding, 1x7 kernels), EfficientNet-Lite0 (TF "same" padding,
/// depthwise convolutions, ReLU6), a DINOv2 ViT with registers (prefix tokens, LayerScale,
/// attention, LayerNormalization, GELU as Erf), SigLIP (attention pooling with a learned query)
/// and ConvNeXt (7x7 depthwise, channels-last LayerNorm and MLP): exported to ONNX, each
/// gives `predict`'s probabilities in onnxruntime.
fn onnx_matches(model: &str, size: Option<&str>, tolerance: f64) {
    let f = Fixture { tolerance, ..fixture_sized(model, size) };
    let exported = f.sb.run_json(&["--json", "export", "run", "--format", "onnx"]);
    assert_eq!(exported["format"], "onnx");
    let path = f.sb.path().join("run/model.onnx");
    assert_eq!(exported["path"].as_str().map(Path::new), Some(Path::new("run/model.onnx")));

    let ort = f.python("run_onnx.py", &path);
    assert_eq!(ort["opset"], 17);
    assert_eq!(ort["output_dims"], serde_json::json!(["N", f.classes.len()]), "{model}: onnx shape inference");
    assert_eq!(ort["classes"], serde_json::json!(f.classes), "{model}: class names in the metadata");
    let probs: Vec<Vec<f64>> = serde_json::from_value(ort["probabilities"].clone()).unwrap();
    f.check(&probs, &format!("{model} onnxruntime"));
    assert_eq!(ort["outputs"], serde_json::json!(["probabilities", "score"]), "{model}");
    let scores: Vec<f64> = serde_json::from_value(ort["score"].clone()).unwrap();
    let tolerance = if ["resnet18", "efficientnet_lite0"].contains(&model) { 1e-5 } else { 5e-5 };
    f.check_scores_within(&scores, &format!("{model} onnxruntime"), tolerance);
    let (card, _) = lastlayer::export::read_run(&f.sb.path().join("run")).unwrap();
    assert_eq!(ort["unknown"]["threshold"].as_f64(), card.unknown.map(|u| u.threshold), "{model}: the threshold in the metadata");
}

#[test]
fn export_of_a_folder_that_is_not_a_run_fails_clearly() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path().join("empty")).unwrap();
    let out = sb.run(&["export", "empty", "--format", "onnx"]);
    assert_fails(&out, 3, &["empty", "head.json", "not a lastlayer run folder"]);
    assert!(!sb.path().join("empty/model.onnx").exists());
}

/// A `--tta flip` run: predict averages each picture's features with its mirror image's (so a
/// picture and its mirror image get the same probabilities), and the TorchScript and ONNX
/// exports do the same.
#[test]
fn exports_of_a_tta_flip_run_match_predict() {
    let f = fixture_with("resnet18", Some("96"), &["--tta", "flip"]);
    let (card, _) = lastlayer::export::read_run(&f.sb.path().join("run")).unwrap();
    assert_eq!(card.data.tta, lastlayer::data::views::Tta::Flip);

    // The mirror image of the cat: the same probabilities under --tta flip.
    let cat = load_picture(&shared_data().join("imagenet-check/chelsea.png")).unwrap();
    let mirrored = f.sb.path().join("chelsea-mirrored.png");
    let hwc = cat.squeeze_dim(0).flip([2]).permute([1, 2, 0]).contiguous();
    let (h, w) = (hwc.size()[0] as u32, hwc.size()[1] as u32);
    image::RgbImage::from_raw(w, h, Vec::<u8>::try_from(hwc.flatten(0, -1)).unwrap()).unwrap().save(&mirrored).unwrap();
    let k = f.classes.len().to_string();
    let preds = f.sb.run_json(&["--json", "predict", "run", mirrored.to_str().unwrap(), "-k", &k]);
    let mut probs = vec![f64::NAN; f.classes.len()];
    for c in preds[0]["top"].as_array().unwrap() {
        probs[c["index"].as_u64().unwrap() as usize] = c["probability"].as_f64().unwrap();
    }
    let diff = probs.iter().zip(&f.expected[0]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!("--tta flip predict: the cat and its mirror image differ by {diff:.2e}");
    assert!(diff <= 1e-5, "predict ignores --tta flip: the cat and its mirror image differ by {diff}");

    f.sb.run_json(&["--json", "export", "run", "--format", "torchscript"]);
    let (py, scores) = f.torchscript_outputs(&f.sb.path().join("run/model.pt"));
    f.check(&py, "--tta flip: python torch.jit.load");
    f.check_scores(&scores, "--tta flip: python torch.jit.load");
    f.sb.run_json(&["--json", "export", "run", "--format", "onnx"]);
    let ort = f.python("run_onnx.py", &f.sb.path().join("run/model.onnx"));
    assert_eq!(ort["output_dims"], serde_json::json!(["N", f.classes.len()]), "onnx shape inference");
    let probs: Vec<Vec<f64>> = serde_json::from_value(ort["probabilities"].clone()).unwrap();
    f.check(&probs, "--tta flip: onnxruntime");
    f.check_scores(&serde_json::from_value::<Vec<f64>>(ort["score"].clone()).unwrap(), "--tta flip: onnxruntime");
}

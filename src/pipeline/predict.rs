//! `predict` and `serve`'s model: a finished run's backbone and head over new pictures.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::Tensor;

use super::evaluate::weights_file_of;
use super::features::load_backbone;
use super::Session;
use crate::backbone::{Architecture, Backbone, Engine, Precision};
use crate::data::load_picture;
use crate::data::on_device::{self, Pixels};
use crate::error::{Error, IoContext, Result};
use crate::export::{read_run, read_unknown, HeadCard};
use crate::head::unknown::{UnknownScore, Verdict};
use crate::hub::{fetch_weights, resolve_weights};

/// One class and its probability.
#[derive(Debug, Clone, Serialize)]
pub struct ClassScore {
    /// Class name.
    pub class: String,
    /// Class index.
    pub index: usize,
    /// Softmax probability.
    pub probability: f64,
}

/// The top classes of one picture.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// The picture.
    pub path: PathBuf,
    /// Best first.
    pub top: Vec<ClassScore>,
    /// Whether the picture scores below the run's unknown threshold: of none of the trained
    /// classes (absent for runs without a threshold, or with `--reject off`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<bool>,
    /// Its in-class score, higher = more like the training classes (see
    /// [`crate::head::unknown`]); absent when `unknown` is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// One picture's answer: its top classes and, when the run has an unknown threshold (and
/// rejection is on), the verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Answer {
    /// Best first.
    pub top: Vec<ClassScore>,
    /// Score and verdict.
    #[serde(skip)]
    pub verdict: Option<Verdict>,
}

/// Whether answers carry the unknown verdict (`--reject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reject {
    /// Pictures below the run's threshold are answered as unknown (the default).
    #[default]
    On,
    /// Every picture gets its top classes only, as before unknown thresholds existed.
    Off,
}

/// Expands files and folders (recursively) into picture files, in the order given, folders
/// sorted.
pub fn collect_pictures(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).at(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).is_some_and(|e| crate::data::folder::EXTENSIONS.contains(&e.as_str())) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::bad_input(p, "no such file or folder"));
        }
    }
    if out.is_empty() {
        return Err(Error::usage("IMAGE", "no pictures found in the paths given (files named .jpg, .png, .heic, .webp, .tiff... or folders of them)"));
    }
    Ok(out)
}

/// A finished run loaded for classifying: its card, head and backbone (with the weights checked
/// against `head.json`'s sha256). Holds libtorch tensors, so it is `Send` at most, not `Sync`:
/// a server keeps it on one thread.
pub struct Classifier {
    card: HeadCard,
    head: crate::head::LinearHead,
    backbone: Backbone,
    unknown: Option<UnknownScore>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier").field("model", &self.model()).field("classes", &self.classes()).finish()
    }
}

impl Classifier {
    /// Loads the run folder `run_dir` (written by `train`, `run` or `sweep`) and its backbone,
    /// in the precision it was trained with, on the session's device.
    pub fn open(session: &Session, run_dir: &Path) -> Result<Classifier> {
        Classifier::open_with(session, run_dir, Reject::On)
    }

    /// [`Classifier::open`], with the unknown verdict on or off. A run trained before unknown
    /// thresholds existed says so once, and how to get one.
    pub fn open_with(session: &Session, run_dir: &Path, reject: Reject) -> Result<Classifier> {
        let (card, head) = read_run(run_dir)?;
        let unknown = match reject {
            Reject::Off => None,
            Reject::On => {
                let u = read_unknown(run_dir, &card)?;
                if u.is_none() {
                    tracing::warn!(
                        "{} has no unknown threshold (trained before lastlayer had one, or without a validation split): every \
                         picture is answered with a class. Run its train command again to get one; the cached features are \
                         reused, so it takes seconds",
                        run_dir.display()
                    );
                }
                u
            }
        };
        Classifier::with_run(session, card, head, unknown)
    }

    fn with_run(session: &Session, card: HeadCard, head: crate::head::LinearHead, unknown: Option<UnknownScore>) -> Result<Classifier> {
        let backbone = run_backbone_of(session, &card, card.backbone.precision)?;
        tracing::info!(
            "classifier: backbone {} in {:?} on {:?}; {}; head on the CPU",
            card.backbone.model,
            backbone.precision(),
            backbone.device(),
            on_device::describe(backbone.device())
        );
        Ok(Classifier { card, head, backbone, unknown })
    }

    /// Class names, in the head's order.
    pub fn classes(&self) -> &[String] {
        &self.card.classes
    }

    /// The backbone's registry name.
    pub fn model(&self) -> &str {
        &self.card.backbone.model
    }

    /// The run's `head.json`.
    pub fn card(&self) -> &HeadCard {
        &self.card
    }

    /// The `top_k` classes (at most as many as there are) of each of `pictures`, decoded
    /// `[1, 3, h, w]` uint8 RGB tensors as [`crate::data::decode_picture`] gives, run through
    /// the backbone together (one batch). With the backbone on a GPU they cross as uint8 and
    /// are resized and normalised there.
    pub fn classify(&self, pictures: &[Tensor], top_k: usize) -> Result<Vec<Vec<ClassScore>>> {
        Ok(self.answer(pictures, top_k)?.into_iter().map(|a| a.top).collect())
    }

    /// [`Classifier::classify`] with each picture's unknown verdict.
    pub fn answer(&self, pictures: &[Tensor], top_k: usize) -> Result<Vec<Answer>> {
        if top_k == 0 {
            return Err(Error::usage("top_k", "must be at least 1"));
        }
        let preparer = self.preparer();
        let inputs = pictures.iter().map(|p| preparer.prepare(p)).collect::<Result<Vec<_>>>()?;
        self.answer_prepared(&inputs, &vec![top_k; inputs.len()], inputs.len())
    }

    /// The run's in-class score, when it has one and rejection is on.
    pub fn unknown(&self) -> Option<&UnknownScore> {
        self.unknown.as_ref()
    }

    /// The head's features of decoded pictures (as [`Classifier::classify`] takes them), `[N, D]`.
    pub fn features(&self, pictures: &[Tensor]) -> Result<Tensor> {
        let preparer = self.preparer();
        let inputs = pictures.iter().map(|p| preparer.prepare(p)).collect::<Result<Vec<_>>>()?;
        self.features_prepared(&inputs, inputs.len())
    }

    fn features_prepared(&self, inputs: &[Tensor], rows: usize) -> Result<Tensor> {
        let n = inputs.len();
        let padded: Vec<Tensor> = inputs.iter().chain(std::iter::repeat_n(&inputs[n - 1], rows.saturating_sub(n))).map(Tensor::shallow_clone).collect();
        let device = self.backbone.device();
        let input = if on_device::preprocesses_on(device) {
            self.card.preprocessing.batch_on(&Pixels::pictures(&padded)?.staged_for(device)?, device)?
        } else {
            Tensor::f_cat(&padded, 0)?
        };
        Ok(self.backbone.features_with(&input, self.card.data.tta)?.f_narrow(0, 0, n as i64)?.to_device(tch::Device::Cpu))
    }

    /// Runs the backbone with `engine` from now on ([`Engine::Frozen`] applies on the CPU
    /// only). `predict` runs eagerly, as [`Engine::choose`] picks for a few pictures.
    pub fn set_engine(&mut self, engine: Engine) {
        self.backbone.set_engine(engine);
    }

    /// How the backbone runs.
    pub fn engine(&self) -> Engine {
        self.backbone.engine()
    }

    /// The backbone's network.
    pub fn architecture(&self) -> Architecture {
        self.backbone.architecture()
    }

    /// Runs one blank picture through, so that the first real one does not pay for what the
    /// engine does once (tracing and freezing the frozen engine, a first batch of one).
    pub fn warm_up(&self) -> Result<()> {
        let side = self.card.preprocessing.input_size;
        let blank = Tensor::zeros([1, 3, side, side], (tch::Kind::Uint8, tch::Device::Cpu));
        self.classify(&[blank], 1).map(|_| ())
    }

    /// What turns a decoded picture into this classifier's input, to run on another thread
    /// (a server's decoding pool) than the one holding the classifier.
    pub fn preparer(&self) -> Preparer {
        Preparer { preprocessing: self.card.preprocessing.clone(), on_device: on_device::preprocesses_on(self.backbone.device()) }
    }

    /// The backbone's device.
    pub fn device(&self) -> tch::Device {
        self.backbone.device()
    }

    /// The top `ks[i]` classes (at least 1, at most as many as there are) of each of `inputs`,
    /// made by [`Preparer::prepare`], run through the backbone as one batch of `rows` rows
    /// (at least `inputs.len()`; extra rows repeat the last picture and are thrown away, so
    /// that the frozen engine sees only a few batch shapes). Each picture's answer is what
    /// [`Classifier::classify`] gives it alone or in any other batch, up to the rounding of the
    /// backbone's kernels (tests/serve.rs compares it with `predict` to 1e-6).
    pub fn classify_prepared(&self, inputs: &[Tensor], ks: &[usize], rows: usize) -> Result<Vec<Vec<ClassScore>>> {
        Ok(self.answer_prepared(inputs, ks, rows)?.into_iter().map(|a| a.top).collect())
    }

    /// [`Classifier::classify_prepared`] with each picture's unknown verdict.
    pub fn answer_prepared(&self, inputs: &[Tensor], ks: &[usize], rows: usize) -> Result<Vec<Answer>> {
        if inputs.len() != ks.len() {
            return Err(Error::usage("ks", format!("{} pictures but {} values of k", inputs.len(), ks.len())));
        }
        if ks.contains(&0) {
            return Err(Error::usage("top_k", "must be at least 1"));
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let classes = &self.card.classes;
        let k_max = ks.iter().copied().max().unwrap_or(1).min(classes.len());
        let features = self.features_prepared(inputs, rows)?;
        let verdicts: Vec<Option<Verdict>> = match &self.unknown {
            Some(u) => u.verdicts(&features)?.into_iter().map(Some).collect(),
            None => vec![None; inputs.len()],
        };
        let probs = self.head.probabilities(&features);
        // The best k_max, best first; each picture keeps its own first k.
        let (values, indices) = probs.topk(k_max as i64, -1, true, true);
        let values: Vec<f64> = Vec::<f64>::try_from(values.to_kind(tch::Kind::Double).reshape([-1])).map_err(Error::Torch)?;
        let indices: Vec<i64> = Vec::<i64>::try_from(indices.reshape([-1])).map_err(Error::Torch)?;
        Ok(ks
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let row = i * k_max..i * k_max + k.min(k_max);
                let top = indices[row.clone()]
                    .iter()
                    .zip(&values[row])
                    .map(|(&c, &p)| ClassScore { class: classes[c as usize].clone(), index: c as usize, probability: p })
                    .collect();
                Answer { top, verdict: verdicts[i] }
            })
            .collect())
    }
}

/// Turns decoded pictures into a [`Classifier`]'s input ([`Classifier::preparer`]): on the
/// CPU, resized and normalised (`[1, 3, S, S]` f32, what the backbone takes); for a backbone
/// that preprocesses on its device, the uint8 picture as it is. Holds no libtorch module, so
/// it can be cloned to any thread.
#[derive(Debug, Clone)]
pub struct Preparer {
    preprocessing: crate::data::preprocess::Preprocessing,
    on_device: bool,
}

impl Preparer {
    /// One decoded `[1, 3, h, w]` uint8 picture, ready for [`Classifier::classify_prepared`].
    pub fn prepare(&self, picture: &Tensor) -> Result<Tensor> {
        if self.on_device {
            Ok(picture.shallow_clone())
        } else {
            Ok(self.preprocessing.batch(picture))
        }
    }
}

/// Classifies pictures with a run's backbone, preprocessing and head.
/// With `reject` on, each picture also gets its unknown verdict when the run has a threshold.
pub fn predict(session: &Session, run_dir: &Path, paths: &[PathBuf], top_k: usize, batch_size: usize, reject: Reject) -> Result<Vec<Prediction>> {
    if top_k == 0 {
        return Err(Error::usage("--top-k", "must be at least 1"));
    }
    let pictures = collect_pictures(paths)?;
    let classifier = Classifier::open_with(session, run_dir, reject)?;
    let mut out = Vec::with_capacity(pictures.len());
    for chunk in pictures.chunks(batch_size.max(1)) {
        let decoded = chunk.iter().map(|p| load_picture(p)).collect::<Result<Vec<_>>>()?;
        for (path, a) in chunk.iter().zip(classifier.answer(&decoded, top_k)?) {
            out.push(Prediction { path: path.clone(), top: a.top, unknown: a.verdict.map(|v| v.unknown), score: a.verdict.map(|v| v.score) });
        }
    }
    Ok(out)
}

/// The backbone a run was trained with (weights checked against `head.json`'s sha256).
pub(super) fn run_backbone_of(session: &Session, card: &HeadCard, precision: Precision) -> Result<Backbone> {
    let entry = session.registry.get(&card.backbone.model)?;
    let weights = match weights_file_of(card) {
        Some(path) => resolve_weights(entry, Some(&path), &session.fetch_options())?,
        None => fetch_weights(entry, &session.fetch_options())?,
    };
    if weights.sha256 != card.backbone.weights_sha256 {
        return Err(Error::Checksum {
            path: weights.path.clone(),
            algorithm: "sha256",
            expected: card.backbone.weights_sha256.clone(),
            actual: weights.sha256.clone(),
            action: "these are not the weights the head was trained with".into(),
        });
    }
    load_backbone(entry, &weights, card.preprocessing.input_size, session.device.resolve()?, precision)
}

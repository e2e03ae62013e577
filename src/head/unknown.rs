//! "None of these": an in-class score and its threshold, learned with the head, so that a
//! picture of no trained class is answered as unknown rather than as a confident wrong class.
//!
//! **The score** (higher = more like the training classes) is the sum of two standardised
//! parts, each computed on the backbone's raw features `x`:
//!
//! - *energy* `E(x) = logsumexp(W_s x + b_s)` (Liu et al. 2020) of a **score head** `W_s, b_s`:
//!   the head trained on the training rows without the validation split (the run's own head
//!   before its refit; the run's head itself with `--no-refit`), so that the validation
//!   pictures it is judged on are pictures it never saw;
//! - *Mahalanobis* `M(x) = -min_c ‖(x - centre)·whiten - means_c‖² / D` (Lee et al. 2018): the
//!   squared distance to the nearest class mean under the training features' shared
//!   covariance, shrunk by [`SHRINKAGE`] towards its mean variance, over the feature width D.
//!   `whiten` is `V·Λ^(-1/2)` of that covariance's eigendecomposition, `means` the class means
//!   whitened, all from the training pictures outside the validation split.
//!
//! `score = (E - E_mean) / E_std + (M - M_mean) / M_std`, the means and standard deviations
//! those of the validation pictures. The two parts fail on different pictures (the energy
//! where a picture lies beyond a class boundary, far from every class; the distance where an
//! unknown picture shares the features of a class but not its label), so their sum beats each:
//! benches/unknown_scores.py and docs/performance.md have the figures.
//!
//! **The threshold** is the score that keeps `keep` of the validation pictures (`--keep`,
//! default 0.95): a picture scoring below it is answered as unknown.
//!
//! Stored as `unknown.safetensors` in the run folder (`score_weight` `[C, D]`, `score_bias`
//! `[C]`, `centre` `[D]`, `whiten` `[D, D]`, `means` `[C, D]`, f32) with the constants in
//! `head.json`'s `unknown` ([`UnknownCard`]): `D² + 2CD + C + D` floats, 6.6 MB for
//! EfficientNet-Lite0 (D = 1,280) and 16.9 MB for ResNet-50 (D = 2,048), whatever the number
//! of training pictures; no bank of training features is kept.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::LinearHead;
use crate::error::{Error, Result};

/// The share of in-class pictures kept by default (`--keep`).
pub const DEFAULT_KEEP: f64 = 0.95;
/// How far the covariance is shrunk towards its mean variance times the identity.
pub const SHRINKAGE: f64 = 0.1;
/// The file of the score's tensors in a run folder.
pub const UNKNOWN_FILE: &str = "unknown.safetensors";
/// What [`UnknownCard::method`] says.
pub const METHOD: &str = "energy+mahalanobis";

/// Checks a `--keep` value: a share in (0, 1].
pub fn check_keep(keep: f64) -> Result<()> {
    if keep.is_finite() && keep > 0.0 && keep <= 1.0 {
        Ok(())
    } else {
        Err(Error::usage("--keep", format!("{keep} is not a share in (0, 1]; e.g. 0.95 keeps 95% of in-class pictures")))
    }
}

/// Mean and standard deviation of one part of the score over the validation pictures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Standardise {
    /// Mean.
    pub mean: f64,
    /// Standard deviation (at least 1e-6).
    pub std: f64,
}

/// `head.json`'s `unknown`: the score's constants and its threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownCard {
    /// Always [`METHOD`].
    pub method: String,
    /// The tensors' file in the run folder ([`UNKNOWN_FILE`]).
    pub file: String,
    /// The share of validation pictures kept at the threshold (`--keep`).
    pub keep: f64,
    /// A picture whose score is below this is unknown.
    pub threshold: f64,
    /// The energy part's standardisation.
    pub energy: Standardise,
    /// The Mahalanobis part's standardisation.
    pub mahalanobis: Standardise,
    /// Covariance shrinkage ([`SHRINKAGE`]).
    pub shrinkage: f64,
    /// Training pictures the class means and covariance come from.
    pub fit_pictures: usize,
    /// Validation pictures the threshold was chosen on.
    pub validation_pictures: usize,
    /// Share of validation pictures actually kept (at least `keep`; ties and few pictures make
    /// it more).
    pub validation_kept: f64,
}

/// The in-class score of a run: see the module documentation.
#[derive(Debug)]
pub struct UnknownScore {
    /// Its constants and threshold.
    pub card: UnknownCard,
    /// The score head's weight `[C, D]`.
    pub score_weight: Tensor,
    /// The score head's bias `[C]`.
    pub score_bias: Tensor,
    /// The training features' mean `[D]`.
    pub centre: Tensor,
    /// The whitening matrix `[D, D]`.
    pub whiten: Tensor,
    /// The whitened class means `[C, D]`.
    pub means: Tensor,
}

/// What a score says of one picture.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Verdict {
    /// Its score (higher = more like the training classes).
    pub score: f64,
    /// Below the threshold.
    pub unknown: bool,
}

/// The value at which `keep` of `scores` are at or above it, and the share that are.
pub fn threshold_keeping(scores: &[f64], keep: f64) -> (f64, f64) {
    let mut s: Vec<f64> = scores.iter().copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() {
        return (f64::NEG_INFINITY, 1.0);
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let drop = (((1.0 - keep) * n as f64) + 1e-9).floor() as usize;
    let t = s[drop.min(n - 1)];
    let kept = s.iter().filter(|&&v| v >= t).count() as f64 / n as f64;
    (t, kept)
}

fn stats(v: &[f64]) -> Standardise {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Standardise { mean, std: var.sqrt().max(1e-6) }
}

fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu).reshape([-1])).map_err(Error::Torch)
}

impl UnknownScore {
    /// Fits the score on `fit` (training pictures' features `[P, D]`, labels `[P]`, the class
    /// count `classes`) with `score_head` (trained without the validation pictures), and
    /// chooses the threshold that keeps `keep` of `validation` (features `[V, D]`).
    pub fn fit(fit: &Tensor, labels: &Tensor, classes: usize, validation: &Tensor, score_head: &LinearHead, keep: f64) -> Result<UnknownScore> {
        check_keep(keep)?;
        let v = validation.size()[0];
        if v == 0 {
            return Err(Error::usage("--val-fraction", "the unknown threshold is chosen on the validation split, which is empty"));
        }
        tch::no_grad(|| {
            let x = fit.to_kind(Kind::Double).to_device(Device::Cpu);
            let y = labels.to_kind(Kind::Int64).to_device(Device::Cpu);
            let d = x.size()[1];
            let centre = x.mean_dim(0, false, Kind::Double);
            let mut means = Vec::with_capacity(classes);
            let mut centred = Vec::with_capacity(classes);
            for c in 0..classes as i64 {
                let rows = x.index_select(0, &y.eq(c).nonzero().squeeze_dim(1));
                let mean = if rows.size()[0] > 0 { rows.mean_dim(0, false, Kind::Double) } else { centre.shallow_clone() };
                centred.push(&rows - mean.unsqueeze(0));
                means.push(mean);
            }
            let within = Tensor::cat(&centred, 0);
            let cov = within.tr().matmul(&within) / (within.size()[0].max(1) as f64);
            let mean_var = cov.diagonal(0, 0, 1).mean(Kind::Double);
            let cov = &cov * (1.0 - SHRINKAGE) + Tensor::eye(d, (Kind::Double, Device::Cpu)) * (mean_var * SHRINKAGE).clamp_min(1e-12);
            let (eigenvalues, eigenvectors) = cov.linalg_eigh("L");
            let whiten = eigenvectors * eigenvalues.clamp_min(1e-12).rsqrt().unsqueeze(0);
            let means = (Tensor::stack(&means, 0) - centre.unsqueeze(0)).matmul(&whiten);
            let mut score = UnknownScore {
                card: UnknownCard {
                    method: METHOD.into(),
                    file: UNKNOWN_FILE.into(),
                    keep,
                    threshold: 0.0,
                    energy: Standardise { mean: 0.0, std: 1.0 },
                    mahalanobis: Standardise { mean: 0.0, std: 1.0 },
                    shrinkage: SHRINKAGE,
                    fit_pictures: x.size()[0] as usize,
                    validation_pictures: v as usize,
                    validation_kept: 1.0,
                },
                score_weight: score_head.weight.to_kind(Kind::Float).to_device(Device::Cpu),
                score_bias: score_head.bias.to_kind(Kind::Float).to_device(Device::Cpu),
                centre: centre.to_kind(Kind::Float),
                whiten: whiten.to_kind(Kind::Float),
                means: means.to_kind(Kind::Float),
            };
            let (energy, maha) = score.parts(validation);
            score.card.energy = stats(&to_vec(&energy)?);
            score.card.mahalanobis = stats(&to_vec(&maha)?);
            let s = to_vec(&score.scores(validation))?;
            let (t, kept) = threshold_keeping(&s, keep);
            score.card.threshold = t;
            score.card.validation_kept = kept;
            Ok(score)
        })
    }

    /// The energy and Mahalanobis parts of `features` `[N, D]`, each `[N]` f64 (computed in
    /// f64 from the f32 features and constants, as the exports compute them).
    pub fn parts(&self, features: &Tensor) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let x = features.to_kind(Kind::Float).to_device(Device::Cpu).to_kind(Kind::Double);
            let dbl = |t: &Tensor| t.to_kind(Kind::Double);
            let energy = (x.matmul(&dbl(&self.score_weight).tr()) + dbl(&self.score_bias)).logsumexp([-1], false);
            let z = (&x - dbl(&self.centre).unsqueeze(0)).matmul(&dbl(&self.whiten));
            let means = dbl(&self.means);
            let (c, d) = (means.size()[0], means.size()[1]);
            // The differences themselves, not ‖z‖² - 2 z·m + ‖m‖², which cancels; in blocks of
            // rows so that `[rows, C, D]` stays under 8 M doubles.
            let rows = (8_388_608 / (c * d).max(1)).max(1);
            let n = z.size()[0];
            let mut nearest = Vec::new();
            let mut start = 0;
            while start < n {
                let len = rows.min(n - start);
                let block = z.narrow(0, start, len);
                let d2 = (block.unsqueeze(1) - means.unsqueeze(0)).square().sum_dim_intlist([-1i64].as_slice(), false, Kind::Double);
                nearest.push(d2.amin([-1i64].as_slice(), false));
                start += len;
            }
            let nearest = if nearest.is_empty() { Tensor::zeros([0], (Kind::Double, Device::Cpu)) } else { Tensor::cat(&nearest, 0) };
            (energy, nearest * (-1.0 / d as f64))
        })
    }

    /// [`UnknownScore::scores`] as one expression of `features` (no blocks, nothing that
    /// depends on the number of rows), for tracing into an export: `[N, C, D]` doubles at once.
    pub fn scores_traceable(&self, features: &Tensor) -> Tensor {
        let x = features.to_kind(Kind::Double);
        let dbl = |t: &Tensor| t.to_kind(Kind::Double);
        let energy = (x.matmul(&dbl(&self.score_weight).tr()) + dbl(&self.score_bias)).logsumexp([-1], false);
        let z = (&x - dbl(&self.centre).unsqueeze(0)).matmul(&dbl(&self.whiten));
        let means = dbl(&self.means);
        let d = means.size()[1];
        let d2 = (z.unsqueeze(1) - means.unsqueeze(0)).square().sum_dim_intlist([-1i64].as_slice(), false, Kind::Double);
        let maha = d2.amin([-1i64].as_slice(), false) * (-1.0 / d as f64);
        let (es, ms) = (self.card.energy, self.card.mahalanobis);
        ((energy - es.mean) / es.std + (maha - ms.mean) / ms.std).to_kind(Kind::Float)
    }

    /// The score of each of `features` `[N, D]`: `[N]` f32.
    pub fn scores(&self, features: &Tensor) -> Tensor {
        let (e, m) = self.parts(features);
        let (es, ms) = (self.card.energy, self.card.mahalanobis);
        ((e - es.mean) / es.std + (m - ms.mean) / ms.std).to_kind(Kind::Float)
    }

    /// Score and verdict of each of `features` `[N, D]`.
    pub fn verdicts(&self, features: &Tensor) -> Result<Vec<Verdict>> {
        Ok(to_vec(&self.scores(features))?.into_iter().map(|score| Verdict { score, unknown: score < self.card.threshold }).collect())
    }

    /// Writes the tensors to `path` (safetensors, atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_safetensors(
            path,
            &[
                ("score_weight", &self.score_weight),
                ("score_bias", &self.score_bias),
                ("centre", &self.centre),
                ("whiten", &self.whiten),
                ("means", &self.means),
            ],
        )
    }

    /// Reads the tensors of `card` from `path`, for a head of `classes` classes on features of
    /// width `width`, checking names, shapes and dtypes.
    pub fn load(path: &Path, card: UnknownCard, classes: i64, width: i64) -> Result<UnknownScore> {
        let tensors = Tensor::read_safetensors(path).map_err(|e| Error::bad_input(path, format!("cannot read as safetensors ({e})")))?;
        let get = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let t = tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| Error::bad_input(path, format!("has no '{name}' tensor; retrain the run to write it again")))?;
            if t.size() != shape || t.kind() != Kind::Float {
                return Err(Error::bad_input(path, format!("tensor '{name}' is {:?} {:?}, head.json implies f32 {shape:?}", t.kind(), t.size())));
            }
            Ok(t)
        };
        Ok(UnknownScore {
            score_weight: get("score_weight", &[classes, width])?,
            score_bias: get("score_bias", &[classes])?,
            centre: get("centre", &[width])?,
            whiten: get("whiten", &[width, width])?,
            means: get("means", &[classes, width])?,
            card,
        })
    }
}

/// AUROC of telling `unknown` apart from `in_class` by a score (higher = in-class): the
/// probability that an in-class picture scores above an unknown one, ties counting half.
pub fn auroc(in_class: &[f64], unknown: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = in_class.iter().map(|&s| (s, true)).chain(unknown.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann-Whitney U with mid-ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0;
        rank_sum += all[i..j].iter().filter(|x| x.1).count() as f64 * mid;
        i = j;
    }
    let (p, n) = (in_class.len() as f64, unknown.len() as f64);
    if p == 0.0 || n == 0.0 {
        return f64::NAN;
    }
    (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
}

/// FPR at 95% kept (FPR95): the share of `unknown` pictures kept by the threshold that keeps
/// 95% of `in_class`.
pub fn fpr_at_95(in_class: &[f64], unknown: &[f64]) -> f64 {
    let (t, _) = threshold_keeping(in_class, 0.95);
    if unknown.is_empty() {
        return f64::NAN;
    }
    unknown.iter().filter(|&&s| s >= t).count() as f64 / unknown.len() as f64
}

/// What the threshold does on pictures of the trained classes: the share kept and the
/// accuracy on them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Pictures judged.
    pub pictures: usize,
    /// Share answered with a class (score at or above the threshold).
    pub kept: f64,
    /// Accuracy on the pictures kept (NaN when none is).
    pub accuracy_kept: f64,
    /// Accuracy on every picture, as without the threshold.
    pub accuracy_all: f64,
}

/// [`Coverage`] of pictures with `scores` and whether the head was `correct` on each.
pub fn coverage(scores: &[f64], correct: &[bool], threshold: f64) -> Coverage {
    let n = scores.len().min(correct.len());
    let kept: Vec<usize> = (0..n).filter(|&i| scores[i] >= threshold).collect();
    let right = kept.iter().filter(|&&i| correct[i]).count();
    Coverage {
        pictures: n,
        kept: if n == 0 { f64::NAN } else { kept.len() as f64 / n as f64 },
        accuracy_kept: if kept.is_empty() { f64::NAN } else { right as f64 / kept.len() as f64 },
        accuracy_all: if n == 0 { f64::NAN } else { correct[..n].iter().filter(|&&c| c).count() as f64 / n as f64 },
    }
}

/// Accuracy against share kept as the threshold rises: `(kept, accuracy on the kept)` after
/// each picture, the highest-scoring first (for `coverage.png`).
pub fn coverage_curve(scores: &[f64], correct: &[bool]) -> Vec<(f64, f64)> {
    let n = scores.len().min(correct.len());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut right = 0usize;
    order
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            right += correct[p] as usize;
            ((i + 1) as f64 / n as f64, right as f64 / (i + 1) as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_keeps_the_share_asked() {
        let s: Vec<f64> = (0..100).map(f64::from).collect();
        assert_eq!(threshold_keeping(&s, 0.95), (5.0, 0.95));
        assert_eq!(threshold_keeping(&s, 1.0), (0.0, 1.0));
        let (_, kept) = threshold_keeping(&s[..7], 0.5);
        assert!(kept >= 0.5);
    }

    #[test]
    fn auroc_and_fpr95_of_known_orders() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auroc(&[1.0], &[1.0]), 0.5);
        let inc: Vec<f64> = (0..100).map(f64::from).collect();
        assert_eq!(fpr_at_95(&inc, &[4.0, 5.0, 50.0, -1.0]), 0.5);
    }

    #[test]
    fn keep_outside_zero_one_is_refused() {
        for k in [0.0, -0.1, 1.01, f64::NAN] {
            assert!(check_keep(k).is_err(), "{k}");
        }
        assert!(check_keep(1.0).is_ok() && check_keep(0.5).is_ok());
    }

    #[test]
    fn far_pictures_score_lower_and_the_threshold_keeps_the_validation_share() {
        tch::manual_seed(0);
        let d = 6;
        let centres = Tensor::from_slice(&[5.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0]).view([2, d]);
        let draw = |n: i64| {
            let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(2);
            (centres.index_select(0, &y) + Tensor::randn([n, d], (Kind::Float, Device::Cpu)), y)
        };
        let (x, y) = draw(400);
        let (xv, _) = draw(400);
        let head = LinearHead { weight: centres.shallow_clone(), bias: Tensor::zeros([2], (Kind::Float, Device::Cpu)) };
        let s = UnknownScore::fit(&x, &y, 2, &xv, &head, 0.9).unwrap();
        assert!((s.card.validation_kept - 0.9).abs() < 0.01, "{:?}", s.card);
        let far = Tensor::randn([50, d], (Kind::Float, Device::Cpu)) + Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0, 12.0, 0.0]).unsqueeze(0);
        let v = s.verdicts(&far).unwrap();
        assert!(v.iter().filter(|v| v.unknown).count() >= 45, "far pictures called known");
        let (xt, _) = draw(400);
        let kept = s.verdicts(&xt).unwrap().iter().filter(|v| !v.unknown).count() as f64 / 400.0;
        assert!((kept - 0.9).abs() < 0.05, "kept {kept} of fresh in-class pictures");
    }
}

//! Out-of-fold probabilities: the training pictures are dealt into K folds (stratified,
//! seeded, by picture), and K heads are trained, each on the other folds' pictures, to predict
//! the fold it never saw. With `--augment`, every view of a picture sits in its picture's fold,
//! so no view of a picture trains the head that judges it.
//!
//! Each fold head is trained as the run's head was, at the run's chosen L2 penalty
//! (`report.l2` in head.json, not searched again: a fold has 1 - 1/K of the rows the run chose
//! it on), its temperature fitted on a validation share of its own pictures, then refit on all
//! of them ([`train_head_l2`]); a run trained with a fixed weight decay gets fold heads trained
//! with the same settings.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::data::views::average_views;
use crate::error::{Error, Result};
use crate::head::{train_head_l2, train_head_views, TrainConfig, ViewLayout};
use crate::progress::{Progress, Unit};

/// The fold (`0..k`) of each picture: each class's pictures shuffled (seeded) and dealt in
/// turn, so that every fold has its share of every class.
pub fn stratified_folds(labels: &[i64], k: usize, seed: u64) -> Vec<usize> {
    let mut by_class: std::collections::BTreeMap<i64, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fold = vec![0; labels.len()];
    let mut next = 0;
    for members in by_class.values_mut() {
        members.shuffle(&mut rng);
        for &i in members.iter() {
            fold[i] = next % k;
            next += 1;
        }
    }
    fold
}

/// How the fold heads are trained.
#[derive(Debug, Clone)]
pub struct FoldSettings {
    /// Folds (K).
    pub folds: usize,
    /// The run's training settings (head.json `training`).
    pub train: TrainConfig,
    /// The run's chosen L2 penalty (head.json `report.l2`); `None` for a run trained with a
    /// fixed weight decay.
    pub l2: Option<f64>,
    /// Rows a picture, and the views a picture is judged on (see [`ViewLayout`]).
    pub layout: ViewLayout,
    /// Seed of the folds.
    pub seed: u64,
}

/// Out-of-fold class probabilities `[pictures, classes]` of the training pictures, whose
/// features are `x` (`pictures · views` rows, view `v` of picture `p` at row `p · views + v`)
/// and labels `labels` (one a picture). A held-out picture is judged on the mean of its views
/// `layout.validate_on`.
pub fn out_of_fold(x: &Tensor, labels: &[i64], classes: usize, s: &FoldSettings, progress: &Progress) -> Result<Tensor> {
    let v = s.layout.views.max(1);
    let pictures = labels.len();
    if x.size()[0] as usize != pictures * v {
        return Err(Error::usage("--augment", format!("{} feature rows are not {pictures} pictures of {v} views", x.size()[0])));
    }
    if s.folds < 2 || s.folds > pictures {
        return Err(Error::usage("--folds", format!("{} folds of {pictures} training pictures: give 2 to {pictures}", s.folds)));
    }
    let fold = stratified_folds(labels, s.folds, s.seed);
    let labels_rows: Vec<i64> = labels.iter().flat_map(|&l| std::iter::repeat_n(l, v)).collect();
    let y = Tensor::from_slice(&labels_rows);
    let mut probs = Tensor::zeros([pictures as i64, classes as i64], (Kind::Float, x.device()));
    let mut task = progress.task("fold heads", s.folds as u64, Unit::Heads);
    for f in 0..s.folds {
        let (held, kept): (Vec<usize>, Vec<usize>) = (0..pictures).partition(|&p| fold[p] == f);
        let rows = |pictures: &[usize]| Tensor::from_slice(&pictures.iter().flat_map(|&p| (p * v..(p + 1) * v).map(|r| r as i64)).collect::<Vec<_>>());
        let train_rows = rows(&kept);
        let (xt, yt) = (x.index_select(0, &train_rows), y.index_select(0, &train_rows));
        let quiet = Progress::hidden();
        let (head, _) = match s.l2 {
            Some(l2) => train_head_l2(&xt, &yt, classes, &s.train, &s.layout, l2, &quiet)?,
            None => train_head_views(&xt, &yt, classes, &s.train, &s.layout, &quiet)?,
        };
        drop(xt);
        let judged = average_views(&x.index_select(0, &rows(&held)), v, &s.layout.validate_on);
        let held_idx = Tensor::from_slice(&held.iter().map(|&p| p as i64).collect::<Vec<_>>());
        let _ = probs.index_copy_(0, &held_idx, &head.probabilities(&judged));
        task.set_message(format!("fold {} of {}: {} pictures judged", f + 1, s.folds, held.len()));
        task.inc(1);
    }
    task.finish();
    Ok(probs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn folds_are_stratified_and_cover_every_picture() {
        let labels: Vec<i64> = (0..103).map(|i| (i % 4) as i64).collect();
        let fold = stratified_folds(&labels, 5, 0);
        for f in 0..5 {
            for c in 0..4 {
                let n = (0..103).filter(|&i| fold[i] == f && labels[i] == c).count();
                assert!((4..=7).contains(&n), "fold {f} has {n} of class {c}");
            }
        }
        assert_eq!(fold, stratified_folds(&labels, 5, 0));
        assert_ne!(fold, stratified_folds(&labels, 5, 1));
    }

    fn randn(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect()
    }

    /// Random points with random labels, each repeated as its three views: a head that trained
    /// on a view of a picture has memorised its label. Folds by picture judge every picture
    /// with a head that never saw it (accuracy near chance); folds by row (the control) would
    /// not.
    #[test]
    fn views_of_a_picture_stay_in_its_fold() {
        let (pictures, views, d) = (240usize, 3usize, 256usize);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x = Tensor::from_slice(&randn(&mut rng, pictures * d)).view([pictures as i64, d as i64]).repeat_interleave_self_int(views as i64, 0, None);
        let labels: Vec<i64> = (0..pictures).map(|_| rng.gen_range(0..2)).collect();
        let accuracy = |probs: &Tensor, labels: &[i64]| {
            let pred: Vec<i64> = Vec::try_from(probs.argmax(-1, false)).unwrap();
            pred.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / labels.len() as f64
        };
        let train = TrainConfig::default();
        let by_picture = FoldSettings { folds: 5, train: train.clone(), l2: Some(1e-4), layout: ViewLayout { views, validate_on: vec![0] }, seed: 0 };
        let probs = out_of_fold(&x, &labels, 2, &by_picture, &Progress::hidden()).unwrap();
        assert_eq!(probs.size(), [pictures as i64, 2]);
        let picture_level = accuracy(&probs, &labels);
        let row_labels: Vec<i64> = labels.iter().flat_map(|&l| [l; 3]).collect();
        let by_row = FoldSettings { layout: ViewLayout::single(), ..by_picture };
        let row_level = accuracy(&out_of_fold(&x, &row_labels, 2, &by_row, &Progress::hidden()).unwrap(), &row_labels);
        println!("out-of-fold accuracy on random labels: folds by picture {picture_level:.3}, by row {row_level:.3}");
        assert!(row_level > 0.9, "the control: a row's other views were trained on ({row_level})");
        assert!(picture_level < 0.65, "a held-out picture's views were trained on ({picture_level})");
    }

    /// Out-of-fold probabilities of learnable classes predict about as well as a head sees
    /// its own validation split, and bad fold counts name the flag.
    #[test]
    fn out_of_fold_predictions_are_accurate_and_bad_fold_counts_are_refused() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (n, d) = (300usize, 16usize);
        let centres = randn(&mut rng, 3 * d);
        let labels: Vec<i64> = (0..n).map(|i| (i % 3) as i64).collect();
        let noise = randn(&mut rng, n * d);
        let x: Vec<f32> = (0..n * d).map(|i| centres[(labels[i / d] as usize) * d + i % d] * 3.0 + noise[i]).collect();
        let x = Tensor::from_slice(&x).view([n as i64, d as i64]);
        let s = FoldSettings { folds: 5, train: TrainConfig::default(), l2: Some(1e-3), layout: ViewLayout::single(), seed: 0 };
        let probs = out_of_fold(&x, &labels, 3, &s, &Progress::hidden()).unwrap();
        let pred: Vec<i64> = Vec::try_from(probs.argmax(-1, false)).unwrap();
        let acc = pred.iter().zip(&labels).filter(|(a, b)| a == b).count() as f64 / n as f64;
        assert!(acc > 0.95, "{acc}");
        let sums: Vec<f32> = Vec::try_from(probs.sum_dim_intlist(1, false, Kind::Float)).unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-4));
        let fixed = FoldSettings { l2: None, train: TrainConfig { weight_decay_auto: false, epochs: 5, ..TrainConfig::default() }, ..s.clone() };
        assert!(out_of_fold(&x, &labels, 3, &fixed, &Progress::hidden()).is_ok());
        for folds in [1, n + 1] {
            let err = out_of_fold(&x, &labels, 3, &FoldSettings { folds, ..s.clone() }, &Progress::hidden()).unwrap_err();
            assert!(err.to_string().contains("--folds"), "{err}");
        }
    }
}

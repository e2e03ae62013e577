//! `lastlayer review`: what a run's classifier gets wrong, and why, from the cached features
//! alone (no forward pass):
//!
//! - **mistakes**: the test pictures the run's head gets wrong, the most confident first;
//! - **label issues** ([`confident`]): pictures whose given label is likely wrong, by confident
//!   learning on out-of-fold probabilities ([`folds`]) for the training pictures and on the
//!   run's head's for the test pictures, with an estimate of how many labels of each class
//!   are wrong;
//! - **duplicates** ([`similar`]): test pictures with a copy in train, and copies within a
//!   split: the same bytes (content keys), or features whose cosine similarity reaches a
//!   threshold ([`DEFAULT_MIN_SIMILARITY`]).
//!
//! [`review`] takes the features, labels, names and content keys of both splits and returns
//! the [`Review`] (`--json` prints it: exactly `mistakes`, `label_issues`, `duplicates` and
//! `summary`); [`page`] writes it as a self-contained HTML page with thumbnails.

pub mod confident;
pub mod folds;
pub mod page;
pub mod similar;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::data::content::ContentKey;
use crate::data::views::average_views;
use crate::error::{Error, Result};
use crate::head::{LinearHead, TrainConfig, ViewLayout};
use crate::progress::Progress;
pub use confident::RankBy;

/// The cosine similarity (of whitened features, see [`similar`]) from which two pictures count
/// as near-duplicates. Chosen on the planted-fault set (test pictures copied into train as JPEG
/// at quality 70, shifted by one pixel) with two random-weight backbones and the real
/// EfficientNet-Lite0 weights: see docs/performance.md, "review: the duplicate threshold".
pub const DEFAULT_MIN_SIMILARITY: f64 = 0.3;
/// The cosine similarity from which a near-duplicate pair counts as a **copy** (the same
/// photograph: re-encoded, resized, shifted by a pixel) rather than a **look-alike** (another
/// photograph of a similar scene). On the planted-fault set (tests/review.rs: real
/// EfficientNet-Lite0 at 96 px, 20 test pictures copied into train as JPEG at quality 70
/// shifted by a pixel, 5 exact copies) the planted JPEG copies score 0.44-0.85 and the other
/// test-train pairs 0.31-0.68; at 0.6 the copy tier held 17 test-train pairs, 16 of them
/// planted (precision 0.94, a lower bound: the one other pair may be a real copy in CIFAR-10),
/// and 16 of the 25 planted copies (recall 0.64); at 0.8 it held 6, all planted, but missed
/// 19. On full CIFAR-10 at 224 px, pairs at 0.83-0.88 were plainly the same photo and most at
/// 0.31 only alike. The headline count (`test_pictures_with_train_copy`) is on copies only.
pub const COPY_SIMILARITY: f64 = 0.6;
/// Below this out-of-fold accuracy, the label issues come with a warning: confident learning
/// trusts the out-of-fold probabilities, and a weak head flags pictures it merely gets wrong.
pub const TRUSTED_OUT_OF_FOLD_ACCURACY: f64 = 0.8;
/// Default number of folds.
pub const DEFAULT_FOLDS: usize = 5;
/// The most similar partners kept for each picture (a picture copied many times lists these).
pub const PARTNERS_KEPT: usize = 5;

/// A wrong prediction on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mistake {
    /// The picture, as a user finds it (see [`crate::data::Split::picture_name`]).
    pub picture: String,
    /// Its given class.
    pub given: String,
    /// The class predicted.
    pub predicted: String,
    /// The probability of the predicted class.
    pub probability: f64,
    /// Its row in the test split.
    #[serde(skip)]
    pub row: usize,
}

/// A picture whose given label is likely wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelIssue {
    /// The picture.
    pub picture: String,
    /// `train` or `test`.
    pub split: String,
    /// Its given class.
    pub given: String,
    /// The likeliest class.
    pub suggested: String,
    /// Label quality ([`RankBy`]): lower is likelier wrong.
    pub score: f64,
    /// Its picture index in its split.
    #[serde(skip)]
    pub row: usize,
}

/// Two pictures that are copies of each other. For a test picture with a copy in train,
/// `test` and `train` name them; for a pair within one split, both are of that split (`train`
/// the earlier picture, `test` the later), and [`DuplicateCounts`] says how many of each kind
/// the list holds (test-train pairs first, then pairs within train, then within test).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Duplicate {
    /// The test picture (for a pair within a split, the later picture).
    pub test: String,
    /// The training picture (for a pair within a split, the earlier picture).
    pub train: String,
    /// Cosine similarity of their whitened features.
    pub similarity: f64,
    /// The same bytes (the same content key).
    pub exact: bool,
    /// `copy` (the same bytes, or similarity at least [`COPY_SIMILARITY`]) or `look_alike`.
    #[serde(default)]
    pub tier: Tier,
    /// Which kind of pair.
    #[serde(skip)]
    pub kind: PairKind,
    /// The two pictures' indices in their splits: `test`'s, then `train`'s.
    #[serde(skip)]
    pub rows: (usize, usize),
}

/// How alike a duplicate pair is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// The same bytes, or similarity at least [`COPY_SIMILARITY`]: the same photograph.
    Copy,
    /// Above `--min-similarity` only: similar pictures, most of them other photographs.
    #[default]
    LookAlike,
}

impl Tier {
    /// The tier of a pair with `similarity`, `exact` when its bytes are the same.
    pub fn of(similarity: f64, exact: bool) -> Tier {
        if exact || similarity >= COPY_SIMILARITY {
            Tier::Copy
        } else {
            Tier::LookAlike
        }
    }
}

/// Where a duplicate pair's pictures are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairKind {
    /// A test picture and a training picture.
    #[default]
    TestTrain,
    /// Two training pictures.
    WithinTrain,
    /// Two test pictures.
    WithinTest,
}

/// Counts per split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SplitCounts {
    /// In train.
    pub train: u64,
    /// In test.
    pub test: u64,
}

/// The duplicates found.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DuplicateCounts {
    /// Test-train pairs (the first entries of `duplicates`).
    pub test_train: u64,
    /// Of them, the same bytes.
    pub test_train_exact: u64,
    /// Pairs within train (next in `duplicates`).
    pub within_train: u64,
    /// Pairs within test (last in `duplicates`).
    pub within_test: u64,
    /// Test pictures with at least one duplicate in train (copies and look-alikes).
    pub test_pictures_with_train_duplicate: u64,
    /// Their share of the test pictures.
    pub test_share: f64,
    /// Test pictures with a copy in train (tier `copy`): the headline count.
    #[serde(default)]
    pub test_pictures_with_train_copy: u64,
    /// Their share of the test pictures.
    #[serde(default)]
    pub test_copy_share: f64,
    /// Test-train pairs of the `copy` tier.
    #[serde(default)]
    pub test_train_copies: u64,
    /// The similarity from which a pair is a copy ([`COPY_SIMILARITY`]).
    #[serde(default)]
    pub copy_similarity: f64,
    /// The similarity threshold used.
    pub min_similarity: f64,
}

/// One class's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassSummary {
    /// Class name.
    pub class: String,
    /// Training pictures labelled with it.
    pub train: u64,
    /// Test pictures labelled with it.
    pub test: u64,
    /// Its test pictures predicted wrong.
    pub mistakes: u64,
    /// Its pictures flagged as label issues.
    pub label_issues: SplitCounts,
    /// Confident learning's estimate of its pictures whose label is wrong.
    pub estimated_wrong_labels: SplitCounts,
    /// Its test pictures with a duplicate in train.
    pub test_with_train_duplicate: u64,
    /// Its recall on test: the share of its test pictures predicted right.
    #[serde(default)]
    pub recall: f64,
}

/// Seconds spent in each part.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Seconds {
    /// Finding (or extracting) and loading the features, names and content keys.
    pub features: f64,
    /// The fold heads.
    pub folds: f64,
    /// Mistakes and confident learning.
    pub label_issues: f64,
    /// Exact and near duplicates.
    pub duplicates: f64,
    /// Thumbnails and the page.
    pub page: f64,
    /// All of it.
    pub total: f64,
}

/// Counts per class and overall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The backbone.
    pub model: String,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Training pictures (not views).
    pub train_pictures: u64,
    /// Test pictures.
    pub test_pictures: u64,
    /// The run's head's test accuracy.
    pub test_accuracy: f64,
    /// Its balanced accuracy (mean per-class recall) on test.
    #[serde(default)]
    pub test_balanced_accuracy: f64,
    /// Its macro F1 on test.
    #[serde(default)]
    pub test_macro_f1: f64,
    /// The fold heads' accuracy on the pictures they did not see.
    pub out_of_fold_accuracy: f64,
    /// Set when the out-of-fold accuracy is below [`TRUSTED_OUT_OF_FOLD_ACCURACY`]: why the
    /// label issues are not to be trusted yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_issues_warning: Option<String>,
    /// Folds (K).
    pub folds: usize,
    /// The fold heads' L2 penalty (the run's; none for a fixed weight decay).
    pub l2: Option<f64>,
    /// How label issues are ranked.
    pub rank_by: RankBy,
    /// Test pictures predicted wrong.
    pub mistakes: u64,
    /// Pictures flagged as label issues.
    pub label_issues: SplitCounts,
    /// Confident learning's estimate of wrong labels.
    pub estimated_wrong_labels: SplitCounts,
    /// Duplicates.
    pub duplicates: DuplicateCounts,
    /// Per class.
    pub per_class: Vec<ClassSummary>,
    /// `confusion[given][predicted]` on test.
    pub confusion: Vec<Vec<u64>>,
    /// Where the time went.
    pub seconds: Seconds,
    /// The page written (`RUN_DIR/review.html`), if any.
    pub page: Option<std::path::PathBuf>,
}

/// Everything `review` found: `--json` prints exactly these four keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// Wrong test predictions, the most confident first.
    pub mistakes: Vec<Mistake>,
    /// Likely wrong labels, the likeliest first.
    pub label_issues: Vec<LabelIssue>,
    /// Copies: test-train pairs, then pairs within train, then within test, each the most
    /// similar first.
    pub duplicates: Vec<Duplicate>,
    /// Counts.
    pub summary: Summary,
    /// The test pictures of each confusion cell, `[given][predicted]`, the most confident
    /// first (for the page).
    #[serde(skip)]
    pub cells: Vec<Vec<Vec<usize>>>,
    /// The test pictures' names (for the page).
    #[serde(skip)]
    pub test_names: Vec<String>,
}

/// One split's inputs.
#[derive(Debug)]
pub struct SplitData {
    /// Features, `pictures · views` rows (view `v` of picture `p` at row `p · views + v`).
    pub features: Tensor,
    /// Rows a picture (`--augment` on train; 1 otherwise).
    pub views: usize,
    /// Given label of each picture.
    pub labels: Vec<i64>,
    /// Each picture's name, as a user finds it.
    pub names: Vec<String>,
    /// Each picture's content key (empty: no exact-duplicate search).
    pub keys: Vec<ContentKey>,
}

impl SplitData {
    /// Pictures.
    pub fn pictures(&self) -> usize {
        self.labels.len()
    }

    fn check(&self, split: &str, width: i64) -> Result<()> {
        let rows = self.features.size()[0] as usize;
        let ok = self.views >= 1
            && rows == self.pictures() * self.views
            && self.names.len() == self.pictures()
            && (self.keys.is_empty() || self.keys.len() == self.pictures())
            && self.features.size()[1] == width;
        if !ok {
            return Err(Error::usage(
                "--data",
                format!(
                    "the {split} features ({rows} rows of width {}) do not match its {} pictures of {} views (head width {width}); delete the run's cache entries and run review again",
                    self.features.size()[1],
                    self.pictures(),
                    self.views
                ),
            ));
        }
        Ok(())
    }

    /// Each picture's features: view 0 (the picture itself).
    fn picture_rows(&self) -> Tensor {
        if self.views == 1 {
            self.features.shallow_clone()
        } else {
            average_views(&self.features, self.views, &[0])
        }
    }
}

/// How to review.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Folds for the out-of-fold probabilities.
    pub folds: usize,
    /// Label-issue ranking.
    pub rank_by: RankBy,
    /// Near-duplicate threshold (cosine similarity of whitened features).
    pub min_similarity: f64,
    /// The run's training settings (for the fold heads).
    pub train: TrainConfig,
    /// The run's chosen L2 penalty.
    pub l2: Option<f64>,
    /// The views a training picture is judged on (as the run's validation judged them).
    pub judged_views: Vec<usize>,
    /// Seed of the folds.
    pub seed: u64,
}

impl Settings {
    /// Checks the values, naming the flag at fault.
    pub fn validate(&self) -> Result<()> {
        if self.folds < 2 {
            return Err(Error::usage("--folds", format!("{} is too few; give at least 2 (5 is the default)", self.folds)));
        }
        if !(self.min_similarity.is_finite() && (-1.0..=1.0).contains(&self.min_similarity)) {
            return Err(Error::usage("--min-similarity", format!("{} is not a cosine similarity in [-1, 1]", self.min_similarity)));
        }
        Ok(())
    }
}

fn argmax(p: &[f32]) -> usize {
    p.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (k, &q)| if q > b.1 { (k, q) } else { b }).0
}

/// Reviews a run: `head` is its head, `train` and `test` its splits' features and pictures.
pub fn review(model: &str, classes: &[String], head: &LinearHead, train: &SplitData, test: &SplitData, s: &Settings, progress: &Progress) -> Result<Review> {
    s.validate()?;
    let width = head.feature_width();
    train.check("train", width)?;
    test.check("test", width)?;
    if test.views != 1 {
        return Err(Error::usage("--tta", "test features must be one row a picture"));
    }
    let k = classes.len();
    for (split, d) in [("train", train), ("test", test)] {
        if let Some(&bad) = d.labels.iter().find(|&&l| l < 0 || l as usize >= k) {
            return Err(Error::usage("--data", format!("a {split} label {bad} is outside the run's {k} classes")));
        }
    }
    let mut seconds = Seconds::default();

    // Out-of-fold probabilities of the training pictures.
    let t = Instant::now();
    let fold_settings = folds::FoldSettings {
        folds: s.folds,
        train: s.train.clone(),
        l2: s.l2,
        layout: ViewLayout { views: train.views, validate_on: s.judged_views.clone() },
        seed: s.seed,
    };
    let oof = folds::out_of_fold(&train.features, &train.labels, k, &fold_settings, progress)?;
    let oof: Vec<f32> = Vec::<f32>::try_from(oof.f_contiguous()?.f_view([-1])?)?;
    seconds.folds = t.elapsed().as_secs_f64();

    // Mistakes, the confusion matrix, and label issues.
    let t = Instant::now();
    let test_probs = head.probabilities(&test.features);
    let test_probs: Vec<f32> = Vec::<f32>::try_from(test_probs.f_contiguous()?.f_view([-1])?)?;
    let row = |probs: &'_ [f32], i: usize| -> Vec<f32> { probs[i * k..(i + 1) * k].to_vec() };
    let mut cells: Vec<Vec<Vec<(f32, usize)>>> = vec![vec![Vec::new(); k]; k];
    let mut mistakes = Vec::new();
    for (i, &given) in test.labels.iter().enumerate() {
        let p = row(&test_probs, i);
        let predicted = argmax(&p);
        cells[given as usize][predicted].push((p[predicted], i));
        if predicted != given as usize {
            mistakes.push(Mistake {
                picture: test.names[i].clone(),
                given: classes[given as usize].clone(),
                predicted: classes[predicted].clone(),
                probability: p[predicted] as f64,
                row: i,
            });
        }
    }
    mistakes.sort_by(|a, b| b.probability.total_cmp(&a.probability).then(a.row.cmp(&b.row)));
    let confusion: Vec<Vec<u64>> = cells.iter().map(|r| r.iter().map(|c| c.len() as u64).collect()).collect();
    let cells: Vec<Vec<Vec<usize>>> = cells
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|mut c| {
                    c.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    c.into_iter().map(|(_, i)| i).collect()
                })
                .collect()
        })
        .collect();
    let correct_oof = train.labels.iter().enumerate().filter(|&(i, &l)| argmax(&oof[i * k..(i + 1) * k]) == l as usize).count();
    let cl_train = confident::find_label_issues(&oof, &train.labels, k, s.rank_by);
    let cl_test = confident::find_label_issues(&test_probs, &test.labels, k, s.rank_by);
    let mut label_issues: Vec<LabelIssue> = Vec::new();
    for (split, cl, data) in [("train", &cl_train, train), ("test", &cl_test, test)] {
        label_issues.extend(cl.flagged.iter().map(|f| LabelIssue {
            picture: data.names[f.row].clone(),
            split: split.into(),
            given: classes[f.given].clone(),
            suggested: classes[f.suggested].clone(),
            score: f.score,
            row: f.row,
        }));
    }
    label_issues.sort_by(|a, b| a.score.total_cmp(&b.score).then(a.split.cmp(&b.split)).then(a.row.cmp(&b.row)));
    seconds.label_issues = t.elapsed().as_secs_f64();

    // Duplicates.
    let t = Instant::now();
    let duplicates = find_duplicates(train, test, s)?;
    seconds.duplicates = t.elapsed().as_secs_f64();

    // The summary.
    let count = |split: &str, c: usize| label_issues.iter().filter(|i| i.split == split && i.given == classes[c]).count() as u64;
    let dup_test: std::collections::BTreeSet<usize> = duplicates.iter().filter(|d| d.kind == PairKind::TestTrain).map(|d| d.rows.0).collect();
    let copy_test: std::collections::BTreeSet<usize> =
        duplicates.iter().filter(|d| d.kind == PairKind::TestTrain && d.tier == Tier::Copy).map(|d| d.rows.0).collect();
    let scores = crate::head::ConfusionScores::of(&confusion);
    let per_class = (0..k)
        .map(|c| ClassSummary {
            class: classes[c].clone(),
            train: train.labels.iter().filter(|&&l| l as usize == c).count() as u64,
            test: test.labels.iter().filter(|&&l| l as usize == c).count() as u64,
            mistakes: confusion[c].iter().sum::<u64>() - confusion[c][c],
            label_issues: SplitCounts { train: count("train", c), test: count("test", c) },
            estimated_wrong_labels: SplitCounts { train: cl_train.estimated_wrong[c], test: cl_test.estimated_wrong[c] },
            test_with_train_duplicate: dup_test.iter().filter(|&&i| test.labels[i] as usize == c).count() as u64,
            recall: scores.recall[c],
        })
        .collect::<Vec<_>>();
    let of_kind = |kind: PairKind| duplicates.iter().filter(|d| d.kind == kind).count() as u64;
    let test_pictures = test.pictures() as u64;
    let summary = Summary {
        model: model.to_string(),
        classes: classes.to_vec(),
        train_pictures: train.pictures() as u64,
        test_pictures,
        test_accuracy: if test_pictures == 0 { 0.0 } else { (0..k).map(|c| confusion[c][c]).sum::<u64>() as f64 / test_pictures as f64 },
        test_balanced_accuracy: scores.balanced_accuracy,
        test_macro_f1: scores.macro_f1,
        out_of_fold_accuracy: correct_oof as f64 / train.pictures().max(1) as f64,
        label_issues_warning: label_issues_warning(correct_oof as f64 / train.pictures().max(1) as f64, train.pictures()),
        folds: s.folds,
        l2: s.l2,
        rank_by: s.rank_by,
        mistakes: mistakes.len() as u64,
        label_issues: SplitCounts { train: cl_train.flagged.len() as u64, test: cl_test.flagged.len() as u64 },
        estimated_wrong_labels: SplitCounts { train: cl_train.estimated_wrong.iter().sum(), test: cl_test.estimated_wrong.iter().sum() },
        duplicates: DuplicateCounts {
            test_train: of_kind(PairKind::TestTrain),
            test_train_exact: duplicates.iter().filter(|d| d.kind == PairKind::TestTrain && d.exact).count() as u64,
            within_train: of_kind(PairKind::WithinTrain),
            within_test: of_kind(PairKind::WithinTest),
            test_pictures_with_train_duplicate: dup_test.len() as u64,
            test_share: if test_pictures == 0 { 0.0 } else { dup_test.len() as f64 / test_pictures as f64 },
            test_pictures_with_train_copy: copy_test.len() as u64,
            test_copy_share: if test_pictures == 0 { 0.0 } else { copy_test.len() as f64 / test_pictures as f64 },
            test_train_copies: duplicates.iter().filter(|d| d.kind == PairKind::TestTrain && d.tier == Tier::Copy).count() as u64,
            copy_similarity: COPY_SIMILARITY,
            min_similarity: s.min_similarity,
        },
        per_class,
        confusion,
        seconds,
        page: None,
    };
    Ok(Review { mistakes, label_issues, duplicates, summary, cells, test_names: test.names.clone() })
}

/// The warning on label issues found with out-of-fold accuracy `oof` over `pictures` training
/// pictures, when it is too low to trust them.
pub fn label_issues_warning(oof: f64, pictures: usize) -> Option<String> {
    (oof < TRUSTED_OUT_OF_FOLD_ACCURACY).then(|| {
        format!(
            "the out-of-fold heads are right on only {:.0}% of the {pictures} training pictures: confident learning needs a better \
             head to be trusted here (most label issues are then pictures the head gets wrong, not wrong labels); \
             use more training pictures or a stronger backbone first",
            100.0 * oof
        )
    })
}

/// Exact (content key) and near (feature similarity) duplicates: test-train pairs, then pairs
/// within train, then within test.
fn find_duplicates(train: &SplitData, test: &SplitData, s: &Settings) -> Result<Vec<Duplicate>> {
    let xtr = train.picture_rows();
    let whitening = similar::Whitening::fit(&xtr, similar::SHRINKAGE)?;
    let (utr, ute) = (whitening.unit_rows(&xtr), whitening.unit_rows(&test.features));
    drop(xtr);
    let mut out = Vec::new();
    // (kind, first set, second set): test-train pairs are (test, train).
    let kinds: [(PairKind, &Tensor, Option<&Tensor>, &SplitData, &SplitData); 3] = [
        (PairKind::TestTrain, &ute, Some(&utr), test, train),
        (PairKind::WithinTrain, &utr, None, train, train),
        (PairKind::WithinTest, &ute, None, test, test),
    ];
    for (kind, a, b, da, db) in kinds {
        let t = Instant::now();
        let near = similar::similar_pairs(a, b, s.min_similarity, PARTNERS_KEPT)?;
        let compared = match b {
            Some(b) => a.size()[0] as u64 * b.size()[0] as u64,
            None => (a.size()[0] as u64 * a.size()[0].saturating_sub(1) as u64) / 2,
        };
        tracing::debug!("{kind:?}: {compared} pairs compared in {:.1}s, {} near-duplicates", t.elapsed().as_secs_f64(), near.len());
        let mut pairs: BTreeMap<(usize, usize), (f64, bool)> = near.iter().map(|p| ((p.a, p.b), (p.similarity as f64, false))).collect();
        // The same bytes: every pair of pictures sharing a key.
        if !da.keys.is_empty() && !db.keys.is_empty() {
            let mut by_key: HashMap<ContentKey, Vec<usize>> = HashMap::new();
            for (j, key) in db.keys.iter().enumerate() {
                by_key.entry(*key).or_default().push(j);
            }
            for (i, key) in da.keys.iter().enumerate() {
                for &j in by_key.get(key).map(Vec::as_slice).unwrap_or(&[]) {
                    if b.is_none() && j <= i {
                        continue;
                    }
                    let similarity = a.get(i as i64).dot(&b.unwrap_or(a).get(j as i64)).double_value(&[]);
                    pairs.insert((i, j), (similarity, true));
                }
            }
        }
        let mut found: Vec<Duplicate> = pairs
            .into_iter()
            .map(|((i, j), (similarity, exact))| {
                // Within a split, `train` holds the earlier picture, `test` the later.
                let (test_row, train_row) = if kind == PairKind::TestTrain { (i, j) } else { (j, i) };
                let (tname, trname) = if kind == PairKind::TestTrain { (&da.names[i], &db.names[j]) } else { (&da.names[j], &da.names[i]) };
                Duplicate { test: tname.clone(), train: trname.clone(), similarity, exact, tier: Tier::of(similarity, exact), kind, rows: (test_row, train_row) }
            })
            .collect();
        found.sort_by(|x, y| y.exact.cmp(&x.exact).then(y.similarity.total_cmp(&x.similarity)).then(x.rows.cmp(&y.rows)));
        out.extend(found);
    }
    Ok(out)
}

#[cfg(test)]
mod tier_tests {
    use super::*;

    #[test]
    fn tiers_and_the_low_accuracy_warning() {
        assert_eq!(Tier::of(0.31, false), Tier::LookAlike);
        assert_eq!(Tier::of(COPY_SIMILARITY, false), Tier::Copy);
        assert_eq!(Tier::of(0.1, true), Tier::Copy);
        let w = label_issues_warning(0.6, 300).expect("60% out of fold is too low");
        assert!(w.contains("60%") && w.contains("300") && w.contains("better head"), "{w}");
        assert!(label_issues_warning(0.9, 300).is_none());
    }
}

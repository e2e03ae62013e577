//! Confident learning (Northcutt, Jiang & Chuang, JAIR 2021): which given labels are likely
//! wrong, from out-of-sample predicted probabilities, as cleanlab's `find_label_issues` does
//! with its defaults (`filter_by="prune_by_noise_rate"`).
//!
//! 1. Each class's threshold is the mean probability of that class over the pictures labelled
//!    with it (the class's expected self-confidence).
//! 2. The confident joint counts a picture labelled `i` in column `j` when `p_j` reaches `j`'s
//!    threshold (the likeliest such class when several do); it is then calibrated so that each
//!    row sums to the pictures labelled `i`. Its off-diagonal row sum estimates how many labels
//!    of class `i` are wrong ([`ConfidentLearning::estimated_wrong`]).
//! 3. For every off-diagonal cell `(i, j)` of that count, that many pictures labelled `i`
//!    with the largest margin `p_j - p_i` are flagged; a flagged picture whose likeliest class
//!    is its given one is not kept.
//! 4. The flagged pictures are ranked by a label-quality score, lowest (likeliest wrong)
//!    first: see [`RankBy`].

use serde::{Deserialize, Serialize};

/// The label-quality score that orders the flagged pictures (lower: likelier wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankBy {
    /// `p(given label)`.
    SelfConfidence,
    /// `(p(given) - max over the other classes of p + 1) / 2`, in [0, 1].
    NormalizedMargin,
}

impl RankBy {
    /// The score of a picture whose probabilities are `p` and given label `given`.
    pub fn score(self, p: &[f32], given: usize) -> f64 {
        let own = p[given] as f64;
        match self {
            RankBy::SelfConfidence => own,
            RankBy::NormalizedMargin => {
                let other = p.iter().enumerate().filter(|&(k, _)| k != given).map(|(_, &q)| q as f64).fold(0.0, f64::max);
                (own - other + 1.0) / 2.0
            }
        }
    }

    /// The name cleanlab uses for it (`return_indices_ranked_by`).
    pub fn name(self) -> &'static str {
        match self {
            RankBy::SelfConfidence => "self_confidence",
            RankBy::NormalizedMargin => "normalized_margin",
        }
    }
}

/// A picture whose given label is likely wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Flagged {
    /// Its row (picture) in the probabilities.
    pub row: usize,
    /// Its given label.
    pub given: usize,
    /// The likeliest class.
    pub suggested: usize,
    /// The label-quality score ([`RankBy`]); lower: likelier wrong.
    pub score: f64,
}

/// What confident learning found.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfidentLearning {
    /// Each class's threshold.
    pub thresholds: Vec<f64>,
    /// The calibrated confident joint: rows the given label, columns the estimated true one.
    pub joint: Vec<Vec<u64>>,
    /// For each class, how many of the pictures labelled with it are estimated to belong to
    /// another class (the off-diagonal row sums of `joint`).
    pub estimated_wrong: Vec<u64>,
    /// The flagged pictures, likeliest wrong first.
    pub flagged: Vec<Flagged>,
}

/// Rounds `values` to integers whose sum is the rounded sum of `values` (the largest
/// remainders get the units left over, as cleanlab's `round_preserving_sum`).
fn round_preserving_sum(values: &[f64]) -> Vec<u64> {
    let total = values.iter().sum::<f64>().round() as i64;
    let mut ints: Vec<i64> = values.iter().map(|v| v.floor() as i64).collect();
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| (values[b] - values[b].floor()).total_cmp(&(values[a] - values[a].floor())).then(a.cmp(&b)));
    let mut left = total - ints.iter().sum::<i64>();
    for &i in order.iter().cycle().take(values.len() * 2) {
        if left <= 0 {
            break;
        }
        ints[i] += 1;
        left -= 1;
    }
    ints.into_iter().map(|v| v.max(0) as u64).collect()
}

/// Confident learning on `probs` (`labels.len()` rows of `classes` probabilities, row-major)
/// with the given `labels`. Rows whose label is outside `0..classes` are ignored.
pub fn find_label_issues(probs: &[f32], labels: &[i64], classes: usize, rank_by: RankBy) -> ConfidentLearning {
    let n = labels.len();
    debug_assert_eq!(probs.len(), n * classes);
    let row = |i: usize| &probs[i * classes..(i + 1) * classes];
    let valid = |l: i64| l >= 0 && (l as usize) < classes;
    // 1. Thresholds: each class's mean self-confidence (cleanlab: 2, never reached, for a
    // class without pictures).
    let mut sums = vec![0.0f64; classes];
    let mut counts = vec![0u64; classes];
    for (i, &l) in labels.iter().enumerate() {
        if valid(l) {
            sums[l as usize] += row(i)[l as usize] as f64;
            counts[l as usize] += 1;
        }
    }
    let thresholds: Vec<f64> = sums.iter().zip(&counts).map(|(&s, &c)| if c == 0 { 2.0 } else { s / c as f64 }).collect();
    // 2. The confident joint, calibrated to the label counts.
    let argmax = |p: &[f32]| p.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (k, &q)| if q > b.1 { (k, q) } else { b }).0;
    let mut joint = vec![vec![0u64; classes]; classes];
    for (i, &l) in labels.iter().enumerate() {
        if !valid(l) {
            continue;
        }
        let p = row(i);
        let confident: Vec<usize> = (0..classes).filter(|&k| p[k] as f64 >= thresholds[k] - 1e-6).collect();
        let guess = match confident.len() {
            0 => continue,
            1 => confident[0],
            _ => argmax(p),
        };
        joint[l as usize][guess] += 1;
    }
    for (k, r) in joint.iter_mut().enumerate() {
        r[k] = r[k].max(1);
    }
    let calibrated: Vec<Vec<f64>> = joint
        .iter()
        .zip(&counts)
        .map(|(r, &c)| {
            let total = r.iter().sum::<u64>().max(1) as f64;
            r.iter().map(|&v| v as f64 / total * c as f64).collect()
        })
        .collect();
    let joint: Vec<Vec<u64>> = calibrated.iter().map(|r| round_preserving_sum(r)).collect();
    let estimated_wrong: Vec<u64> = joint.iter().enumerate().map(|(i, r)| r.iter().sum::<u64>() - r[i]).collect();
    // 3. Prune by noise rate: for cell (i, j), the joint's count of pictures labelled i with
    // the largest p_j - p_i, keeping at least one picture of each class unflagged.
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        if valid(l) {
            by_class[l as usize].push(i);
        }
    }
    let mut flagged_mask = vec![false; n];
    for (i, members) in by_class.iter().enumerate() {
        if members.len() <= 1 {
            continue;
        }
        for (j, &count) in joint[i].iter().enumerate() {
            let count = (count as usize).min(members.len() - 1);
            if j == i || count == 0 {
                continue;
            }
            let mut order = members.clone();
            let margin = |r: usize| row(r)[j] - row(r)[i];
            order.sort_by(|&a, &b| margin(b).total_cmp(&margin(a)).then(a.cmp(&b)));
            for &r in &order[..count] {
                flagged_mask[r] = true;
            }
        }
    }
    // A picture predicted as its given label is no issue.
    let mut flagged: Vec<Flagged> = (0..n)
        .filter(|&r| flagged_mask[r])
        .filter_map(|r| {
            let (p, given) = (row(r), labels[r] as usize);
            let suggested = argmax(p);
            (suggested != given).then(|| Flagged { row: r, given, suggested, score: rank_by.score(p, given) })
        })
        .collect();
    flagged.sort_by(|a, b| a.score.total_cmp(&b.score).then(a.row.cmp(&b.row)));
    ConfidentLearning { thresholds, joint, estimated_wrong, flagged }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Three classes; a classifier that gives the true class 0.75 to 0.95; `wrong` rows whose
    /// label was changed to the next class (the probabilities still point to the true one).
    fn noisy(n: usize, wrong: &[usize], seed: u64) -> (Vec<f32>, Vec<i64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut probs, mut labels) = (Vec::new(), Vec::new());
        for i in 0..n {
            let truth = i % 3;
            let mut p = [0f32; 3];
            let confident: f32 = rng.gen_range(0.75..0.95);
            p[truth] = confident;
            let other = (truth + 1 + rng.gen_range(0..2)) % 3;
            p[other] = (1.0 - confident) * 0.7;
            p[3 - truth - other] = (1.0 - confident) * 0.3;
            probs.extend_from_slice(&p);
            labels.push(if wrong.contains(&i) { ((truth + 1) % 3) as i64 } else { truth as i64 });
        }
        (probs, labels)
    }

    #[test]
    fn planted_label_errors_are_flagged_first_and_counted() {
        let wrong: Vec<usize> = (0..600).step_by(17).collect();
        let (probs, labels) = noisy(600, &wrong, 1);
        for rank_by in [RankBy::SelfConfidence, RankBy::NormalizedMargin] {
            let cl = find_label_issues(&probs, &labels, 3, rank_by);
            let found: Vec<usize> = cl.flagged.iter().map(|f| f.row).collect();
            let hits = found.iter().filter(|r| wrong.contains(r)).count();
            let estimated = cl.estimated_wrong.iter().sum::<u64>() as f64;
            println!("{rank_by:?}: {hits} of {} planted found, {} flagged, {estimated} estimated", wrong.len(), found.len());
            assert_eq!(hits, found.len(), "{rank_by:?}: a correct label was flagged: {found:?}");
            assert!(hits as f64 >= 0.7 * wrong.len() as f64, "{rank_by:?}: {found:?} vs {wrong:?}");
            assert!((estimated - wrong.len() as f64).abs() <= 0.5 * wrong.len() as f64, "{:?}", cl.joint);
            for f in &cl.flagged {
                assert_eq!((f.suggested + 1) % 3, f.given, "the suggestion is the true class");
            }
            assert!(cl.flagged.windows(2).all(|w| w[0].score <= w[1].score));
            // The joint's rows sum to the pictures labelled with each class.
            for (k, r) in cl.joint.iter().enumerate() {
                assert_eq!(r.iter().sum::<u64>() as usize, labels.iter().filter(|&&l| l == k as i64).count());
            }
        }
    }

    #[test]
    fn clean_labels_give_no_issues() {
        let (probs, labels) = noisy(300, &[], 2);
        let cl = find_label_issues(&probs, &labels, 3, RankBy::SelfConfidence);
        assert!(cl.flagged.is_empty(), "{:?}", cl.flagged);
        assert_eq!(cl.estimated_wrong, vec![0, 0, 0]);
    }

    #[test]
    fn scores_are_self_confidence_or_normalised_margin() {
        let p = [0.2f32, 0.7, 0.1];
        assert!((RankBy::SelfConfidence.score(&p, 0) - 0.2).abs() < 1e-6);
        assert!((RankBy::NormalizedMargin.score(&p, 0) - (0.2 - 0.7 + 1.0) / 2.0).abs() < 1e-6);
        assert!((RankBy::NormalizedMargin.score(&p, 1) - (0.7 - 0.2 + 1.0) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn rounding_keeps_the_row_total() {
        assert_eq!(round_preserving_sum(&[1.4, 1.4, 1.2]), vec![2, 1, 1]);
        assert_eq!(round_preserving_sum(&[0.5, 0.5, 3.0]), vec![1, 0, 3]);
        assert_eq!(round_preserving_sum(&[]), Vec::<u64>::new());
    }
}

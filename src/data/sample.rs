//! Stratified, seeded subsets: `--sample FRACTION`, `--limit N`, and the validation split
//! held out of train. Every class keeps its share; indices come back in file order.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Which part of a split to use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subset {
    /// Every row.
    All,
    /// This fraction of each class, in (0, 1].
    Fraction(f64),
    /// This many rows in all, shared between classes in proportion to their size.
    Limit(usize),
}

/// Per-class row indices of `labels`, each in file order.
fn by_class(labels: &[i64]) -> Vec<Vec<usize>> {
    let n_classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut classes = vec![Vec::new(); n_classes];
    for (i, &l) in labels.iter().enumerate() {
        classes[l as usize].push(i);
    }
    classes
}

/// How many rows of each class a subset keeps.
fn quotas(sizes: &[usize], subset: Subset) -> Vec<usize> {
    let total: usize = sizes.iter().sum();
    match subset {
        Subset::All => sizes.to_vec(),
        Subset::Fraction(f) => sizes.iter().map(|&n| if n == 0 { 0 } else { ((f * n as f64).round() as usize).clamp(1, n) }).collect(),
        Subset::Limit(limit) if limit >= total => sizes.to_vec(),
        Subset::Limit(limit) => {
            // Largest-remainder apportionment.
            let exact: Vec<f64> = sizes.iter().map(|&n| limit as f64 * n as f64 / total as f64).collect();
            let mut q: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
            let mut order: Vec<usize> = (0..sizes.len()).collect();
            order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
            let mut left = limit - q.iter().sum::<usize>();
            for &c in order.iter().cycle().take(sizes.len() * 2) {
                if left == 0 {
                    break;
                }
                if q[c] < sizes[c] {
                    q[c] += 1;
                    left -= 1;
                }
            }
            q
        }
    }
}

/// The rows of a stratified, seeded subset of `labels`, in file order.
pub fn stratified_subset(labels: &[i64], subset: Subset, seed: u64) -> Vec<usize> {
    if subset == Subset::All {
        return (0..labels.len()).collect();
    }
    let classes = by_class(labels);
    let sizes: Vec<usize> = classes.iter().map(Vec::len).collect();
    let q = quotas(&sizes, subset);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut keep = Vec::with_capacity(q.iter().sum());
    for (mut rows, k) in classes.into_iter().zip(q) {
        rows.shuffle(&mut rng);
        keep.extend_from_slice(&rows[..k]);
    }
    keep.sort_unstable();
    keep
}

/// Splits rows into (train, validation): `fraction` of each class (at least one row for every
/// class with two or more) goes to validation. Both lists are in file order.
pub fn stratified_holdout(labels: &[i64], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let classes = by_class(labels);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005E_ED0F_7A1D);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for mut rows in classes {
        rows.shuffle(&mut rng);
        let k = if rows.len() < 2 || fraction <= 0.0 { 0 } else { ((fraction * rows.len() as f64).round() as usize).clamp(1, rows.len() - 1) };
        val.extend_from_slice(&rows[..k]);
        train.extend_from_slice(&rows[k..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<i64> {
        // 3 classes of 50, 30 and 20 rows, interleaved.
        let mut l = vec![0; 50];
        l.extend(vec![1; 30]);
        l.extend(vec![2; 20]);
        l.shuffle(&mut ChaCha8Rng::seed_from_u64(1));
        l
    }

    fn count(labels: &[i64], rows: &[usize], class: i64) -> usize {
        rows.iter().filter(|&&r| labels[r] == class).count()
    }

    #[test]
    fn fraction_keeps_each_class_share_in_file_order() {
        let l = labels();
        let rows = stratified_subset(&l, Subset::Fraction(0.1), 7);
        assert_eq!((count(&l, &rows, 0), count(&l, &rows, 1), count(&l, &rows, 2)), (5, 3, 2));
        assert!(rows.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn limit_is_exact_and_proportional() {
        let l = labels();
        let rows = stratified_subset(&l, Subset::Limit(10), 7);
        assert_eq!(rows.len(), 10);
        assert_eq!((count(&l, &rows, 0), count(&l, &rows, 1), count(&l, &rows, 2)), (5, 3, 2));
        assert_eq!(stratified_subset(&l, Subset::Limit(1000), 7).len(), 100);
    }

    #[test]
    fn same_seed_same_subset_other_seed_other_subset() {
        let l = labels();
        let a = stratified_subset(&l, Subset::Fraction(0.3), 1);
        assert_eq!(a, stratified_subset(&l, Subset::Fraction(0.3), 1));
        assert_ne!(a, stratified_subset(&l, Subset::Fraction(0.3), 2));
    }

    #[test]
    fn holdout_is_a_stratified_partition() {
        let l = labels();
        let (train, val) = stratified_holdout(&l, 0.2, 3);
        assert_eq!(train.len() + val.len(), l.len());
        assert_eq!((count(&l, &val, 0), count(&l, &val, 1), count(&l, &val, 2)), (10, 6, 4));
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..l.len()).collect::<Vec<_>>());
    }
}

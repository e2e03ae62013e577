//! Near-duplicates: every pair of pictures whose features' cosine similarity, after whitening,
//! reaches a threshold, found exactly (every pair is compared, in blocks, so that memory stays
//! flat in the number of pictures).
//!
//! **Whitening** ([`Whitening`]): the features are centred on the training pictures' mean and
//! each principal direction of the training features is divided by its standard deviation,
//! with shrinkage (`(λ + ε)^-½`, `ε` a tenth of the mean eigenvalue), then scaled to unit
//! length. A backbone's pooled features spend most of their variance on what pictures of a
//! class share, so that two different pictures of horses on grass are as similar as a picture
//! and its JPEG copy; whitening gives every direction the same weight, so that the fine detail
//! that only a copy shares counts, and puts any backbone's features on the same scale (between
//! unrelated pictures, a similarity near 0 whatever the backbone). On the planted-fault set it
//! is what lets one threshold find the JPEG copies with few other pairs on every backbone
//! measured (docs/performance.md, "review: the duplicate threshold").
//!
//! **Cost.** Comparing all pairs is `N²/2 · D` multiply-adds, done as matrix products of
//! blocks of [`BLOCK`] rows; whitened features have no dominant subspace, so that no bound on
//! fewer dimensions could skip pairs.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Rows (and columns) of a block of pairs.
pub const BLOCK: i64 = 4096;
/// The whitening's shrinkage, as a share of the mean eigenvalue.
pub const SHRINKAGE: f64 = 0.1;
/// Training rows the covariance is estimated from, at most (evenly spaced).
const COVARIANCE_ROWS: i64 = 20_000;

/// Centring and whitening fitted on the training features.
#[derive(Debug)]
pub struct Whitening {
    mean: Tensor,
    transform: Tensor,
}

impl Whitening {
    /// Fits the centring and the whitening on `train` (`[N, D]`), its covariance estimated from
    /// at most 20,000 of its rows; `shrinkage` is `ε` as a share of the mean eigenvalue.
    pub fn fit(train: &Tensor, shrinkage: f64) -> Result<Whitening> {
        tch::no_grad(|| {
            let n = train.size()[0];
            if n == 0 {
                return Err(Error::usage("--data", "no training pictures to compare with"));
            }
            let x = train.to_kind(Kind::Float);
            let mean = x.mean_dim(0, false, Kind::Float);
            let rows = n.min(COVARIANCE_ROWS);
            let idx: Vec<i64> = (0..rows).map(|i| i * n / rows).collect();
            let c = x.index_select(0, &Tensor::from_slice(&idx)) - &mean;
            let cov = (c.tr().matmul(&c) / (rows.max(2) - 1) as f64).to_kind(Kind::Double);
            let (lambda, vectors) = cov.f_linalg_eigh("L")?;
            let lambda = lambda.clamp_min(0.0);
            let eps = (shrinkage * lambda.mean(Kind::Double).double_value(&[])).max(1e-12);
            let scale = (lambda + eps).rsqrt();
            let transform = (vectors * scale.unsqueeze(0)).to_kind(Kind::Float);
            Ok(Whitening { mean, transform })
        })
    }

    /// `x`'s rows centred, whitened and scaled to unit length (a row equal to the mean stays 0).
    pub fn unit_rows(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let w = (x.to_kind(Kind::Float) - &self.mean).matmul(&self.transform);
            let norm = w.square().sum_dim_intlist(1, true, Kind::Float).sqrt().clamp_min(1e-12);
            w / norm
        })
    }
}

/// Two pictures and their similarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    /// Row in the first set.
    pub a: usize,
    /// Row in the second set (in the same set, `b > a`).
    pub b: usize,
    /// Cosine similarity of their unit rows.
    pub similarity: f32,
}

/// Up to `keep` pairs with the highest similarities of each row of `a`.
struct Best {
    rows: Vec<Vec<(f32, u32)>>,
    keep: usize,
}

impl Best {
    fn offer(&mut self, a: usize, b: usize, s: f32) {
        let row = &mut self.rows[a];
        if row.len() < self.keep {
            row.push((s, b as u32));
        } else if let Some((i, _)) = row.iter().enumerate().min_by(|x, y| x.1 .0.total_cmp(&y.1 .0)).filter(|(_, m)| m.0 < s) {
            row[i] = (s, b as u32);
        }
    }
}

/// Every pair of a row of `a` and a row of `b` (unit rows, as [`Whitening::unit_rows`] makes
/// them) whose cosine similarity is at least `threshold`, or, with `b` `None`, every such pair
/// of rows of `a` (`a < b`); at most `keep` (the most similar) for each row of `a`. Sorted by
/// row of `a`, then by similarity, highest first.
pub fn similar_pairs(a: &Tensor, b: Option<&Tensor>, threshold: f64, keep: usize) -> Result<Vec<Pair>> {
    tch::no_grad(|| search(a, b, threshold, keep))
}

fn search(a: &Tensor, b: Option<&Tensor>, threshold: f64, keep: usize) -> Result<Vec<Pair>> {
    let same = b.is_none();
    let b = b.unwrap_or(a);
    let (na, nb) = (a.size()[0], b.size()[0]);
    let mut best = Best { rows: vec![Vec::new(); na as usize], keep: keep.max(1) };
    for i0 in (0..na).step_by(BLOCK as usize) {
        let li = BLOCK.min(na - i0);
        let block_a = a.narrow(0, i0, li);
        for j0 in (if same { i0 } else { 0 }..nb).step_by(BLOCK as usize) {
            let lj = BLOCK.min(nb - j0);
            let mut sims = block_a.matmul(&b.narrow(0, j0, lj).tr());
            if same && j0 == i0 {
                // Each pair once: on and below the diagonal, a value no threshold reaches.
                let below = Tensor::ones([li, lj], (Kind::Float, sims.device())).f_tril(0)?;
                sims = sims.f_triu(1)? - below * 4.0;
            }
            let found = sims.f_ge(threshold)?.f_nonzero()?;
            if found.size()[0] == 0 {
                continue;
            }
            let values: Vec<f32> = Vec::<f32>::try_from(sims.f_index(&[Some(found.select(1, 0)), Some(found.select(1, 1))])?)?;
            let idx: Vec<i64> = Vec::<i64>::try_from(found.f_contiguous()?.f_view([-1])?)?;
            for (pair, &s) in idx.chunks_exact(2).zip(&values) {
                best.offer((i0 + pair[0]) as usize, (j0 + pair[1]) as usize, s);
            }
        }
    }
    let mut pairs = Vec::new();
    for (i, mut row) in best.rows.into_iter().enumerate() {
        row.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        pairs.extend(row.into_iter().map(|(s, j)| Pair { a: i, b: j as usize, similarity: s }));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn uniform(rng: &mut ChaCha8Rng, n: i64, d: i64) -> Tensor {
        let v: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        Tensor::from_slice(&v).view([n, d])
    }

    /// Features with a decaying spectrum and a large offset (like a backbone's), rows 3k+1
    /// near-copies of rows 3k.
    fn features(n: i64, d: i64, seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let scale: Vec<f32> = (0..d).map(|j| 1.0 / (1.0 + j as f32).powf(0.8)).collect();
        let scale = Tensor::from_slice(&scale).view([1, d]);
        let x = uniform(&mut rng, n, d) * &scale;
        let noise = uniform(&mut rng, n, d) * &scale * 0.05;
        let copies = Tensor::from_slice(&(0..n).map(|i| if i % 3 == 1 { i - 1 } else { i }).collect::<Vec<i64>>());
        x.index_select(0, &copies) + noise + 5.0
    }

    /// The blocked search finds exactly the pairs a brute-force comparison finds, across
    /// several blocks, and whitening puts near-copies far above unrelated pairs.
    #[test]
    fn blocked_search_equals_brute_force_and_whitening_separates_copies() {
        let (n, m) = (BLOCK as usize + 700, 900usize);
        let x = features(n as i64, 96, 1);
        let y = features(m as i64, 96, 2);
        let w = Whitening::fit(&x, SHRINKAGE).unwrap();
        let (ux, uy) = (w.unit_rows(&x), w.unit_rows(&y));
        let full: Vec<f32> = Vec::try_from(ux.matmul(&ux.tr()).view([-1])).unwrap();
        for threshold in [0.3, 0.8] {
            let within = similar_pairs(&ux, None, threshold, usize::MAX).unwrap();
            let mut expected = Vec::new();
            for i in 0..n {
                for j in i + 1..n {
                    if full[i * n + j] as f64 >= threshold {
                        expected.push((i, j));
                    }
                }
            }
            let mut got: Vec<(usize, usize)> = within.iter().map(|p| (p.a, p.b)).collect();
            got.sort();
            println!("threshold {threshold}: {} pairs within, brute force {}", got.len(), expected.len());
            assert_eq!(got, expected, "threshold {threshold}");
            for p in &within {
                assert!((p.similarity - full[p.a * n + p.b]).abs() < 1e-5);
            }
            let across = similar_pairs(&uy, Some(&ux), threshold, usize::MAX).unwrap();
            let cross: Vec<f32> = Vec::try_from(uy.matmul(&ux.tr()).view([-1])).unwrap();
            assert_eq!(across.len(), cross.iter().filter(|&&v| v as f64 >= threshold).count());
        }
        // Whitened, every near-copy (3k, 3k+1) stands far above the most similar unrelated
        // pair; centred only, the leading directions make unrelated rows nearly as similar.
        let gap = |unit: &Tensor| {
            let s: Vec<f32> = Vec::try_from(unit.matmul(&unit.tr()).view([-1])).unwrap();
            let lowest_copy = (0..n - 1).step_by(3).map(|i| s[i * n + i + 1]).fold(f32::MAX, f32::min);
            let unrelated = (0..n)
                .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                .filter(|&(i, j)| !(i % 3 == 0 && j == i + 1))
                .map(|(i, j)| s[i * n + j])
                .fold(f32::MIN, f32::max);
            (lowest_copy, unrelated)
        };
        let centred = {
            let c = x.shallow_clone() - x.mean_dim(0, true, Kind::Float);
            &c / c.square().sum_dim_intlist(1, true, Kind::Float).sqrt()
        };
        let ((wc, wu), (cc, cu)) = (gap(&ux), gap(&centred));
        println!("lowest copy / highest unrelated pair: whitened {wc:.3} / {wu:.3}, centred {cc:.3} / {cu:.3}");
        assert!(wc - wu > 0.2 && wc - wu > 5.0 * (cc - cu), "whitened {wc} {wu}, centred {cc} {cu}");
    }

    #[test]
    fn keep_limits_the_pairs_of_a_row_to_the_most_similar() {
        let x = features(300, 16, 3);
        let ux = Whitening::fit(&x, SHRINKAGE).unwrap().unit_rows(&x);
        let all = similar_pairs(&ux, None, -1.0, usize::MAX).unwrap();
        assert_eq!(all.len(), 300 * 299 / 2, "a threshold of -1 keeps every pair once");
        let two = similar_pairs(&ux, None, -1.0, 2).unwrap();
        for i in 0..300 {
            let mut row: Vec<f32> = all.iter().filter(|p| p.a == i).map(|p| p.similarity).collect();
            row.sort_by(|a, b| b.total_cmp(a));
            let kept: Vec<f32> = two.iter().filter(|p| p.a == i).map(|p| p.similarity).collect();
            assert_eq!(kept, row.into_iter().take(2).collect::<Vec<_>>());
        }
    }
}

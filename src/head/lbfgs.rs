//! Full-batch L-BFGS on the head's objective, to tolerance: the reference optimum that tells
//! how far a point of the L2 path ([`super::path`]) is from converged, and a solver for the
//! chosen penalty.
//!
//! The objective is the path's, on standardised rows `z` `[N, D]`:
//! `F(W, b) = (1/N) Σ_i w_i · CE(z_i W^T + b, y_i) + λ/2 · |W|²` (`w_i` the row's class weight,
//! 1 without class weights; the bias is not penalised). The gradient is written out (no
//! autograd): `G = (softmax - onehot) · w_i / N`, `∇W = G^T z + λ W`, `∇b = Σ_i G_i`. Each
//! evaluation reads the rows twice (two matrix products), so an iteration costs about one
//! epoch of the path. The search direction is the two-loop recursion over the last
//! [`HISTORY`] steps, the step length a backtracking (Armijo) line search from 1.

use tch::{Kind, Tensor};

/// Steps kept for the L-BFGS direction (see [`Memory`]).
pub const HISTORY: usize = 10;

/// The head's objective on standardised rows (see the module documentation).
pub struct Objective<'a> {
    /// Standardised rows `[N, D]`, f32.
    pub z: &'a Tensor,
    /// Their labels `[N]`, int64.
    pub labels: &'a Tensor,
    /// Classes.
    pub classes: i64,
    /// Each row's class weight `[N]`, when classes are weighted.
    pub row_weight: Option<&'a Tensor>,
    /// The L2 penalty λ.
    pub l2: f64,
}

/// One evaluation of the objective: its value, its parts, its gradient.
#[derive(Debug)]
pub struct Evaluation {
    /// `F`.
    pub value: f64,
    /// Its data term, the (class-weighted) mean cross-entropy.
    pub loss: f64,
    /// Rows whose highest logit is their label's.
    pub correct: i64,
    /// `∇F` (`W` row-major, then `b`).
    pub gradient: Tensor,
}

impl Objective<'_> {
    /// `F` and its gradient at `theta` (`[C·D + C]`: `W` row-major, then `b`).
    pub fn value_and_gradient(&self, theta: &Tensor) -> (f64, Tensor) {
        let e = self.evaluate(theta);
        (e.value, e.gradient)
    }

    /// `F`, its data term, the rows it gets right and its gradient at `theta`, from one pass
    /// of two matrix products over the rows.
    pub fn evaluate(&self, theta: &Tensor) -> Evaluation {
        let (w, b) = self.split(theta);
        let n = self.z.size()[0] as f64;
        let logits = self.z.matmul(&w.tr()) + &b;
        let correct = logits.argmax(-1, false).eq_tensor(self.labels).sum(Kind::Int64).int64_value(&[]);
        let logp = logits.log_softmax(-1, Kind::Float);
        let onehot = self.labels.one_hot(self.classes).to_kind(Kind::Float);
        let ce = -(&logp * &onehot).sum_dim_intlist(1, false, Kind::Float);
        let mut g = logp.exp() - onehot;
        let data = match self.row_weight {
            None => ce.sum(Kind::Double).double_value(&[]),
            Some(rw) => {
                g *= rw.unsqueeze(1);
                (ce * rw).sum(Kind::Double).double_value(&[])
            }
        };
        g /= n;
        let gw = g.tr().matmul(self.z) + &w * self.l2;
        let gb = g.sum_dim_intlist(0, false, Kind::Float);
        let loss = data / n;
        let value = loss + 0.5 * self.l2 * w.square().sum(Kind::Double).double_value(&[]);
        Evaluation { value, loss, correct, gradient: Tensor::cat(&[gw.reshape([-1]), gb], 0) }
    }

    /// `theta` as `W` `[C, D]` and `b` `[C]` (views).
    pub fn split(&self, theta: &Tensor) -> (Tensor, Tensor) {
        let d = self.z.size()[1];
        (theta.narrow(0, 0, self.classes * d).view([self.classes, d]), theta.narrow(0, self.classes * d, self.classes))
    }

    /// `W` and `b` as one parameter vector.
    pub fn join(w: &Tensor, b: &Tensor) -> Tensor {
        Tensor::cat(&[w.reshape([-1]), b.reshape([-1])], 0).to_kind(Kind::Float)
    }
}

/// Where [`minimise`] stopped.
#[derive(Debug)]
pub struct Solution {
    /// The parameters (`W` then `b`, see [`Objective::value_and_gradient`]).
    pub theta: Tensor,
    /// `F` there.
    pub value: f64,
    /// Its data term there (see [`Evaluation`]).
    pub loss: f64,
    /// Rows right there.
    pub correct: i64,
    /// The largest absolute gradient entry there.
    pub gradient_max: f64,
    /// Iterations run.
    pub iterations: usize,
    /// Objective evaluations (each two passes over the rows).
    pub evaluations: usize,
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    a.dot(b).double_value(&[])
}

/// The curvature pairs L-BFGS keeps (the last [`HISTORY`] steps `s` and gradient changes
/// `y`), which a path carries from one penalty to the next: the penalty's part of `y` is
/// exactly `λ · s` on the weights, so a pair learnt at `λ` holds at `λ'` once
/// `(λ' - λ) · s_W` is added to its `y` ([`Memory::retarget`]).
#[derive(Debug, Default)]
pub struct Memory {
    /// (s, y, 1 / y·s), oldest first.
    pairs: Vec<(Tensor, Tensor, f64)>,
    /// The penalty the pairs were learnt at.
    l2: f64,
}

impl Memory {
    /// The pairs made valid for `objective`'s penalty; a pair whose curvature is no longer
    /// positive is dropped.
    fn retarget(&mut self, objective: &Objective) {
        let delta = objective.l2 - self.l2;
        if delta != 0.0 {
            let weights = objective.classes * objective.z.size()[1];
            let pairs = std::mem::take(&mut self.pairs);
            for (s, y, _) in pairs {
                let y = &y + Tensor::cat(&[s.narrow(0, 0, weights), s.narrow(0, weights, objective.classes).zeros_like()], 0) * delta;
                let ys = dot(&y, &s);
                if ys > 1e-12 {
                    self.pairs.push((s, y, 1.0 / ys));
                }
            }
        }
        self.l2 = objective.l2;
    }
}

/// Minimises `objective` from `theta0` until the largest gradient entry is below
/// `gradient_tol`, the objective stops falling (a relative decrease under 1e-10 an
/// iteration), or `max_iterations` have run.
pub fn minimise(objective: &Objective, theta0: &Tensor, gradient_tol: f64, max_iterations: usize) -> Solution {
    minimise_observed(objective, theta0, gradient_tol, max_iterations, &mut Memory::default(), |_, _, _| {})
}

/// [`minimise`], starting from the curvature pairs in `memory` (of an earlier run, on the
/// same rows, at any penalty) and leaving its own there, and calling
/// `observe(iteration, theta, evaluation)` after every iteration (from 1) with the point it
/// reached.
pub fn minimise_observed(
    objective: &Objective,
    theta0: &Tensor,
    gradient_tol: f64,
    max_iterations: usize,
    memory: &mut Memory,
    mut observe: impl FnMut(usize, &Tensor, &Evaluation),
) -> Solution {
    let mut theta = theta0.to_kind(Kind::Float).copy();
    let first = objective.evaluate(&theta);
    let (mut f, mut g, mut last) = (first.value, first.gradient.shallow_clone(), first);
    let mut evaluations = 1;
    memory.retarget(objective);
    let history = &mut memory.pairs; // (s, y, 1 / y·s)
    let mut iterations = 0;
    while iterations < max_iterations && g.abs().max().double_value(&[]) >= gradient_tol {
        iterations += 1;
        // Two-loop recursion: d = -H g.
        let mut q = g.copy();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q -= y * a;
            alphas.push(a);
        }
        let gamma = history.last().map_or(1.0 / g.norm().double_value(&[]).max(1e-12), |(s, y, _)| dot(s, y) / dot(y, y));
        let mut r = q * gamma;
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let beta = rho * dot(y, &r);
            r += s * (a - beta);
        }
        let mut d = -r;
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction (rounding): restart from the gradient.
            history.clear();
            d = -&g / g.norm().double_value(&[]).max(1e-12);
            slope = dot(&g, &d);
        }
        // Backtracking line search (Armijo).
        let mut step = 1.0;
        let (theta_new, e) = loop {
            let candidate = &theta + &d * step;
            let e = objective.evaluate(&candidate);
            evaluations += 1;
            if e.value <= f + 1e-4 * step * slope || step < 1e-10 {
                break (candidate, e);
            }
            step *= 0.5;
        };
        let (f_new, g_new) = (e.value, e.gradient.shallow_clone());
        observe(iterations, &theta_new, &e);
        last = e;
        let s = &theta_new - &theta;
        let y = &g_new - &g;
        let ys = dot(&y, &s);
        if ys > 1e-12 {
            history.push((s, y, 1.0 / ys));
            if history.len() > HISTORY {
                drop(history.remove(0));
            }
        }
        let decrease = f - f_new;
        (theta, f, g) = (theta_new, f_new, g_new);
        if decrease <= 1e-10 * f.abs().max(1e-12) {
            break;
        }
    }
    let gradient_max = g.abs().max().double_value(&[]);
    Solution { theta, value: f, loss: last.loss, correct: last.correct, gradient_max, iterations, evaluations }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// On a small problem, the minimiser's point has a vanishing gradient, and the objective
    /// there is the lowest: no random perturbation of it (nor the start) is lower, and the
    /// gradient written out agrees with finite differences.
    #[test]
    fn reaches_the_optimum_of_a_small_problem() {
        tch::manual_seed(3);
        let z = Tensor::randn([300, 8], (Kind::Float, Device::Cpu));
        let labels = (z.narrow(1, 0, 3).argmax(-1, false) + (Tensor::rand([300], (Kind::Float, Device::Cpu)).gt(0.8)).to_kind(Kind::Int64)).remainder(3);
        let weight = Tensor::from_slice(&[1.0f32, 2.0, 0.5]).index_select(0, &labels);
        for rw in [None, Some(&weight)] {
            let obj = Objective { z: &z, labels: &labels, classes: 3, row_weight: rw, l2: 1e-2 };
            let theta0 = Tensor::zeros([3 * 8 + 3], (Kind::Float, Device::Cpu));
            let (f0, g0) = obj.value_and_gradient(&theta0);
            // Finite differences on one weight and one bias.
            for i in [5i64, 25] {
                let e = Tensor::zeros([27], (Kind::Float, Device::Cpu)).index_fill(0, &Tensor::from_slice(&[i]), 1e-2);
                let fd = (obj.value_and_gradient(&(&theta0 + &e)).0 - obj.value_and_gradient(&(&theta0 - &e)).0) / 2e-2;
                assert!((fd - g0.double_value(&[i])).abs() < 1e-3, "entry {i}: {fd} vs {}", g0.double_value(&[i]));
            }
            let sol = minimise(&obj, &theta0, 1e-5, 500);
            println!("weighted {}: F {f0:.5} -> {:.6} in {} iterations, max |g| {:.2e}", rw.is_some(), sol.value, sol.iterations, sol.gradient_max);
            assert!(sol.gradient_max < 1e-4, "{sol:?}");
            assert!(sol.value < f0);
            for k in 0..20 {
                tch::manual_seed(100 + k);
                let p = &sol.theta + Tensor::randn([27], (Kind::Float, Device::Cpu)) * 1e-2;
                assert!(obj.value_and_gradient(&p).0 >= sol.value - 1e-7);
            }
        }
    }
}

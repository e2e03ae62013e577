//! Inception-v3 without the classifier (and without the auxiliary head, which only matters in
//! training): 299x299 input, 2048 pooled features.
//!
//! Variable names are torchvision's, which timm's `inception_v3` checkpoints share
//! (`Conv2d_1a_3x3.conv`, `Mixed_5b.branch1x1.bn`, ...). BatchNorm eps is 1e-3. A checkpoint's
//! `AuxLogits.*` and `fc.*` tensors are simply not read.
//!
//! Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", 2015.

use tch::nn;

use super::layers::{ConvBn, ConvSpec};
use super::ops::Ops;

const BN_EPS: f64 = 1e-3;

/// Conv, BatchNorm, ReLU under `p/conv` and `p/bn`.
#[derive(Debug)]
struct BasicConv2d(ConvBn);

impl BasicConv2d {
    fn new(p: nn::Path, c_in: i64, c_out: i64, spec: ConvSpec) -> Self {
        BasicConv2d(ConvBn::new(&p / "conv", &p / "bn", c_in, c_out, spec, BN_EPS))
    }
    fn sq(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> Self {
        Self::new(p, c_in, c_out, ConvSpec::square(k, stride, padding))
    }
    fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        ops.conv_bn_relu(&self.0, xs)
    }
}

/// The convolutions one after the other (`convs` is never empty).
fn chain<O: Ops>(ops: &mut O, convs: &[BasicConv2d], xs: &O::Value) -> O::Value {
    let mut ys = convs[0].forward(ops, xs);
    for c in &convs[1..] {
        ys = c.forward(ops, &ys);
    }
    ys
}

fn max_pool_3x3_s2<O: Ops>(ops: &mut O, xs: &O::Value) -> O::Value {
    ops.max_pool(xs, 3, 2, 0)
}

/// 3x3 average pooling, stride 1, padding 1, padding counted (PyTorch's default), then `conv`.
fn pool_branch<O: Ops>(ops: &mut O, conv: &BasicConv2d, xs: &O::Value) -> O::Value {
    let pooled = ops.avg_pool(xs, 3, 1, 1);
    conv.forward(ops, &pooled)
}

const H1X7: [i64; 2] = [1, 7];
const P0X3: [i64; 2] = [0, 3];
const H7X1: [i64; 2] = [7, 1];
const P3X0: [i64; 2] = [3, 0];

#[derive(Debug)]
struct InceptionA {
    b1x1: BasicConv2d,
    b5x5: [BasicConv2d; 2],
    b3x3dbl: [BasicConv2d; 3],
    pool: BasicConv2d,
}

impl InceptionA {
    fn new(p: nn::Path, c_in: i64, pool_features: i64) -> Self {
        Self {
            b1x1: BasicConv2d::sq(&p / "branch1x1", c_in, 64, 1, 1, 0),
            b5x5: [BasicConv2d::sq(&p / "branch5x5_1", c_in, 48, 1, 1, 0), BasicConv2d::sq(&p / "branch5x5_2", 48, 64, 5, 1, 2)],
            b3x3dbl: [
                BasicConv2d::sq(&p / "branch3x3dbl_1", c_in, 64, 1, 1, 0),
                BasicConv2d::sq(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
                BasicConv2d::sq(&p / "branch3x3dbl_3", 96, 96, 3, 1, 1),
            ],
            pool: BasicConv2d::sq(&p / "branch_pool", c_in, pool_features, 1, 1, 0),
        }
    }
    fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let branches = [self.b1x1.forward(ops, xs), chain(ops, &self.b5x5, xs), chain(ops, &self.b3x3dbl, xs), pool_branch(ops, &self.pool, xs)];
        ops.concat_channels(&branches)
    }
}

#[derive(Debug)]
struct InceptionB {
    b3x3: BasicConv2d,
    b3x3dbl: [BasicConv2d; 3],
}

impl InceptionB {
    fn new(p: nn::Path, c_in: i64) -> Self {
        Self {
            b3x3: BasicConv2d::sq(&p / "branch3x3", c_in, 384, 3, 2, 0),
            b3x3dbl: [
                BasicConv2d::sq(&p / "branch3x3dbl_1", c_in, 64, 1, 1, 0),
                BasicConv2d::sq(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
                BasicConv2d::sq(&p / "branch3x3dbl_3", 96, 96, 3, 2, 0),
            ],
        }
    }
    fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let branches = [self.b3x3.forward(ops, xs), chain(ops, &self.b3x3dbl, xs), max_pool_3x3_s2(ops, xs)];
        ops.concat_channels(&branches)
    }
}

#[derive(Debug)]
struct InceptionC {
    b1x1: BasicConv2d,
    b7x7: [BasicConv2d; 3],
    b7x7dbl: [BasicConv2d; 5],
    pool: BasicConv2d,
}

impl InceptionC {
    fn new(p: nn::Path, c_in: i64, c7: i64) -> Self {
        let r = |name: &str, ci, co, k, pad| BasicConv2d::new(&p / name, ci, co, ConvSpec::rect(k, pad));
        Self {
            b1x1: BasicConv2d::sq(&p / "branch1x1", c_in, 192, 1, 1, 0),
            b7x7: [
                BasicConv2d::sq(&p / "branch7x7_1", c_in, c7, 1, 1, 0),
                r("branch7x7_2", c7, c7, H1X7, P0X3),
                r("branch7x7_3", c7, 192, H7X1, P3X0),
            ],
            b7x7dbl: [
                BasicConv2d::sq(&p / "branch7x7dbl_1", c_in, c7, 1, 1, 0),
                r("branch7x7dbl_2", c7, c7, H7X1, P3X0),
                r("branch7x7dbl_3", c7, c7, H1X7, P0X3),
                r("branch7x7dbl_4", c7, c7, H7X1, P3X0),
                r("branch7x7dbl_5", c7, 192, H1X7, P0X3),
            ],
            pool: BasicConv2d::sq(&p / "branch_pool", c_in, 192, 1, 1, 0),
        }
    }
    fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let branches = [self.b1x1.forward(ops, xs), chain(ops, &self.b7x7, xs), chain(ops, &self.b7x7dbl, xs), pool_branch(ops, &self.pool, xs)];
        ops.concat_channels(&branches)
    }
}

#[derive(Debug)]
struct InceptionD {
    b3x3: [BasicConv2d; 2],
    b7x7x3: [BasicConv2d; 4],
}

impl InceptionD {
    fn new(p: nn::Path, c_in: i64) -> Self {
        Self {
            b3x3: [BasicConv2d::sq(&p / "branch3x3_1", c_in, 192, 1, 1, 0), BasicConv2d::sq(&p / "branch3x3_2", 192, 320, 3, 2, 0)],
            b7x7x3: [
                BasicConv2d::sq(&p / "branch7x7x3_1", c_in, 192, 1, 1, 0),
                BasicConv2d::new(&p / "branch7x7x3_2", 192, 192, ConvSpec::rect(H1X7, P0X3)),
                BasicConv2d::new(&p / "branch7x7x3_3", 192, 192, ConvSpec::rect(H7X1, P3X0)),
                BasicConv2d::sq(&p / "branch7x7x3_4", 192, 192, 3, 2, 0),
            ],
        }
    }
    fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let branches = [chain(ops, &self.b3x3, xs), chain(ops, &self.b7x7x3, xs), max_pool_3x3_s2(ops, xs)];
        ops.concat_channels(&branches)
    }
}

#[derive(Debug)]
struct InceptionE {
    b1x1: BasicConv2d,
    b3x3_1: BasicConv2d,
    b3x3_2a: BasicConv2d,
    b3x3_2b: BasicConv2d,
    b3x3dbl_1: BasicConv2d,
    b3x3dbl_2: BasicConv2d,
    b3x3dbl_3a: BasicConv2d,
    b3x3dbl_3b: BasicConv2d,
    pool: BasicConv2d,
}

impl InceptionE {
    fn new(p: nn::Path, c_in: i64) -> Self {
        let r13 = |name: &str, ci, co| BasicConv2d::new(&p / name, ci, co, ConvSpec::rect([1, 3], [0, 1]));
        let r31 = |name: &str, ci, co| BasicConv2d::new(&p / name, ci, co, ConvSpec::rect([3, 1], [1, 0]));
        Self {
            b1x1: BasicConv2d::sq(&p / "branch1x1", c_in, 320, 1, 1, 0),
            b3x3_1: BasicConv2d::sq(&p / "branch3x3_1", c_in, 384, 1, 1, 0),
            b3x3_2a: r13("branch3x3_2a", 384, 384),
            b3x3_2b: r31("branch3x3_2b", 384, 384),
            b3x3dbl_1: BasicConv2d::sq(&p / "branch3x3dbl_1", c_in, 448, 1, 1, 0),
            b3x3dbl_2: BasicConv2d::sq(&p / "branch3x3dbl_2", 448, 384, 3, 1, 1),
            b3x3dbl_3a: r13("branch3x3dbl_3a", 384, 384),
            b3x3dbl_3b: r31("branch3x3dbl_3b", 384, 384),
            pool: BasicConv2d::sq(&p / "branch_pool", c_in, 192, 1, 1, 0),
        }
    }
    fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let b3 = self.b3x3_1.forward(ops, xs);
        let b3 = [self.b3x3_2a.forward(ops, &b3), self.b3x3_2b.forward(ops, &b3)];
        let b3 = ops.concat_channels(&b3);
        let bd = self.b3x3dbl_1.forward(ops, xs);
        let bd = self.b3x3dbl_2.forward(ops, &bd);
        let bd = [self.b3x3dbl_3a.forward(ops, &bd), self.b3x3dbl_3b.forward(ops, &bd)];
        let bd = ops.concat_channels(&bd);
        let branches = [self.b1x1.forward(ops, xs), b3, bd, pool_branch(ops, &self.pool, xs)];
        ops.concat_channels(&branches)
    }
}

/// A headless Inception-v3.
#[derive(Debug)]
pub struct InceptionV3 {
    stem: [BasicConv2d; 3],
    stem2: [BasicConv2d; 2],
    mixed5: [InceptionA; 3],
    mixed6a: InceptionB,
    mixed6: [InceptionC; 4],
    mixed7a: InceptionD,
    mixed7: [InceptionE; 2],
}

impl InceptionV3 {
    /// Width of the pooled features.
    pub const FEATURE_WIDTH: i64 = 2048;

    /// Creates the variables under `p` (randomly initialised until weights are loaded).
    pub fn new(p: &nn::Path) -> Self {
        Self {
            stem: [
                BasicConv2d::sq(p / "Conv2d_1a_3x3", 3, 32, 3, 2, 0),
                BasicConv2d::sq(p / "Conv2d_2a_3x3", 32, 32, 3, 1, 0),
                BasicConv2d::sq(p / "Conv2d_2b_3x3", 32, 64, 3, 1, 1),
            ],
            stem2: [BasicConv2d::sq(p / "Conv2d_3b_1x1", 64, 80, 1, 1, 0), BasicConv2d::sq(p / "Conv2d_4a_3x3", 80, 192, 3, 1, 0)],
            mixed5: [InceptionA::new(p / "Mixed_5b", 192, 32), InceptionA::new(p / "Mixed_5c", 256, 64), InceptionA::new(p / "Mixed_5d", 288, 64)],
            mixed6a: InceptionB::new(p / "Mixed_6a", 288),
            mixed6: [
                InceptionC::new(p / "Mixed_6b", 768, 128),
                InceptionC::new(p / "Mixed_6c", 768, 160),
                InceptionC::new(p / "Mixed_6d", 768, 160),
                InceptionC::new(p / "Mixed_6e", 768, 192),
            ],
            mixed7a: InceptionD::new(p / "Mixed_7a", 768),
            mixed7: [InceptionE::new(p / "Mixed_7b", 1280), InceptionE::new(p / "Mixed_7c", 2048)],
        }
    }

    /// Pooled features, `[N, 2048]`, for a normalised `[N, 3, 299, 299]` batch.
    pub fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let ys = chain(ops, &self.stem, xs);
        let ys = max_pool_3x3_s2(ops, &ys);
        let ys = chain(ops, &self.stem2, &ys);
        let mut ys = max_pool_3x3_s2(ops, &ys);
        for m in &self.mixed5 {
            ys = m.forward(ops, &ys);
        }
        ys = self.mixed6a.forward(ops, &ys);
        for m in &self.mixed6 {
            ys = m.forward(ops, &ys);
        }
        ys = self.mixed7a.forward(ops, &ys);
        for m in &self.mixed7 {
            ys = m.forward(ops, &ys);
        }
        ops.global_avg_pool(&ys)
    }
}

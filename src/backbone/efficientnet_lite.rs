//! EfficientNet-Lite0 without the classifier: 224x224 input, 1280 pooled features.
//!
//! The "lite" EfficientNet for mobile: ReLU6 instead of swish, no squeeze-excitation, a fixed
//! stem (32) and head (1280). The weights come from TensorFlow, so convolutions use TF's
//! "same" padding: stride-1 convolutions pad symmetrically, stride-2 ones pad
//! `max((ceil(i/s) - 1)·s + k - i, 0)` split with the extra pixel on the right and bottom, as
//! timm's `Conv2dSame`. BatchNorm eps is 1e-3.
//!
//! Variable names are timm's `tf_efficientnet_lite0` (`conv_stem`, `bn1`,
//! `blocks.1.0.conv_pw`, ..., `conv_head`, `bn2`).
//!
//! Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", 2019.

use tch::nn;

use super::layers::{ConvBn, ConvSpec};
use super::ops::Ops;

const BN_EPS: f64 = 1e-3;

/// One stage: block type, repeats, kernel, stride, expansion, output channels.
#[derive(Debug, Clone, Copy)]
struct Stage {
    depthwise_separable: bool,
    repeats: i64,
    kernel: i64,
    stride: i64,
    expand: i64,
    channels: i64,
}

const fn stage(depthwise_separable: bool, repeats: i64, kernel: i64, stride: i64, expand: i64, channels: i64) -> Stage {
    Stage { depthwise_separable, repeats, kernel, stride, expand, channels }
}

/// EfficientNet-Lite0's stages (timm's `ds_r1_k3_s1_e1_c16`, `ir_r2_k3_s2_e6_c24`, ...).
const LITE0: [Stage; 7] = [
    stage(true, 1, 3, 1, 1, 16),
    stage(false, 2, 3, 2, 6, 24),
    stage(false, 2, 5, 2, 6, 40),
    stage(false, 3, 3, 2, 6, 80),
    stage(false, 3, 5, 1, 6, 112),
    stage(false, 4, 5, 2, 6, 192),
    stage(false, 1, 3, 1, 6, 320),
];

/// `(stage, index in stage, depthwise-separable)` of each of Lite0's blocks, in order: how a
/// flat block numbering (`_blocks.7`) maps to timm's (`blocks.3.1`).
pub fn lite0_blocks() -> Vec<(usize, usize, bool)> {
    LITE0.iter().enumerate().flat_map(|(i, s)| (0..s.repeats as usize).map(move |r| (i, r, s.depthwise_separable))).collect()
}

/// Convolution with TF "same" padding, then inference BatchNorm, then ReLU6 if `act`.
#[derive(Debug)]
struct ConvBnAct {
    conv_bn: ConvBn,
    kernel: i64,
    stride: i64,
    act: bool,
}

impl ConvBnAct {
    #[allow(clippy::too_many_arguments)]
    fn new(conv: nn::Path, bn: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, groups: i64, act: bool) -> Self {
        // Stride 1 with an odd kernel: static symmetric padding. Otherwise padded in forward.
        let padding = if stride == 1 { (kernel - 1) / 2 } else { 0 };
        let spec = ConvSpec::square(kernel, stride, padding);
        ConvBnAct { conv_bn: ConvBn::grouped(conv, bn, c_in, c_out, spec, groups, BN_EPS), kernel, stride, act }
    }

    fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let ys = match self.same_padding(ops.spatial_size(xs)) {
            Some(pads) => {
                let padded = ops.pad(xs, pads);
                ops.conv_bn(&self.conv_bn, &padded)
            }
            None => ops.conv_bn(&self.conv_bn, xs),
        };
        if self.act {
            ops.relu6(&ys)
        } else {
            ys
        }
    }

    /// TF "same" padding `[top, bottom, left, right]` of a strided convolution for an `[H, W]`
    /// input, the extra pixel right and bottom; `None` where none is needed (stride 1 is padded
    /// by the convolution itself).
    fn same_padding(&self, [h, w]: [i64; 2]) -> Option<[i64; 4]> {
        if self.stride == 1 {
            return None;
        }
        let pad = |i: i64| (((i + self.stride - 1) / self.stride - 1) * self.stride + self.kernel - i).max(0);
        let (ph, pw) = (pad(h), pad(w));
        (ph > 0 || pw > 0).then_some([ph / 2, ph - ph / 2, pw / 2, pw - pw / 2])
    }
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // built once per backbone and never moved in a loop: boxing buys nothing
enum Block {
    /// Depthwise conv, pointwise projection.
    DepthwiseSeparable { dw: ConvBnAct, pw: ConvBnAct, skip: bool },
    /// Pointwise expansion, depthwise conv, pointwise projection.
    InvertedResidual { pw: ConvBnAct, dw: ConvBnAct, pwl: ConvBnAct, skip: bool },
}

impl Block {
    fn new(p: &nn::Path, s: &Stage, c_in: i64, stride: i64) -> Self {
        let skip = stride == 1 && c_in == s.channels;
        if s.depthwise_separable {
            Block::DepthwiseSeparable {
                dw: ConvBnAct::new(p / "conv_dw", p / "bn1", c_in, c_in, s.kernel, stride, c_in, true),
                pw: ConvBnAct::new(p / "conv_pw", p / "bn2", c_in, s.channels, 1, 1, 1, false),
                skip,
            }
        } else {
            let mid = c_in * s.expand;
            Block::InvertedResidual {
                pw: ConvBnAct::new(p / "conv_pw", p / "bn1", c_in, mid, 1, 1, 1, true),
                dw: ConvBnAct::new(p / "conv_dw", p / "bn2", mid, mid, s.kernel, stride, mid, true),
                pwl: ConvBnAct::new(p / "conv_pwl", p / "bn3", mid, s.channels, 1, 1, 1, false),
                skip,
            }
        }
    }

    fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let (ys, skip) = match self {
            Block::DepthwiseSeparable { dw, pw, skip } => {
                let y = dw.forward(ops, xs);
                (pw.forward(ops, &y), *skip)
            }
            Block::InvertedResidual { pw, dw, pwl, skip } => {
                let y = pw.forward(ops, xs);
                let y = dw.forward(ops, &y);
                (pwl.forward(ops, &y), *skip)
            }
        };
        if skip {
            ops.add(&ys, xs)
        } else {
            ys
        }
    }
}

/// A headless EfficientNet-Lite0.
#[derive(Debug)]
pub struct EfficientNetLite {
    stem: ConvBnAct,
    blocks: Vec<Block>,
    head: ConvBnAct,
}

impl EfficientNetLite {
    /// Width of the pooled features.
    pub const FEATURE_WIDTH: i64 = 1280;

    /// EfficientNet-Lite0, variables under `p` (random until weights are loaded).
    pub fn lite0(p: &nn::Path) -> Self {
        let stem = ConvBnAct::new(p / "conv_stem", p / "bn1", 3, 32, 3, 2, 1, true);
        let mut blocks = Vec::new();
        let mut c_in = 32;
        for (i, s) in LITE0.iter().enumerate() {
            for r in 0..s.repeats {
                let bp = p / "blocks" / i / r;
                blocks.push(Block::new(&bp, s, c_in, if r == 0 { s.stride } else { 1 }));
                c_in = s.channels;
            }
        }
        let head = ConvBnAct::new(p / "conv_head", p / "bn2", c_in, Self::FEATURE_WIDTH, 1, 1, 1, true);
        EfficientNetLite { stem, blocks, head }
    }

    /// Pooled features, `[N, 1280]`, for a normalised `[N, 3, 224, 224]` batch.
    pub fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let mut ys = self.stem.forward(ops, xs);
        for b in &self.blocks {
            ys = b.forward(ops, &ys);
        }
        let ys = self.head.forward(ops, &ys);
        ops.global_avg_pool(&ys)
    }
}

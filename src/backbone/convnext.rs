//! ConvNeXt without the classifier, as timm builds it: a 4x4 stride-4 "patchify" stem, four
//! stages of blocks (7x7 depthwise convolution, LayerNorm over the channels, an MLP with GELU,
//! a learned per-channel layer scale, a residual), 2x2 stride-2 downsampling between stages,
//! then global average pooling and the head's LayerNorm: timm's pre-logits vector.
//!
//! Variable names are timm's (`stem.0`, `stem.1`, `stages.1.downsample.0`,
//! `stages.0.blocks.0.conv_dw`, `.norm`, `.mlp.fc1`, `.mlp.fc2`, `.gamma`, `head.norm`).
//! LayerNorm eps is 1e-6.
//!
//! Liu et al., "A ConvNet for the 2020s", 2022.

use tch::{nn, Tensor};

use super::layers::{Conv, ConvSpec, LayerNorm, Linear};
use super::ops::Ops;

const LN_EPS: f64 = 1e-6;

/// A ConvNeXt's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvNextConfig {
    /// Blocks per stage.
    pub depths: [i64; 4],
    /// Channels per stage.
    pub dims: [i64; 4],
}

impl ConvNextConfig {
    /// ConvNeXt-T (768 features).
    pub fn tiny() -> Self {
        ConvNextConfig { depths: [3, 3, 9, 3], dims: [96, 192, 384, 768] }
    }

    /// ConvNeXt-B (1024 features).
    pub fn base() -> Self {
        ConvNextConfig { depths: [3, 3, 27, 3], dims: [128, 256, 512, 1024] }
    }
}

/// LayerNorm over the channels of an `[N, C, H, W]` map (timm's `LayerNorm2d`).
fn layer_norm_channels<O: Ops>(ops: &mut O, norm: &LayerNorm, x: &O::Value) -> O::Value {
    let t = ops.nchw_to_nhwc(x);
    let t = ops.layer_norm(norm, &t);
    ops.nhwc_to_nchw(&t)
}

#[derive(Debug)]
struct Block {
    conv_dw: Conv,
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    gamma: Tensor,
}

impl Block {
    fn new(p: &nn::Path, dim: i64) -> Self {
        Block {
            conv_dw: Conv::new(p / "conv_dw", dim, dim, ConvSpec::square(7, 1, 3), dim),
            norm: LayerNorm::new(p / "norm", dim, LN_EPS),
            fc1: Linear::new(p / "mlp" / "fc1", dim, 4 * dim),
            fc2: Linear::new(p / "mlp" / "fc2", 4 * dim, dim),
            gamma: p.var("gamma", &[dim], nn::Init::Uniform { lo: 0.5, up: 1.5 }),
        }
    }

    /// `x + gamma · mlp(norm(dwconv(x)))`, the MLP in channels-last order as timm runs it (the
    /// scale is applied before returning to `[N, C, H, W]`: the same products).
    fn forward<O: Ops>(&self, ops: &mut O, x: &O::Value) -> O::Value {
        let h = ops.conv(&self.conv_dw, x);
        let h = ops.nchw_to_nhwc(&h);
        let h = ops.layer_norm(&self.norm, &h);
        let h = ops.linear(&self.fc1, &h);
        let h = ops.gelu(&h);
        let h = ops.linear(&self.fc2, &h);
        let h = ops.scale_last(&h, &self.gamma);
        let h = ops.nhwc_to_nchw(&h);
        ops.add(x, &h)
    }
}

#[derive(Debug)]
struct Stage {
    downsample: Option<(LayerNorm, Conv)>,
    blocks: Vec<Block>,
}

/// A headless ConvNeXt.
#[derive(Debug)]
pub struct ConvNext {
    stem: Conv,
    stem_norm: LayerNorm,
    stages: Vec<Stage>,
    head_norm: LayerNorm,
}

impl ConvNext {
    /// Creates the variables under `p` (randomly initialised until weights are loaded).
    pub fn new(p: &nn::Path, cfg: ConvNextConfig) -> Self {
        let stem = Conv::new(p / "stem" / "0", 3, cfg.dims[0], ConvSpec::square(4, 4, 0), 1);
        let stem_norm = LayerNorm::new(p / "stem" / "1", cfg.dims[0], LN_EPS);
        let stages = (0..4)
            .map(|i| {
                let sp = p / "stages" / i;
                let dim = cfg.dims[i];
                let downsample = (i > 0).then(|| {
                    let prev = cfg.dims[i - 1];
                    (LayerNorm::new(&sp / "downsample" / "0", prev, LN_EPS), Conv::new(&sp / "downsample" / "1", prev, dim, ConvSpec::square(2, 2, 0), 1))
                });
                let blocks = (0..cfg.depths[i]).map(|b| Block::new(&(&sp / "blocks" / b), dim)).collect();
                Stage { downsample, blocks }
            })
            .collect();
        let head_norm = LayerNorm::new(p / "head" / "norm", cfg.dims[3], LN_EPS);
        ConvNext { stem, stem_norm, stages, head_norm }
    }

    /// Width of the features.
    pub fn feature_width(&self) -> i64 {
        self.head_norm.weight.size()[0]
    }

    /// Pooled, normalised features `[N, D]` for a normalised `[N, 3, S, S]` input.
    pub fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let x = ops.conv(&self.stem, xs);
        let mut x = layer_norm_channels(ops, &self.stem_norm, &x);
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                let t = layer_norm_channels(ops, norm, &x);
                x = ops.conv(conv, &t);
            }
            for block in &stage.blocks {
                x = block.forward(ops, &x);
            }
        }
        // Pooling first, then the head's LayerNorm2d on the 1x1 map: a LayerNorm of the vector.
        let pooled = ops.global_avg_pool(&x);
        ops.layer_norm(&self.head_norm, &pooled)
    }
}

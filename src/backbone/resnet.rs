//! ResNet-18/34/50/101/152 without the classifier: the input goes through the stem and four
//! stages, then global average pooling gives the penultimate features (512 or 2048 wide).
//!
//! Variable names are torchvision's, which timm's ResNet checkpoints share (`conv1`, `bn1`,
//! `layer1.0.conv1`, `layer1.0.downsample.0`, ...). BatchNorm eps is 1e-5.
//!
//! He et al., "Deep Residual Learning for Image Recognition", 2015.

use tch::nn;

use super::layers::{ConvBn, ConvSpec};
use super::ops::Ops;

const BN_EPS: f64 = 1e-5;

/// Basic blocks (two 3x3 convolutions) or bottlenecks (1x1, 3x3, 1x1 with 4x expansion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// ResNet-18 and -34.
    Basic,
    /// ResNet-50 and deeper.
    Bottleneck,
}

/// A ResNet's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Block type.
    pub block: BlockKind,
    /// Blocks in each of the four stages.
    pub layers: [i64; 4],
}

impl ResNetConfig {
    /// ResNet-18.
    pub fn resnet18() -> Self {
        Self { block: BlockKind::Basic, layers: [2, 2, 2, 2] }
    }
    /// ResNet-34.
    pub fn resnet34() -> Self {
        Self { block: BlockKind::Basic, layers: [3, 4, 6, 3] }
    }
    /// ResNet-50.
    pub fn resnet50() -> Self {
        Self { block: BlockKind::Bottleneck, layers: [3, 4, 6, 3] }
    }
    /// ResNet-101.
    pub fn resnet101() -> Self {
        Self { block: BlockKind::Bottleneck, layers: [3, 4, 23, 3] }
    }
    /// ResNet-152.
    pub fn resnet152() -> Self {
        Self { block: BlockKind::Bottleneck, layers: [3, 8, 36, 3] }
    }

    fn expansion(&self) -> i64 {
        match self.block {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }

    /// Width of the pooled features.
    pub fn feature_width(&self) -> i64 {
        512 * self.expansion()
    }
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // built once per backbone and never moved in a loop: boxing buys nothing
enum Block {
    Basic { c1: ConvBn, c2: ConvBn, downsample: Option<ConvBn> },
    Bottleneck { c1: ConvBn, c2: ConvBn, c3: ConvBn, downsample: Option<ConvBn> },
}

impl Block {
    fn new(p: &nn::Path, cfg: &ResNetConfig, c_in: i64, planes: i64, stride: i64) -> Self {
        let c_out = planes * cfg.expansion();
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            ConvBn::new(&d / "0", &d / "1", c_in, c_out, ConvSpec::square(1, stride, 0), BN_EPS)
        });
        let cb = |i: usize, c_in, c_out, spec| ConvBn::new(p / format!("conv{i}"), p / format!("bn{i}"), c_in, c_out, spec, BN_EPS);
        match cfg.block {
            BlockKind::Basic => Block::Basic {
                c1: cb(1, c_in, planes, ConvSpec::square(3, stride, 1)),
                c2: cb(2, planes, planes, ConvSpec::square(3, 1, 1)),
                downsample,
            },
            BlockKind::Bottleneck => Block::Bottleneck {
                c1: cb(1, c_in, planes, ConvSpec::square(1, 1, 0)),
                c2: cb(2, planes, planes, ConvSpec::square(3, stride, 1)),
                c3: cb(3, planes, c_out, ConvSpec::square(1, 1, 0)),
                downsample,
            },
        }
    }

    fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let (ys, downsample) = match self {
            Block::Basic { c1, c2, downsample } => {
                let y = ops.conv_bn_relu(c1, xs);
                (ops.conv_bn(c2, &y), downsample)
            }
            Block::Bottleneck { c1, c2, c3, downsample } => {
                let y = ops.conv_bn_relu(c1, xs);
                let y = ops.conv_bn_relu(c2, &y);
                (ops.conv_bn(c3, &y), downsample)
            }
        };
        let sum = match downsample {
            Some(d) => {
                let shortcut = ops.conv_bn(d, xs);
                ops.add(&ys, &shortcut)
            }
            None => ops.add(&ys, xs),
        };
        ops.relu(&sum)
    }
}

/// A headless ResNet.
#[derive(Debug)]
pub struct ResNet {
    stem: ConvBn,
    stages: Vec<Vec<Block>>,
    feature_width: i64,
}

impl ResNet {
    /// Creates the variables under `p` (randomly initialised until weights are loaded).
    pub fn new(p: &nn::Path, cfg: ResNetConfig) -> Self {
        let stem = ConvBn::new(p / "conv1", p / "bn1", 3, 64, ConvSpec::square(7, 2, 3), BN_EPS);
        let mut c_in = 64;
        let mut stages = Vec::with_capacity(4);
        for (i, (&blocks, planes)) in cfg.layers.iter().zip([64, 128, 256, 512]).enumerate() {
            let sp = p / format!("layer{}", i + 1);
            let stride = if i == 0 { 1 } else { 2 };
            let mut stage = Vec::with_capacity(blocks as usize);
            for b in 0..blocks {
                stage.push(Block::new(&(&sp / b), &cfg, c_in, planes, if b == 0 { stride } else { 1 }));
                c_in = planes * cfg.expansion();
            }
            stages.push(stage);
        }
        ResNet { stem, stages, feature_width: cfg.feature_width() }
    }

    /// Pooled features, `[N, feature_width]`, for a normalised `[N, 3, H, W]` batch.
    pub fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let stem = ops.conv_bn_relu(&self.stem, xs);
        let mut ys = ops.max_pool(&stem, 3, 2, 1);
        for stage in &self.stages {
            for block in stage {
                ys = block.forward(ops, &ys);
            }
        }
        ops.global_avg_pool(&ys)
    }

    /// Width of the features [`ResNet::forward`] returns.
    pub fn feature_width(&self) -> i64 {
        self.feature_width
    }
}

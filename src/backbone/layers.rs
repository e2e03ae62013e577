//! The building block shared by the backbones: a bias-free convolution followed by an
//! inference-mode BatchNorm.

use tch::{nn, Tensor};

/// Convolution geometry.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    /// Kernel size (height, width).
    pub kernel: [i64; 2],
    /// Stride (height, width).
    pub stride: [i64; 2],
    /// Zero padding (height, width).
    pub padding: [i64; 2],
}

impl ConvSpec {
    /// A square kernel `k` with `stride` and `padding` on both axes.
    pub fn square(k: i64, stride: i64, padding: i64) -> Self {
        ConvSpec { kernel: [k, k], stride: [stride, stride], padding: [padding, padding] }
    }

    /// A rectangular kernel with stride 1.
    pub fn rect(kernel: [i64; 2], padding: [i64; 2]) -> Self {
        ConvSpec { kernel, stride: [1, 1], padding }
    }
}

/// `conv` (no bias) then `bn`, with its own variable names for each.
#[derive(Debug)]
pub struct ConvBn {
    conv: nn::Conv<[i64; 2]>,
    bn: nn::BatchNorm,
}

impl ConvBn {
    /// Creates the pair; `conv` and `bn` are the variable paths of the two layers.
    pub fn new(conv: nn::Path, bn: nn::Path, c_in: i64, c_out: i64, spec: ConvSpec, bn_eps: f64) -> Self {
        let cfg = nn::ConvConfigND::<[i64; 2]> {
            stride: spec.stride,
            padding: spec.padding,
            bias: false,
            ..Default::default()
        };
        let conv = nn::conv(conv, c_in, c_out, spec.kernel, cfg);
        let bn = nn::batch_norm2d(bn, c_out, nn::BatchNormConfig { eps: bn_eps, ..Default::default() });
        ConvBn { conv, bn }
    }

    /// Convolution and BatchNorm with its running statistics (inference mode), no activation.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let ys = xs.apply(&self.conv);
        nn::ModuleT::forward_t(&self.bn, &ys, false)
    }
}

//! The building block shared by the backbones: a bias-free convolution followed by an
//! inference-mode BatchNorm, which is folded into the convolution (weights scaled, a bias
//! added) the first time it runs: one operation instead of two, the same result up to float
//! rounding.

use std::cell::OnceCell;

use tch::{nn, Kind, Tensor};

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
///
/// The folded weights are computed from the variables' values at the first forward pass, so
/// weights must be loaded (and the precision set) before the layer is run.
#[derive(Debug)]
pub struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    spec: ConvSpec,
    groups: i64,
    eps: f64,
    folded: OnceCell<(Tensor, Tensor)>,
}

impl ConvBn {
    /// Creates the pair; `conv` and `bn` are the variable paths of the two layers.
    pub fn new(conv: nn::Path, bn: nn::Path, c_in: i64, c_out: i64, spec: ConvSpec, bn_eps: f64) -> Self {
        Self::grouped(conv, bn, c_in, c_out, spec, 1, bn_eps)
    }

    /// The same with `groups` convolution groups (`groups == c_in` for depthwise).
    pub fn grouped(conv: nn::Path, bn: nn::Path, c_in: i64, c_out: i64, spec: ConvSpec, groups: i64, bn_eps: f64) -> Self {
        let cfg = nn::ConvConfigND::<[i64; 2]> {
            stride: spec.stride,
            padding: spec.padding,
            groups,
            bias: false,
            ..Default::default()
        };
        let conv = nn::conv(conv, c_in, c_out, spec.kernel, cfg);
        let bn = nn::batch_norm2d(bn, c_out, nn::BatchNormConfig { eps: bn_eps, ..Default::default() });
        ConvBn { conv, bn, spec, groups, eps: bn_eps, folded: OnceCell::new() }
    }

    /// `(weight, bias)` with the BatchNorm folded in, computed in f32 and stored in the
    /// weights' dtype and memory layout.
    pub fn folded(&self) -> &(Tensor, Tensor) {
        self.folded.get_or_init(|| {
            tch::no_grad(|| {
                let kind = self.conv.ws.kind();
                let f = |t: &Tensor| t.to_kind(Kind::Float);
                let gamma = self.bn.ws.as_ref().map(f).unwrap_or_else(|| f(&self.bn.running_var).ones_like());
                let beta = self.bn.bs.as_ref().map(f).unwrap_or_else(|| f(&self.bn.running_mean).zeros_like());
                let scale = gamma / (f(&self.bn.running_var) + self.eps).sqrt();
                let weight = f(&self.conv.ws) * scale.view([-1, 1, 1, 1]);
                let bias = beta - f(&self.bn.running_mean) * &scale;
                (weight.to_kind(kind), bias.to_kind(kind))
            })
        })
    }

    /// The convolution's geometry.
    pub fn spec(&self) -> ConvSpec {
        self.spec
    }

    /// Its number of groups.
    pub fn groups(&self) -> i64 {
        self.groups
    }

    /// Convolution and BatchNorm with its running statistics (inference mode), no activation.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let (w, b) = self.folded();
        xs.conv2d(w, Some(b), self.spec.stride, self.spec.padding, [1, 1], self.groups)
    }
}

/// A convolution with its own bias and no BatchNorm (ViT's patch embedding, ConvNeXt).
#[derive(Debug)]
pub struct Conv {
    conv: nn::Conv2D,
    spec: ConvSpec,
    groups: i64,
}

impl Conv {
    /// Creates the convolution's variables (`weight`, `bias`) under `p`.
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, spec: ConvSpec, groups: i64) -> Self {
        let cfg = nn::ConvConfigND::<[i64; 2]> { stride: spec.stride, padding: spec.padding, groups, bias: true, ..Default::default() };
        Conv { conv: nn::conv(p, c_in, c_out, spec.kernel, cfg), spec, groups }
    }

    /// `(weight, bias)`.
    pub fn parameters(&self) -> (&Tensor, &Tensor) {
        (&self.conv.ws, self.conv.bs.as_ref().expect("Conv is always created with a bias"))
    }

    /// The convolution's geometry.
    pub fn spec(&self) -> ConvSpec {
        self.spec
    }

    /// Its number of groups.
    pub fn groups(&self) -> i64 {
        self.groups
    }

    /// The convolution.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let (w, b) = self.parameters();
        xs.conv2d(w, Some(b), self.spec.stride, self.spec.padding, [1, 1], self.groups)
    }
}

/// A fully connected layer on the last axis, `x · weightᵀ + bias` (`weight` is `[out, in]`, as
/// PyTorch's `nn.Linear`).
#[derive(Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Tensor,
}

impl Linear {
    /// Creates `weight` and `bias` under `p`.
    pub fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        let l = nn::linear(p, c_in, c_out, Default::default());
        Linear { weight: l.ws, bias: l.bs.expect("nn::linear has a bias by default") }
    }

    /// Output width.
    pub fn out_features(&self) -> i64 {
        self.weight.size()[0]
    }

    /// The layer.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear(&self.weight, Some(&self.bias))
    }
}

/// Layer normalisation over the last axis, with a learned scale and shift.
#[derive(Debug)]
pub struct LayerNorm {
    /// Scale.
    pub weight: Tensor,
    /// Shift.
    pub bias: Tensor,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Creates `weight` and `bias` (width `dim`) under `p`.
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        let weight = p.var("weight", &[dim], nn::Init::Const(1.0));
        let bias = p.var("bias", &[dim], nn::Init::Const(0.0));
        LayerNorm { weight, bias, eps }
    }

    /// The normalisation.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let dim = *self.weight.size().last().expect("a LayerNorm has a width");
        xs.layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, false)
    }
}

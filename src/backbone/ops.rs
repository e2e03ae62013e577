//! The operations the backbones are written in.
//!
//! Each model's `forward` is generic over [`Ops`]: [`Eager`] runs the operations on tensors
//! (extraction, prediction, TorchScript tracing), and the ONNX exporter
//! ([`crate::export::onnx`]) records the same calls as graph nodes. One forward per model, so
//! an export cannot drift from what the features were computed with.

use tch::Tensor;

use super::layers::{Conv, ConvBn, LayerNorm, Linear};

/// What a backbone's forward pass needs. Values are `[N, C, H, W]` feature maps, `[N, T, C]`
/// token sequences (after [`Ops::tokens`]), `[N, H, W, C]` maps (after
/// [`Ops::nchw_to_nhwc`]), or `[N, C]` vectors (after [`Ops::global_avg_pool`] or
/// [`Ops::token`]).
pub trait Ops {
    /// A value flowing through the network.
    type Value;

    /// A convolution with its BatchNorm folded in ([`ConvBn`]), no activation.
    fn conv_bn(&mut self, layer: &ConvBn, x: &Self::Value) -> Self::Value;
    /// [`Ops::conv_bn`] then [`Ops::relu`].
    fn conv_bn_relu(&mut self, layer: &ConvBn, x: &Self::Value) -> Self::Value {
        let y = self.conv_bn(layer, x);
        self.relu(&y)
    }
    /// `max(x, 0)`.
    fn relu(&mut self, x: &Self::Value) -> Self::Value;
    /// `min(max(x, 0), 6)`.
    fn relu6(&mut self, x: &Self::Value) -> Self::Value;
    /// Element-wise sum of two values of one shape.
    fn add(&mut self, a: &Self::Value, b: &Self::Value) -> Self::Value;
    /// Concatenation along the channels.
    fn concat_channels(&mut self, xs: &[Self::Value]) -> Self::Value;
    /// Square max pooling, zero `padding` on every side, floor rounding.
    fn max_pool(&mut self, x: &Self::Value, kernel: i64, stride: i64, padding: i64) -> Self::Value;
    /// Square average pooling, floor rounding, padded pixels counted in the average (PyTorch's
    /// default `count_include_pad=True`).
    fn avg_pool(&mut self, x: &Self::Value, kernel: i64, stride: i64, padding: i64) -> Self::Value;
    /// Zero padding of the spatial axes: `[top, bottom, left, right]` pixels.
    fn pad(&mut self, x: &Self::Value, pads: [i64; 4]) -> Self::Value;
    /// `[H, W]` of a value.
    fn spatial_size(&self, x: &Self::Value) -> [i64; 2];
    /// Mean over the spatial axes: `[N, C, H, W]` to `[N, C]`.
    fn global_avg_pool(&mut self, x: &Self::Value) -> Self::Value;

    /// A convolution with its own bias ([`Conv`]).
    fn conv(&mut self, layer: &Conv, x: &Self::Value) -> Self::Value;
    /// [`Linear`] on the last axis.
    fn linear(&mut self, layer: &Linear, x: &Self::Value) -> Self::Value;
    /// [`LayerNorm`] over the last axis.
    fn layer_norm(&mut self, layer: &LayerNorm, x: &Self::Value) -> Self::Value;
    /// The exact GELU, `x · Φ(x)` with the error function (PyTorch's `approximate='none'`).
    fn gelu(&mut self, x: &Self::Value) -> Self::Value;
    /// `x · gamma`, with `gamma` `[C]` along the last axis (LayerScale).
    fn scale_last(&mut self, x: &Self::Value, gamma: &Tensor) -> Self::Value;
    /// `x + c` for a constant `c` whose leading (batch) axis is 1: position embeddings.
    fn add_constant(&mut self, x: &Self::Value, c: &Tensor) -> Self::Value;
    /// `[N, C, H, W]` to `[N, H, W, C]`.
    fn nchw_to_nhwc(&mut self, x: &Self::Value) -> Self::Value;
    /// `[N, H, W, C]` to `[N, C, H, W]`.
    fn nhwc_to_nchw(&mut self, x: &Self::Value) -> Self::Value;
    /// A feature map as a token sequence: `[N, C, H, W]` to `[N, H·W, C]`, row by row.
    fn tokens(&mut self, x: &Self::Value) -> Self::Value;
    /// Learned tokens `[1, k, C]` repeated for each item of `like`'s batch: `[N, k, C]`.
    fn batch_tokens(&mut self, like: &Self::Value, tokens: &Tensor) -> Self::Value;
    /// Token sequences joined along the token axis.
    fn concat_tokens(&mut self, xs: &[Self::Value]) -> Self::Value;
    /// Token `index` of `[N, T, C]`: `[N, C]`.
    fn token(&mut self, x: &Self::Value, index: i64) -> Self::Value;
    /// `x` cut into `parts` equal pieces along the last axis.
    fn split_last(&mut self, x: &Self::Value, parts: i64) -> Vec<Self::Value>;
    /// Multi-head scaled dot-product attention, softmax(q·kᵀ/√d)·v per head: `q` `[N, Tq, C]`,
    /// `k` and `v` `[N, Tk, C]`, `heads` heads of `C / heads` channels; gives `[N, Tq, C]`.
    fn attention(&mut self, q: &Self::Value, k: &Self::Value, v: &Self::Value, heads: i64) -> Self::Value;
}

/// Runs the operations on tensors, now.
#[derive(Debug, Default, Clone, Copy)]
pub struct Eager;

impl Ops for Eager {
    type Value = Tensor;

    fn conv_bn(&mut self, layer: &ConvBn, x: &Tensor) -> Tensor {
        layer.forward(x)
    }
    fn conv_bn_relu(&mut self, layer: &ConvBn, x: &Tensor) -> Tensor {
        // The convolution's output is fresh, so the ReLU can overwrite it.
        layer.forward(x).relu_()
    }
    fn relu(&mut self, x: &Tensor) -> Tensor {
        x.relu()
    }
    fn relu6(&mut self, x: &Tensor) -> Tensor {
        x.clamp(0.0, 6.0)
    }
    fn add(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        a + b
    }
    fn concat_channels(&mut self, xs: &[Tensor]) -> Tensor {
        Tensor::cat(xs, 1)
    }
    fn max_pool(&mut self, x: &Tensor, kernel: i64, stride: i64, padding: i64) -> Tensor {
        x.max_pool2d([kernel, kernel], [stride, stride], [padding, padding], [1, 1], false)
    }
    fn avg_pool(&mut self, x: &Tensor, kernel: i64, stride: i64, padding: i64) -> Tensor {
        x.avg_pool2d([kernel, kernel], [stride, stride], [padding, padding], false, true, None::<i64>)
    }
    fn pad(&mut self, x: &Tensor, [top, bottom, left, right]: [i64; 4]) -> Tensor {
        x.constant_pad_nd([left, right, top, bottom])
    }
    fn spatial_size(&self, x: &Tensor) -> [i64; 2] {
        let s = x.size();
        [s[2], s[3]]
    }
    fn global_avg_pool(&mut self, x: &Tensor) -> Tensor {
        x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
    fn conv(&mut self, layer: &Conv, x: &Tensor) -> Tensor {
        layer.forward(x)
    }
    fn linear(&mut self, layer: &Linear, x: &Tensor) -> Tensor {
        layer.forward(x)
    }
    fn layer_norm(&mut self, layer: &LayerNorm, x: &Tensor) -> Tensor {
        layer.forward(x)
    }
    fn gelu(&mut self, x: &Tensor) -> Tensor {
        x.gelu("none")
    }
    fn scale_last(&mut self, x: &Tensor, gamma: &Tensor) -> Tensor {
        x * gamma
    }
    fn add_constant(&mut self, x: &Tensor, c: &Tensor) -> Tensor {
        x + c
    }
    fn nchw_to_nhwc(&mut self, x: &Tensor) -> Tensor {
        x.permute([0, 2, 3, 1])
    }
    fn nhwc_to_nchw(&mut self, x: &Tensor) -> Tensor {
        x.permute([0, 3, 1, 2])
    }
    fn tokens(&mut self, x: &Tensor) -> Tensor {
        x.flatten(2, 3).transpose(1, 2)
    }
    fn batch_tokens(&mut self, like: &Tensor, tokens: &Tensor) -> Tensor {
        // Shaped after `like` rather than after its batch size read here, so that a trace (the
        // frozen engine, TorchScript export) keeps the batch size free instead of recording the
        // example's as a constant.
        let k = tokens.size()[1];
        if like.size()[1] >= k {
            tokens.expand_as(&like.narrow(1, 0, k))
        } else {
            tokens.expand([like.size()[0], -1, -1], false)
        }
    }
    fn concat_tokens(&mut self, xs: &[Tensor]) -> Tensor {
        Tensor::cat(xs, 1)
    }
    fn token(&mut self, x: &Tensor, index: i64) -> Tensor {
        x.select(1, index)
    }
    fn split_last(&mut self, x: &Tensor, parts: i64) -> Vec<Tensor> {
        x.chunk(parts, -1)
    }
    fn attention(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, heads: i64) -> Tensor {
        // Only the channel axis is split and joined: no batch or token count is read, so a
        // trace stays valid for any batch size.
        let c = *q.size().last().expect("attention takes [N, T, C] values");
        let split = |t: &Tensor| t.unflatten(-1, [heads, c / heads]).transpose(1, 2);
        let y = Tensor::scaled_dot_product_attention(&split(q), &split(k), &split(v), None::<Tensor>, 0.0, false, None, false);
        y.transpose(1, 2).flatten(2, 3)
    }
}

//! The operations the backbones are written in.
//!
//! Each model's `forward` is generic over [`Ops`]: [`Eager`] runs the operations on tensors
//! (extraction, prediction, TorchScript tracing), and the ONNX exporter
//! ([`crate::export::onnx`]) records the same calls as graph nodes. One forward per model, so
//! an export cannot drift from what the features were computed with.

use tch::Tensor;

use super::layers::ConvBn;

/// What a backbone's forward pass needs. Values are `[N, C, H, W]` until
/// [`Ops::global_avg_pool`], which gives `[N, C]`.
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
}

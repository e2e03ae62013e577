//! `lastlayer export --format onnx`: the whole classifier as an ONNX model.
//!
//! The backbone's own `forward` is replayed through [`OnnxGraph`], an [`Ops`] that records
//! each operation as an ONNX node instead of computing it (see [`crate::backbone::ops`]), so
//! the graph is the network the features came from. Convolutions carry their BatchNorm folded
//! in (exact up to float rounding, as in extraction). Around the backbone: the normalisation
//! (`Sub`, `Mul`) in front, the head (`Gemm`) and `Softmax` behind. A `--tta flip` run
//! runs the backbone on the pictures and their mirror images together (`Slice` with step -1,
//! `Concat`) and averages the two halves of the features.
//!
//! Input `image`: float32 `[N, 3, S, S]`, RGB values 0-255, resized (and cropped) as
//! `head.json`'s `preprocessing` says, `N` free. Output `probabilities`: float32
//! `[N, classes]`; for a run with an unknown threshold, a second output `score`: float32 `[N]`,
//! the in-class score (computed in float64 inside the graph, as `predict` does; see
//! [`crate::head::unknown`]). The class names and the preprocessing are in the model's metadata
//! (`lastlayer.classes`, `lastlayer.preprocessing`, JSON), and the threshold in
//! `lastlayer.unknown`.
//!
//! Opset 17, IR version 8: what onnxruntime 1.13 and later run.

pub mod proto;

use std::path::Path;

use prost::Message;
use tch::{Kind, Tensor};

use crate::backbone::layers::{Conv, ConvBn, ConvSpec, LayerNorm, Linear};
use crate::backbone::{Backbone, Ops, Precision};
use crate::error::{Error, IoContext, Result};
use crate::data::views::Tta;
use crate::export::HeadCard;
use crate::head::unknown::UnknownScore;
use crate::head::LinearHead;
use proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, tensor_shape_proto::dimension, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The default-domain opset the graph uses.
pub const OPSET: i64 = 17;
/// The IR version written (the first to carry opset 17).
pub const IR_VERSION: i64 = 8;
/// Name of the graph's input.
pub const INPUT: &str = "image";
/// Name of the graph's output.
pub const OUTPUT: &str = "probabilities";
/// Name of the graph's second output, the in-class score, in runs with an unknown threshold.
pub const SCORE_OUTPUT: &str = "score";

/// A value in the graph being recorded: its name and its shape without the batch axis
/// (`[C, H, W]`, or `[C]` after pooling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// The ONNX value name.
    pub name: String,
    /// Shape without the leading batch axis.
    pub shape: Vec<i64>,
}

/// Records [`Ops`] calls as ONNX nodes and initializers.
#[derive(Debug, Default)]
pub struct OnnxGraph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
    failure: Option<Error>,
    /// The initializers 0 and 6 every ReLU6 (`Clip`) shares, once made.
    clip_bounds: Option<(String, String)>,
}

fn float_attr(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Float as i32), f: Some(f), ..Default::default() }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Int as i32), i: Some(i), ..Default::default() }
}

fn ints_attr(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Ints as i32), ints: ints.to_vec(), ..Default::default() }
}

/// A float32 initializer from a tensor (any layout), in row-major order.
fn float_tensor(name: &str, t: &Tensor) -> Result<TensorProto> {
    let t = t.f_to_kind(Kind::Float)?.f_contiguous()?;
    let dims = t.size();
    let values = Vec::<f32>::try_from(t.f_flatten(0, -1)?)?;
    Ok(TensorProto {
        name: Some(name.into()),
        dims,
        data_type: Some(DataType::Float as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    })
}

/// A float64 initializer from a tensor (its f32 values widened), in row-major order.
fn double_tensor(name: &str, t: &Tensor) -> Result<TensorProto> {
    let t = t.f_to_kind(Kind::Double)?.f_contiguous()?;
    let dims = t.size();
    let values = Vec::<f64>::try_from(t.f_flatten(0, -1)?)?;
    Ok(TensorProto {
        name: Some(name.into()),
        dims,
        data_type: Some(DataType::Double as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    })
}

/// A float32 value's type, `[N, rest...]` with `N` named.
fn float_value_info(name: &str, rest: &[i64]) -> ValueInfoProto {
    let mut dim = vec![tensor_shape_proto::Dimension { value: Some(dimension::Value::DimParam("N".into())), ..Default::default() }];
    dim.extend(rest.iter().map(|&d| tensor_shape_proto::Dimension { value: Some(dimension::Value::DimValue(d)), ..Default::default() }));
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl OnnxGraph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    /// Adds an initializer; a failure to read the tensor is kept and reported by
    /// [`OnnxGraph::finish`] (the [`Ops`] methods cannot fail).
    fn initializer(&mut self, prefix: &str, t: &Tensor) -> String {
        let name = self.fresh(prefix);
        match float_tensor(&name, t) {
            Ok(p) => self.initializers.push(p),
            Err(e) => {
                self.failure.get_or_insert(e);
            }
        }
        name
    }

    /// Adds an int64 initializer of shape `dims`.
    fn int64_initializer(&mut self, prefix: &str, values: &[i64], dims: &[i64]) -> String {
        let name = self.fresh(prefix);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.to_vec(),
            data_type: Some(DataType::Int64 as i32),
            int64_data: values.to_vec(),
            ..Default::default()
        });
        name
    }

    /// Adds a float64 initializer holding `t`.
    fn double_initializer(&mut self, prefix: &str, t: &Tensor) -> String {
        let name = self.fresh(prefix);
        match double_tensor(&name, t) {
            Ok(p) => self.initializers.push(p),
            Err(e) => {
                self.failure.get_or_insert(e);
            }
        }
        name
    }

    /// A scalar float initializer.
    fn scalar(&mut self, prefix: &str, v: f32) -> String {
        self.initializer(prefix, &Tensor::from(v))
    }

    /// A convolution node with the given weight and bias tensors.
    fn conv_node(&mut self, x: &Symbol, w: &Tensor, b: &Tensor, spec: ConvSpec, groups: i64) -> Symbol {
        let weight = self.initializer("conv_weight", w);
        let bias = self.initializer("conv_bias", b);
        let [ph, pw] = spec.padding;
        let out = [
            w.size()[0],
            window_out(x.shape[1], spec.kernel[0], spec.stride[0], 2 * ph),
            window_out(x.shape[2], spec.kernel[1], spec.stride[1], 2 * pw),
        ];
        let attributes = vec![
            ints_attr("kernel_shape", &spec.kernel),
            ints_attr("strides", &spec.stride),
            ints_attr("pads", &[ph, pw, ph, pw]),
            ints_attr("dilations", &[1, 1]),
            int_attr("group", groups),
        ];
        self.node("Conv", vec![x.name.clone(), weight, bias], attributes, out.to_vec())
    }

    /// `Transpose` with `perm` over all axes (batch first, which stays first).
    fn transpose(&mut self, x: &Symbol, perm: &[i64]) -> Symbol {
        let shape = perm[1..].iter().map(|&a| x.shape[a as usize - 1]).collect();
        self.node("Transpose", vec![x.name.clone()], vec![ints_attr("perm", perm)], shape)
    }

    /// `Reshape` to `[N, rest...]` (the batch axis copied).
    fn reshape(&mut self, x: &Symbol, rest: &[i64]) -> Symbol {
        let mut target = vec![0];
        target.extend_from_slice(rest);
        let shape = self.int64_initializer("shape", &target, &[target.len() as i64]);
        self.node("Reshape", vec![x.name.clone(), shape], vec![], rest.to_vec())
    }

    /// Adds a node with one output of shape `shape` and returns that output.
    fn node(&mut self, op: &str, inputs: Vec<String>, attributes: Vec<AttributeProto>, shape: Vec<i64>) -> Symbol {
        let output = self.fresh(&op.to_ascii_lowercase());
        self.nodes.push(NodeProto {
            name: Some(output.clone()),
            op_type: Some(op.into()),
            input: inputs,
            output: vec![output.clone()],
            attribute: attributes,
            ..Default::default()
        });
        Symbol { name: output, shape }
    }

    /// Renames the last node's output (the graph's output gets a fixed name).
    fn rename_last_output(&mut self, name: &str) -> Result<()> {
        let node = self.nodes.last_mut().ok_or_else(|| Error::Export { message: "the ONNX graph has no nodes".into() })?;
        node.output = vec![name.into()];
        Ok(())
    }

    /// Renames the output of the node that made `symbol` (a graph output gets a fixed name).
    fn rename_output(&mut self, symbol: &Symbol, name: &str) -> Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.output.first() == Some(&symbol.name))
            .ok_or_else(|| Error::Export { message: format!("no node makes {}", symbol.name) })?;
        node.output = vec![name.into()];
        Ok(())
    }

    /// The in-class score of `features` (`[N, D]`), as [`UnknownScore::scores`] computes it:
    /// the standardised energy of the score head (`Gemm`, `ReduceLogSumExp`) plus the
    /// standardised Mahalanobis part (`Sub`, `MatMul` by the whitening, `Unsqueeze`, `Sub` of
    /// the whitened class means, `Mul`, `ReduceSum`, `ReduceMin`, times -1/D). `[N]`.
    fn unknown_score(&mut self, features: &Symbol, u: &UnknownScore) -> Symbol {
        // In float64 throughout, as predict computes it, then float32.
        let (c, d) = (u.means.size()[0], u.means.size()[1]);
        let x = self.node("Cast", vec![features.name.clone()], vec![int_attr("to", DataType::Double as i64)], vec![d]);
        let w = self.double_initializer("score_weight", &u.score_weight);
        let b = self.double_initializer("score_bias", &u.score_bias);
        let logits = self.node("Gemm", vec![x.name.clone(), w, b], vec![int_attr("transB", 1)], vec![c]);
        let energy = self.node("ReduceLogSumExp", vec![logits.name], vec![ints_attr("axes", &[1]), int_attr("keepdims", 0)], vec![]);
        let standardise = |g: &mut OnnxGraph, x: Symbol, s: crate::head::unknown::Standardise| {
            let mean = g.double_initializer("score_mean", &Tensor::from(s.mean));
            let centred = g.node("Sub", vec![x.name, mean], vec![], vec![]);
            let std = g.double_initializer("score_std", &Tensor::from(s.std));
            g.node("Div", vec![centred.name, std], vec![], vec![])
        };
        let energy = standardise(self, energy, u.card.energy);
        let centre = self.double_initializer("maha_centre", &u.centre);
        let centred = self.node("Sub", vec![x.name, centre], vec![], vec![d]);
        let whiten = self.double_initializer("maha_whiten", &u.whiten);
        let z = self.node("MatMul", vec![centred.name, whiten], vec![], vec![d]);
        let axis1 = self.int64_initializer("maha_axis", &[1], &[1]);
        let z = self.node("Unsqueeze", vec![z.name, axis1], vec![], vec![1, d]);
        let means = self.double_initializer("maha_means", &u.means);
        let diff = self.node("Sub", vec![z.name, means], vec![], vec![c, d]);
        let sq = self.node("Mul", vec![diff.name.clone(), diff.name], vec![], vec![c, d]);
        let axis2 = self.int64_initializer("maha_axis", &[2], &[1]);
        let d2 = self.node("ReduceSum", vec![sq.name, axis2], vec![int_attr("keepdims", 0)], vec![c]);
        let nearest = self.node("ReduceMin", vec![d2.name], vec![ints_attr("axes", &[1]), int_attr("keepdims", 0)], vec![]);
        let per_dim = self.double_initializer("maha_scale", &Tensor::from(-1.0 / d as f64));
        let maha = self.node("Mul", vec![nearest.name, per_dim], vec![], vec![]);
        let maha = standardise(self, maha, u.card.mahalanobis);
        let sum = self.node("Add", vec![energy.name, maha.name], vec![], vec![]);
        self.node("Cast", vec![sum.name], vec![int_attr("to", DataType::Float as i64)], vec![])
    }

    /// The recorded graph, or the first failure met while recording.
    fn finish(self, name: &str, input: ValueInfoProto, output: ValueInfoProto) -> Result<GraphProto> {
        if let Some(e) = self.failure {
            return Err(e);
        }
        Ok(GraphProto {
            name: Some(name.into()),
            node: self.nodes,
            initializer: self.initializers,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        })
    }
}

/// Output size of a window over `size` pixels with floor rounding.
fn window_out(size: i64, kernel: i64, stride: i64, pad_total: i64) -> i64 {
    (size + pad_total - kernel) / stride + 1
}

impl Ops for OnnxGraph {
    type Value = Symbol;

    fn conv_bn(&mut self, layer: &ConvBn, x: &Symbol) -> Symbol {
        let (w, b) = layer.folded();
        let (w, b) = (w.shallow_clone(), b.shallow_clone());
        self.conv_node(x, &w, &b, layer.spec(), layer.groups())
    }

    fn relu(&mut self, x: &Symbol) -> Symbol {
        self.node("Relu", vec![x.name.clone()], vec![], x.shape.clone())
    }

    fn relu6(&mut self, x: &Symbol) -> Symbol {
        let (lo, hi) = match &self.clip_bounds {
            Some(bounds) => bounds.clone(),
            None => {
                let bounds = (self.initializer("zero", &Tensor::from(0f32)), self.initializer("six", &Tensor::from(6f32)));
                self.clip_bounds = Some(bounds.clone());
                bounds
            }
        };
        self.node("Clip", vec![x.name.clone(), lo, hi], vec![], x.shape.clone())
    }

    fn add(&mut self, a: &Symbol, b: &Symbol) -> Symbol {
        self.node("Add", vec![a.name.clone(), b.name.clone()], vec![], a.shape.clone())
    }

    fn concat_channels(&mut self, xs: &[Symbol]) -> Symbol {
        let mut shape = xs[0].shape.clone();
        shape[0] = xs.iter().map(|x| x.shape[0]).sum();
        self.node("Concat", xs.iter().map(|x| x.name.clone()).collect(), vec![int_attr("axis", 1)], shape)
    }

    fn max_pool(&mut self, x: &Symbol, kernel: i64, stride: i64, padding: i64) -> Symbol {
        let shape = vec![x.shape[0], window_out(x.shape[1], kernel, stride, 2 * padding), window_out(x.shape[2], kernel, stride, 2 * padding)];
        let attributes = vec![ints_attr("kernel_shape", &[kernel, kernel]), ints_attr("strides", &[stride, stride]), ints_attr("pads", &[padding; 4])];
        self.node("MaxPool", vec![x.name.clone()], attributes, shape)
    }

    fn avg_pool(&mut self, x: &Symbol, kernel: i64, stride: i64, padding: i64) -> Symbol {
        let shape = vec![x.shape[0], window_out(x.shape[1], kernel, stride, 2 * padding), window_out(x.shape[2], kernel, stride, 2 * padding)];
        let attributes = vec![
            ints_attr("kernel_shape", &[kernel, kernel]),
            ints_attr("strides", &[stride, stride]),
            ints_attr("pads", &[padding; 4]),
            int_attr("count_include_pad", 1),
        ];
        self.node("AveragePool", vec![x.name.clone()], attributes, shape)
    }

    fn pad(&mut self, x: &Symbol, [top, bottom, left, right]: [i64; 4]) -> Symbol {
        // ONNX pads: every axis's start, then every axis's end (N, C, H, W).
        let pads = self.fresh("pads");
        self.initializers.push(TensorProto {
            name: Some(pads.clone()),
            dims: vec![8],
            data_type: Some(DataType::Int64 as i32),
            int64_data: vec![0, 0, top, left, 0, 0, bottom, right],
            ..Default::default()
        });
        let shape = vec![x.shape[0], x.shape[1] + top + bottom, x.shape[2] + left + right];
        self.node("Pad", vec![x.name.clone(), pads], vec![], shape)
    }

    fn spatial_size(&self, x: &Symbol) -> [i64; 2] {
        [x.shape[1], x.shape[2]]
    }

    fn global_avg_pool(&mut self, x: &Symbol) -> Symbol {
        let pooled = self.node("GlobalAveragePool", vec![x.name.clone()], vec![], vec![x.shape[0], 1, 1]);
        self.node("Flatten", vec![pooled.name], vec![int_attr("axis", 1)], vec![x.shape[0]])
    }

    fn conv(&mut self, layer: &Conv, x: &Symbol) -> Symbol {
        let (w, b) = layer.parameters();
        let (w, b) = (w.shallow_clone(), b.shallow_clone());
        self.conv_node(x, &w, &b, layer.spec(), layer.groups())
    }

    fn linear(&mut self, layer: &Linear, x: &Symbol) -> Symbol {
        // MatMul takes any rank (Gemm only 2-D); the weight is stored transposed, [in, out].
        let weight = self.initializer("linear_weight", &layer.weight.tr());
        let bias = self.initializer("linear_bias", &layer.bias);
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("a linear layer's input has a feature axis") = layer.out_features();
        let product = self.node("MatMul", vec![x.name.clone(), weight], vec![], shape.clone());
        self.node("Add", vec![product.name, bias], vec![], shape)
    }

    fn layer_norm(&mut self, layer: &LayerNorm, x: &Symbol) -> Symbol {
        let scale = self.initializer("ln_scale", &layer.weight);
        let bias = self.initializer("ln_bias", &layer.bias);
        let attributes = vec![int_attr("axis", -1), float_attr("epsilon", layer.eps as f32)];
        self.node("LayerNormalization", vec![x.name.clone(), scale, bias], attributes, x.shape.clone())
    }

    fn gelu(&mut self, x: &Symbol) -> Symbol {
        // x · (1 + erf(x / √2)) / 2: opset 17 has no Gelu operator.
        let sqrt2 = self.scalar("sqrt2", std::f32::consts::SQRT_2);
        let one = self.scalar("one", 1.0);
        let half = self.scalar("half", 0.5);
        let scaled = self.node("Div", vec![x.name.clone(), sqrt2], vec![], x.shape.clone());
        let erf = self.node("Erf", vec![scaled.name], vec![], x.shape.clone());
        let shifted = self.node("Add", vec![erf.name, one], vec![], x.shape.clone());
        let gated = self.node("Mul", vec![x.name.clone(), shifted.name], vec![], x.shape.clone());
        self.node("Mul", vec![gated.name, half], vec![], x.shape.clone())
    }

    fn scale_last(&mut self, x: &Symbol, gamma: &Tensor) -> Symbol {
        let gamma = self.initializer("gamma", gamma);
        self.node("Mul", vec![x.name.clone(), gamma], vec![], x.shape.clone())
    }

    fn add_constant(&mut self, x: &Symbol, c: &Tensor) -> Symbol {
        let c = self.initializer("constant", c);
        self.node("Add", vec![x.name.clone(), c], vec![], x.shape.clone())
    }

    fn nchw_to_nhwc(&mut self, x: &Symbol) -> Symbol {
        self.transpose(x, &[0, 2, 3, 1])
    }

    fn nhwc_to_nchw(&mut self, x: &Symbol) -> Symbol {
        self.transpose(x, &[0, 3, 1, 2])
    }

    fn tokens(&mut self, x: &Symbol) -> Symbol {
        let (c, h, w) = (x.shape[0], x.shape[1], x.shape[2]);
        let flat = self.reshape(x, &[c, h * w]);
        self.transpose(&flat, &[0, 2, 1])
    }

    fn batch_tokens(&mut self, like: &Symbol, tokens: &Tensor) -> Symbol {
        // Expand [1, k, C] to [N, k, C], N read from `like` at run time.
        let size = tokens.size();
        let tokens = self.initializer("tokens", tokens);
        let full = self.node("Shape", vec![like.name.clone()], vec![], vec![like.shape.len() as i64 + 1]);
        let (start, end) = (self.int64_initializer("start", &[0], &[1]), self.int64_initializer("end", &[1], &[1]));
        let batch = self.node("Slice", vec![full.name, start, end], vec![], vec![1]);
        let rest = self.int64_initializer("rest", &size[1..], &[size.len() as i64 - 1]);
        let target = self.node("Concat", vec![batch.name, rest], vec![int_attr("axis", 0)], vec![size.len() as i64]);
        self.node("Expand", vec![tokens, target.name], vec![], size[1..].to_vec())
    }

    fn concat_tokens(&mut self, xs: &[Symbol]) -> Symbol {
        let mut shape = xs[0].shape.clone();
        shape[0] = xs.iter().map(|x| x.shape[0]).sum();
        self.node("Concat", xs.iter().map(|x| x.name.clone()).collect(), vec![int_attr("axis", 1)], shape)
    }

    fn token(&mut self, x: &Symbol, index: i64) -> Symbol {
        let index = self.int64_initializer("index", &[index], &[]);
        self.node("Gather", vec![x.name.clone(), index], vec![int_attr("axis", 1)], x.shape[1..].to_vec())
    }

    fn split_last(&mut self, x: &Symbol, parts: i64) -> Vec<Symbol> {
        let width = *x.shape.last().expect("a value to split has a last axis") / parts;
        let axis = self.int64_initializer("axis", &[-1], &[1]);
        (0..parts)
            .map(|i| {
                let start = self.int64_initializer("start", &[i * width], &[1]);
                let end = self.int64_initializer("end", &[(i + 1) * width], &[1]);
                let mut shape = x.shape.clone();
                *shape.last_mut().expect("checked above") = width;
                self.node("Slice", vec![x.name.clone(), start, end, axis.clone()], vec![], shape)
            })
            .collect()
    }

    fn attention(&mut self, q: &Symbol, k: &Symbol, v: &Symbol, heads: i64) -> Symbol {
        let (tq, c) = (q.shape[0], q.shape[1]);
        let tk = k.shape[0];
        let d = c / heads;
        let q = self.reshape(q, &[tq, heads, d]);
        let q = self.transpose(&q, &[0, 2, 1, 3]);
        let k = self.reshape(k, &[tk, heads, d]);
        let k = self.transpose(&k, &[0, 2, 3, 1]);
        let v = self.reshape(v, &[tk, heads, d]);
        let v = self.transpose(&v, &[0, 2, 1, 3]);
        let scores = self.node("MatMul", vec![q.name, k.name], vec![], vec![heads, tq, tk]);
        let scale = self.scalar("scale", 1.0 / (d as f32).sqrt());
        let scores = self.node("Mul", vec![scores.name, scale], vec![], vec![heads, tq, tk]);
        let weights = self.node("Softmax", vec![scores.name], vec![int_attr("axis", -1)], vec![heads, tq, tk]);
        let y = self.node("MatMul", vec![weights.name, v.name], vec![], vec![heads, tq, d]);
        let y = self.transpose(&y, &[0, 2, 1, 3]);
        self.reshape(&y, &[tq, c])
    }
}

impl OnnxGraph {
    /// `[2N, ...]`: the pictures `x` (`[N, C, H, W]`), then their mirror images (a `Slice` of
    /// the width axis with step -1).
    fn with_mirror_images(&mut self, x: &Symbol) -> Symbol {
        let starts = self.int64_initializer("mirror_starts", &[-1], &[1]);
        let ends = self.int64_initializer("mirror_ends", &[i64::MIN], &[1]);
        let axes = self.int64_initializer("mirror_axes", &[3], &[1]);
        let steps = self.int64_initializer("mirror_steps", &[-1], &[1]);
        let mirrored = self.node("Slice", vec![x.name.clone(), starts, ends, axes, steps], vec![], x.shape.clone());
        self.node("Concat", vec![x.name.clone(), mirrored.name], vec![int_attr("axis", 0)], x.shape.clone())
    }

    /// `[N, D]` from `[2N, D]`: `(first half + second half) * 0.5`, as `--tta flip` averages
    /// a picture's and its mirror's features everywhere else.
    fn average_halves(&mut self, x: &Symbol) -> Symbol {
        let mut target = vec![2, -1];
        target.extend_from_slice(&x.shape);
        let shape = self.int64_initializer("halves_shape", &target, &[target.len() as i64]);
        let pairs = self.node("Reshape", vec![x.name.clone(), shape], vec![], x.shape.clone());
        let mut half = |i: i64| {
            let index = self.int64_initializer("half", &[i], &[]);
            self.node("Gather", vec![pairs.name.clone(), index], vec![int_attr("axis", 0)], x.shape.clone())
        };
        let (a, b) = (half(0), half(1));
        let sum = self.node("Add", vec![a.name, b.name], vec![], x.shape.clone());
        let half_scale = self.scalar("half_scale", 0.5);
        self.node("Mul", vec![sum.name, half_scale], vec![], x.shape.clone())
    }
}

/// The whole classifier (normalisation, backbone, head, softmax) as an ONNX model; see the
/// module documentation for its input and output. The backbone must be fp32.
///
/// With an unknown score (`unknown`), a second output `score` `[N]`: the in-class score as
/// `predict` computes it, its threshold in the metadata (`lastlayer.unknown`).
pub fn classifier_model(backbone: &Backbone, head: &LinearHead, unknown: Option<&UnknownScore>, card: &HeadCard) -> Result<ModelProto> {
    if backbone.precision() != Precision::Fp32 {
        return Err(Error::Export { message: "the ONNX export takes an fp32 backbone".into() });
    }
    let size = card.preprocessing.input_size;
    let (mean, scale) = card.preprocessing.normalization();
    let mut g = OnnxGraph::new();
    let mean = g.initializer("mean", &mean);
    let scale = g.initializer("scale", &scale);
    let input = Symbol { name: INPUT.into(), shape: vec![3, size, size] };
    let centred = g.node("Sub", vec![input.name.clone(), mean], vec![], input.shape.clone());
    let normalised = g.node("Mul", vec![centred.name, scale], vec![], input.shape.clone());
    let features = match card.data.tta {
        Tta::None => backbone.forward(&mut g, &normalised),
        Tta::Flip => {
            let both = g.with_mirror_images(&normalised);
            let features = backbone.forward(&mut g, &both);
            g.average_halves(&features)
        }
    };
    if features.shape != [head.feature_width()] {
        return Err(Error::Export { message: format!("the backbone gives {:?} features, the head takes {}", features.shape, head.feature_width()) });
    }
    let weight = g.initializer("head_weight", &head.weight);
    let bias = g.initializer("head_bias", &head.bias);
    let logits = g.node("Gemm", vec![features.name.clone(), weight, bias], vec![int_attr("transB", 1)], vec![head.classes()]);
    g.node("Softmax", vec![logits.name], vec![int_attr("axis", -1)], vec![head.classes()]);
    g.rename_last_output(OUTPUT)?;
    if let Some(u) = unknown {
        let score = g.unknown_score(&features, u);
        g.rename_output(&score, SCORE_OUTPUT)?;
    }

    let mut graph = g.finish(
        &format!("lastlayer_{}", card.backbone.model),
        float_value_info(INPUT, &[3, size, size]),
        float_value_info(OUTPUT, &[head.classes()]),
    )?;
    if unknown.is_some() {
        graph.output.push(float_value_info(SCORE_OUTPUT, &[]));
    }
    let meta = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("lastlayer".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!(
            "{} backbone and a {}-class head trained by lastlayer. Input '{INPUT}': float32 [N, 3, {size}, {size}] RGB 0-255, \
             resized as the 'lastlayer.preprocessing' metadata says. Output '{OUTPUT}': float32 [N, {}].",
            card.backbone.model,
            card.classes.len(),
            card.classes.len()
        )),
        graph: Some(graph),
        metadata_props: vec![
            meta("lastlayer.classes", to_json(&card.classes)?),
            meta("lastlayer.preprocessing", to_json(&card.preprocessing)?),
            meta("lastlayer.backbone", to_json(&card.backbone)?),
        ]
        .into_iter()
        .chain(match (unknown, &card.unknown) {
            (Some(_), Some(u)) => Some(meta("lastlayer.unknown", to_json(&serde_json::json!({
                "output": SCORE_OUTPUT,
                "threshold": u.threshold,
                "keep": u.keep,
                "method": u.method,
                "meaning": "higher = more like the training classes; a picture whose score is below the threshold is of none of the classes",
            }))?)),
            _ => None,
        })
        .collect(),
        ..Default::default()
    })
}

fn to_json(v: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Export { message: format!("metadata: {e}") })
}

/// Writes [`classifier_model`] to `out`, atomically.
pub fn export_onnx(backbone: &Backbone, head: &LinearHead, unknown: Option<&UnknownScore>, card: &HeadCard, out: &Path) -> Result<()> {
    let bytes = classifier_model(backbone, head, unknown, card)?.encode_to_vec();
    crate::fsutil::write_atomic_with(out, |tmp| std::fs::write(tmp, &bytes).at(tmp))
}

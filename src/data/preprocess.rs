//! Turning pictures into the normalised input tensors a backbone expects.
//!
//! Two resize modes:
//! - `stretch` (CIFAR-10): the whole 32x32 picture is resized to the model's input size, on
//!   float pixels, as `torch.nn.functional.interpolate(x, size, mode, align_corners=False)`.
//! - `shorter_side_center_crop` (a user's pictures, `predict`): timm's evaluation transform:
//!   resize the shorter side to `floor(input_size / crop_pct)` (antialiased when shrinking,
//!   rounded to 8-bit as torchvision does on uint8 pictures), then take the centre square.
//!
//! Then pixels are scaled to [0, 1] and normalised with the model's mean and std, RGB order.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};


/// How a picture is resampled when resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// Bilinear, `align_corners=False`.
    Bilinear,
    /// Bicubic (a = -0.75, as PyTorch), `align_corners=False`.
    Bicubic,
}

/// What a checkpoint expects as input, as timm's `pretrained_cfg` says: the registry gives it
/// per model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Square input size in pixels.
    pub input_size: i64,
    /// Resize interpolation the weights were trained with.
    pub interpolation: Interpolation,
    /// Centre-crop fraction used at evaluation time (timm's `crop_pct`).
    pub crop_pct: f64,
    /// Per-channel mean (RGB, on pixels scaled to [0, 1]).
    pub mean: [f64; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f64; 3],
}

/// How pictures are brought to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Resize {
    /// Resize the whole picture to input_size x input_size.
    Stretch,
    /// Resize the shorter side to `floor(input_size / crop_pct)`, then centre-crop.
    ShorterSideCenterCrop {
        /// timm's crop fraction.
        crop_pct: f64,
    },
}

/// Everything that determines the input tensor for a picture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Resize mode.
    pub resize: Resize,
    /// Square input size.
    pub input_size: i64,
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// Per-channel mean (RGB, pixels in [0, 1]).
    pub mean: [f64; 3],
    /// Per-channel std.
    pub std: [f64; 3],
}

impl Preprocessing {
    /// CIFAR-10: stretch with bilinear interpolation to the model's input size.
    pub fn stretch(input: &InputSpec) -> Self {
        Preprocessing {
            resize: Resize::Stretch,
            input_size: input.input_size,
            interpolation: Interpolation::Bilinear,
            mean: input.mean,
            std: input.std,
        }
    }

    /// A user's pictures: the model's own evaluation transform.
    pub fn center_crop(input: &InputSpec) -> Self {
        Preprocessing {
            resize: Resize::ShorterSideCenterCrop { crop_pct: input.crop_pct },
            input_size: input.input_size,
            interpolation: input.interpolation,
            mean: input.mean,
            std: input.std,
        }
    }

    /// Normalised `[N, 3, S, S]` f32 input for a `[N, 3, h, w]` uint8 batch of equal-sized pictures.
    pub fn batch(&self, pixels: &Tensor) -> Tensor {
        self.normalize(&self.resized(pixels))
    }

    /// The resize (and crop) step alone: `[N, 3, S, S]` f32 RGB values in 0-255, what an
    /// exported model (`lastlayer export`) takes as input.
    pub fn resized(&self, pixels: &Tensor) -> Tensor {
        match self.resize {
            Resize::Stretch => resize(&pixels.to_kind(Kind::Float), [self.input_size, self.input_size], self.interpolation, false),
            Resize::ShorterSideCenterCrop { crop_pct } => center_crop(&self.shorter_side(pixels, crop_pct), self.input_size),
        }
    }

    fn shorter_side(&self, pixels: &Tensor, crop_pct: f64) -> Tensor {
        let (h, w) = (pixels.size()[2], pixels.size()[3]);
        let short = (self.input_size as f64 / crop_pct).floor() as i64;
        let (oh, ow) = if h <= w { (short, (short as f64 * w as f64 / h as f64) as i64) } else { ((short as f64 * h as f64 / w as f64) as i64, short) };
        resize_8bit(pixels, [oh, ow], self.interpolation)
    }

    /// `(x / 255 - mean) / std` for 0-255 RGB values, on `x`'s device.
    pub fn normalize(&self, x: &Tensor) -> Tensor {
        let (mean, scale) = self.normalization();
        (x - mean.to_device(x.device())) * scale.to_device(x.device())
    }

    /// `(mean · 255, 1 / (std · 255))`, each `[1, 3, 1, 1]`: `normalize(x) = (x - a) · b`.
    /// (Made outside a TorchScript trace: tensors created from Rust data inside one are
    /// recorded without their values.)
    pub fn normalization(&self) -> (Tensor, Tensor) {
        let mean = Tensor::from_slice(&self.mean.map(|m| (m * 255.0) as f32)).view([1, 3, 1, 1]);
        let scale = Tensor::from_slice(&self.std.map(|s| (1.0 / (s * 255.0)) as f32)).view([1, 3, 1, 1]);
        (mean, scale)
    }
}

/// Resizes a float `[N, C, h, w]` batch; `antialias` applies when shrinking.
pub fn resize(x: &Tensor, size: [i64; 2], interpolation: Interpolation, antialias: bool) -> Tensor {
    let (h, w) = (x.size()[2], x.size()[3]);
    let shrink = size[0] < h || size[1] < w;
    match (interpolation, antialias && shrink) {
        (Interpolation::Bilinear, false) => x.upsample_bilinear2d(size, false, None, None),
        (Interpolation::Bilinear, true) => x.internal_upsample_bilinear2d_aa(size, false, None, None),
        (Interpolation::Bicubic, false) => x.upsample_bicubic2d(size, false, None, None),
        (Interpolation::Bicubic, true) => x.internal_upsample_bicubic2d_aa(size, false, None, None),
    }
}

/// Rows of a picture made float at a time by [`resize_8bit`]'s horizontal pass: 256 rows of a
/// 12,240-pixel-wide (100-megapixel) photo are 38 MB of floats, where the whole photo would be
/// 1.2 GB.
pub const RESIZE_ROWS: i64 = 256;

/// Resizes 0-255 pictures (`[N, C, h, w]`, any kind) as PIL and torchvision do on 8-bit
/// pictures: antialiased filters (PIL's cubic, a = -0.5), the horizontal pass first, each pass
/// rounded and clamped to 0-255; float out. The horizontal pass works on [`RESIZE_ROWS`] rows at
/// a time (it never mixes rows, so the result is the same), so that a big photo is never
/// wholly in floats.
pub fn resize_8bit(x: &Tensor, size: [i64; 2], interpolation: Interpolation) -> Tensor {
    let (h, w) = (x.size()[2], x.size()[3]);
    let pass = |x: &Tensor, size: [i64; 2]| {
        let x = x.to_kind(Kind::Float);
        let y = match interpolation {
            Interpolation::Bilinear => x.internal_upsample_bilinear2d_aa(size, false, None, None),
            Interpolation::Bicubic => x.internal_upsample_bicubic2d_aa(size, false, None, None),
        };
        y.round().clamp(0.0, 255.0)
    };
    let x = if size[1] == w {
        x.to_kind(Kind::Float)
    } else if h <= RESIZE_ROWS {
        pass(x, [h, size[1]])
    } else {
        let parts: Vec<Tensor> = (0..h).step_by(RESIZE_ROWS as usize).map(|r| pass(&x.narrow(2, r, RESIZE_ROWS.min(h - r)), [RESIZE_ROWS.min(h - r), size[1]])).collect();
        Tensor::cat(&parts, 2)
    };
    if size[0] != h {
        pass(&x, size)
    } else {
        x
    }
}

/// The centre `size x size` square, offsets rounded as torchvision's `CenterCrop` does.
pub fn center_crop(x: &Tensor, size: i64) -> Tensor {
    let (h, w) = (x.size()[2], x.size()[3]);
    if h < size || w < size {
        // Only possible when crop_pct > 1; pad like torchvision would be overkill: stretch.
        return x.upsample_bilinear2d([size, size], false, None, None);
    }
    // Python's round(): halves to even, so 106.5 -> 106 as in torchvision.
    let top = ((h - size) as f64 / 2.0).round_ties_even() as i64;
    let left = ((w - size) as f64 / 2.0).round_ties_even() as i64;
    x.narrow(2, top, size).narrow(3, left, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Registry;

    #[test]
    fn stretch_is_bilinear_align_corners_false() {
        // A 1x1x2x2 picture [[0, 255], [255, 0]] upsampled to 4x4: PyTorch gives edge rows
        // [0, 63.75, 191.25, 255] (align_corners=False), which we check before normalising.
        let x = Tensor::from_slice(&[0f32, 255.0, 255.0, 0.0]).view([1, 1, 2, 2]);
        let y = resize(&x, [4, 4], Interpolation::Bilinear, false);
        let row: Vec<f32> = Vec::<f32>::try_from(y.get(0).get(0).get(0)).unwrap();
        assert_eq!(row, vec![0.0, 63.75, 191.25, 255.0]);
    }

    #[test]
    fn batch_normalises_with_mean_and_std() {
        let entry = Registry::builtin().get("resnet18").unwrap().clone();
        let p = Preprocessing::stretch(&entry.input());
        let px = Tensor::full([1, 3, 32, 32], 255, (Kind::Uint8, tch::Device::Cpu));
        let y = p.batch(&px);
        assert_eq!(y.size(), vec![1, 3, 224, 224]);
        for c in 0..3 {
            let v = y.get(0).get(c).mean(Kind::Float).double_value(&[]);
            let want = (1.0 - entry.mean[c as usize]) / entry.std[c as usize];
            assert!((v - want).abs() < 1e-5, "channel {c}: {v} vs {want}");
        }
    }

    #[test]
    fn resizing_a_big_picture_a_band_of_rows_at_a_time_changes_nothing() {
        let x = Tensor::randint(256, [1, 3, 2 * RESIZE_ROWS + 37, 300], (Kind::Uint8, tch::Device::Cpu));
        for interpolation in [Interpolation::Bilinear, Interpolation::Bicubic] {
            let whole = {
                let f = x.to_kind(Kind::Float);
                let h = f.internal_upsample_bicubic2d_aa([f.size()[2], 90], false, None, None);
                let h = match interpolation {
                    Interpolation::Bilinear => f.internal_upsample_bilinear2d_aa([f.size()[2], 90], false, None, None),
                    Interpolation::Bicubic => h,
                };
                let h = h.round().clamp(0.0, 255.0);
                let v = match interpolation {
                    Interpolation::Bilinear => h.internal_upsample_bilinear2d_aa([120, 90], false, None, None),
                    Interpolation::Bicubic => h.internal_upsample_bicubic2d_aa([120, 90], false, None, None),
                };
                v.round().clamp(0.0, 255.0)
            };
            assert!(resize_8bit(&x, [120, 90], interpolation).equal(&whole), "{interpolation:?}");
        }
    }

    #[test]
    fn center_crop_takes_the_middle_after_shorter_side_resize() {
        let entry = Registry::builtin().get("resnet50").unwrap().clone();
        let p = Preprocessing::center_crop(&entry.input());
        let px = Tensor::zeros([1, 3, 300, 600], (Kind::Uint8, tch::Device::Cpu));
        assert_eq!(p.batch(&px).size(), vec![1, 3, 224, 224]);
    }
}

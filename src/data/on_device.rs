//! Preprocessing on the backbone's device. Decoded pictures stay uint8 at their stored size
//! ([`Pixels`]): a batch is packed into one buffer, pinned when the device is a GPU, copied
//! there in one non-blocking transfer, and resized and normalised there by
//! [`Preprocessing::batch`] itself, the same libtorch ops as on the CPU. A CIFAR-10 batch of
//! 256 crosses as 0.8 MB of bytes instead of 154 MB of 224x224 floats.
//!
//! Views of a picture (`--augment`, `--tta flip`) are made there too, from the same uint8
//! pictures ([`Preprocessing::views_on`]).
//!
//! On the CPU the result is exactly [`Preprocessing::batch`]'s (`tests/device_preprocess.rs`).
//! On CUDA the resize kernels are libtorch's CUDA ones, whose float arithmetic may differ from
//! the CPU kernels' in the last bit; `benches/gpu.sh` measures that difference.

use tch::{Device, Kind, Tensor};

use super::preprocess::Preprocessing;
use super::views::{mirror, ViewOp};
use crate::error::{Error, Result};

/// True when pictures for a backbone on `device` are preprocessed on that device (a GPU),
/// false when they are preprocessed on the CPU, by the thread that prepares the next batch.
/// `LASTLAYER_PREPROCESS=device` or `=cpu` overrides the choice: `device` on the CPU runs the
/// device path there (for tests), `cpu` on a GPU copies float inputs as before (to compare).
pub fn preprocesses_on(device: Device) -> bool {
    match std::env::var("LASTLAYER_PREPROCESS").as_deref() {
        Ok("device") => true,
        Ok("cpu") => false,
        _ => device.is_cuda(),
    }
}

/// Where preprocessing runs for a backbone on `device`, in words, for the log.
pub fn describe(device: Device) -> String {
    if preprocesses_on(device) {
        let pinned = if device.is_cuda() { " in pinned memory" } else { "" };
        format!("preprocessing on {device:?}: uint8 pictures cross{pinned}, resized and normalised there (views too)")
    } else {
        "preprocessing on the CPU".to_string()
    }
}

/// Decoded uint8 RGB pictures, packed in one flat buffer, in order: runs of equal-sized
/// pictures, each run `[n, 3, h, w]`.
#[derive(Debug)]
pub struct Pixels {
    bytes: Tensor,
    runs: Vec<[i64; 4]>,
}

impl Pixels {
    /// An `[N, 3, h, w]` uint8 batch of equal-sized pictures (CIFAR-10 records).
    pub fn batch(pixels: &Tensor) -> Result<Pixels> {
        let shape = four_d(pixels)?;
        Ok(Pixels { bytes: pixels.f_to_kind(Kind::Uint8)?.f_contiguous()?.f_view([-1])?, runs: vec![shape] })
    }

    /// Pictures of any sizes, each `[1, 3, h, w]` uint8 as [`crate::data::load_picture`] gives
    /// (consecutive pictures of the same size form one run, resized together).
    pub fn pictures(pictures: &[Tensor]) -> Result<Pixels> {
        let mut runs: Vec<[i64; 4]> = Vec::new();
        let mut flat = Vec::with_capacity(pictures.len());
        for p in pictures {
            let [n, c, h, w] = four_d(p)?;
            match runs.last_mut() {
                Some(last) if last[1..] == [c, h, w] => last[0] += n,
                _ => runs.push([n, c, h, w]),
            }
            flat.push(p.f_to_kind(Kind::Uint8)?.f_contiguous()?.f_view([-1])?);
        }
        let bytes = if flat.is_empty() { Tensor::zeros([0], (Kind::Uint8, Device::Cpu)) } else { Tensor::f_cat(&flat, 0)? };
        Ok(Pixels { bytes, runs })
    }

    /// How many pictures.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r[0] as usize).sum()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of pixels.
    pub fn byte_len(&self) -> usize {
        self.bytes.numel()
    }

    /// Ready to cross to `device`: for a CUDA device the buffer is copied into pinned
    /// (page-locked) host memory, which is what lets [`Pixels::to_device`] return before the
    /// transfer ends. A no-op for the CPU. Meant for the thread that prepares the next batch.
    pub fn staged_for(self, device: Device) -> Result<Pixels> {
        if !device.is_cuda() || self.bytes.device() != Device::Cpu {
            return Ok(self);
        }
        Ok(Pixels { bytes: self.bytes.f_pin_memory(device)?, runs: self.runs })
    }

    /// The same pictures on `device`, in one copy (non-blocking when the buffer is pinned:
    /// the device's stream orders it before the resize that reads it).
    pub fn to_device(&self, device: Device) -> Result<Pixels> {
        if self.bytes.device() == device {
            return Ok(Pixels { bytes: self.bytes.shallow_clone(), runs: self.runs.clone() });
        }
        let non_blocking = device.is_cuda() && self.bytes.f_is_pinned(device)?;
        Ok(Pixels { bytes: self.bytes.f_to_device_(device, Kind::Uint8, non_blocking, false)?, runs: self.runs.clone() })
    }

    /// Each picture as a `[1, 3, h, w]` view of the buffer, on the buffer's device.
    fn each(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.len());
        for run in self.runs()? {
            for i in 0..run.size()[0] {
                out.push(run.f_narrow(0, i, 1)?);
            }
        }
        Ok(out)
    }

    /// Each run as an `[n, 3, h, w]` view of the buffer, on the buffer's device.
    fn runs(&self) -> Result<Vec<Tensor>> {
        let mut offset = 0;
        let mut out = Vec::with_capacity(self.runs.len());
        for &shape in &self.runs {
            let len: i64 = shape.iter().product();
            out.push(self.bytes.f_narrow(0, offset, len)?.f_view(shape)?);
            offset += len;
        }
        Ok(out)
    }
}

impl Preprocessing {
    /// The normalised `[N, 3, S, S]` f32 input on `device` for `pixels`: they are copied there
    /// as uint8 and resized and normalised there, run by run, with the ops of
    /// [`Preprocessing::batch`].
    pub fn batch_on(&self, pixels: &Pixels, device: Device) -> Result<Tensor> {
        if pixels.is_empty() {
            return Err(Error::usage("--data", "no pictures to preprocess"));
        }
        let on_device = pixels.to_device(device)?;
        let parts: Vec<Tensor> = on_device.runs()?.iter().map(|run| self.batch(run)).collect();
        Ok(if parts.len() == 1 { parts.into_iter().next().expect("one part") } else { Tensor::f_cat(&parts, 0)? })
    }

    /// The normalised inputs `[rows, 3, S, S]` on `device` of view rows: `ops[i]` is row `i`'s
    /// picture (an index into `pixels`) and its view ([`Split::view_pixels`]). The pictures
    /// cross once, as uint8. Plain views (the picture itself, its mirror) come from one batched
    /// preprocessing of every picture, mirrored where asked (the normalisation is per channel,
    /// so mirroring after it is the same as before); crops and jitter are made picture by
    /// picture, with the ops of [`ViewOp::apply`].
    ///
    /// [`Split::view_pixels`]: super::Split::view_pixels
    pub fn views_on(&self, pixels: &Pixels, ops: &[(usize, ViewOp)], device: Device) -> Result<Tensor> {
        if ops.is_empty() || pixels.is_empty() {
            return Err(Error::usage("--data", "no pictures to preprocess"));
        }
        let on_device = pixels.to_device(device)?;
        let plain = ops.iter().any(|(_, op)| op.is_plain()).then(|| self.batch_on(&on_device, device)).transpose()?;
        let pictures = on_device.each()?;
        let rows: Vec<Tensor> = ops
            .iter()
            .map(|(p, op)| match &plain {
                Some(all) if op.is_plain() => {
                    let x = all.narrow(0, *p as i64, 1);
                    if op.mirror { mirror(&x) } else { x }
                }
                _ => op.apply(&pictures[*p], self),
            })
            .collect();
        Ok(Tensor::f_cat(&rows, 0)?)
    }
}

fn four_d(t: &Tensor) -> Result<[i64; 4]> {
    match t.size()[..] {
        [n, 3, h, w] if h > 0 && w > 0 => Ok([n, 3, h, w]),
        ref other => Err(Error::usage("pictures", format!("expected uint8 [N, 3, h, w] RGB pictures, got shape {other:?}"))),
    }
}

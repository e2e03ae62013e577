//! A backbone traced once, then frozen by libtorch's TorchScript passes and run with oneDNN
//! Graph fusion (`torch::jit::freeze`, then the fuser `torch.jit.enable_onednn_fusion` turns
//! on) or with `optimize_for_inference`; tch exposes none of these, so `crates/torch-shim/csrc/frozen.cpp` calls
//! them.
//!
//! With fusion, the profiling executor hands whole subgraphs (convolution, bias, ReLU, the
//! residual add) to oneDNN Graph, which runs each as one kernel on blocked layouts; the first
//! two calls of a shape are profiled and run unfused, so [`super::Backbone`] warms the module
//! up on zero batches before the first real one (and extraction pads its last batch to the
//! same shape): every real batch then runs the same fused graph. The graph is the one [`super::Eager`] traces, so
//! the features are the same up to float rounding (`tests/parity.rs` checks them against timm
//! through this path).

use std::ffi::c_void;
use std::ptr::NonNull;

use lastlayer_torch_shim::{ll_frozen_forward, ll_frozen_free, ll_frozen_from_traced};
use tch::Tensor;

use super::traced::{take_error, TracedModule};
use crate::error::{Error, Result};

/// A frozen, inference-optimised TorchScript module (single input, single tensor output).
#[derive(Debug)]
pub struct FrozenModule {
    module: NonNull<c_void>,
}

// SAFETY: a torch::jit::Module may be used from another thread; `FrozenModule` is not `Sync`,
// so it is never used from two at once.
unsafe impl Send for FrozenModule {}

impl FrozenModule {
    /// Traces `forward` on `example` (a single-input, single-output function of tch tensors),
    /// freezes the trace, then either turns oneDNN Graph fusion on (`fuse`; for the whole
    /// process) or applies `optimize_for_inference`. The trace stays in memory
    /// ([`TracedModule`]).
    pub fn trace(example: &Tensor, fuse: bool, forward: impl FnOnce(&Tensor) -> Tensor) -> Result<Self> {
        let traced = TracedModule::trace(c"backbone", "the backbone", example, forward)?;
        let mut error = std::ptr::null_mut();
        // SAFETY: `traced` is a live module (freed when it drops; the frozen module is a
        // clone); the shim catches every C++ exception.
        let frozen = unsafe { ll_frozen_from_traced(traced.as_ptr(), i32::from(fuse), &mut error) };
        NonNull::new(frozen)
            .map(|module| FrozenModule { module })
            .ok_or_else(|| Error::Torch(tch::TchError::Torch(format!("freezing the traced backbone: {}", take_error(error)))))
    }

    /// `forward(input)` under inference mode.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let mut error = std::ptr::null_mut();
        // SAFETY: `input.as_ptr()` is a live `at::Tensor*` for the call; the shim returns a new
        // `at::Tensor*` allocated with `new`, which `Tensor::from_ptr` owns and frees.
        let out = unsafe { ll_frozen_forward(self.module.as_ptr(), input.as_ptr(), &mut error) };
        if out.is_null() {
            return Err(Error::Torch(tch::TchError::Torch(take_error(error))));
        }
        // SAFETY: see above.
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}

impl Drop for FrozenModule {
    fn drop(&mut self) {
        // SAFETY: made by `ll_frozen_load`, freed once.
        unsafe { ll_frozen_free(self.module.as_ptr()) }
    }
}

//! A backbone traced once, then frozen by libtorch's TorchScript passes and run with oneDNN
//! Graph fusion (`torch::jit::freeze`, then the fuser `torch.jit.enable_onednn_fusion` turns
//! on) or with `optimize_for_inference`; tch exposes none of these, so `csrc/frozen.cpp` calls
//! them.
//!
//! With fusion, the profiling executor hands whole subgraphs (convolution, bias, ReLU, the
//! residual add) to oneDNN Graph, which runs each as one kernel on blocked layouts; the first
//! two calls of a shape are profiled and run unfused, so [`super::Backbone`] warms the module
//! up on zero batches before the first real one (and extraction pads its last batch to the
//! same shape): every real batch then runs the same fused graph. The graph is the one [`super::Eager`] traces, so
//! the features are the same up to float rounding (`tests/parity.rs` checks them against timm
//! through this path).

use std::ffi::{c_char, c_void, CStr};
use std::ptr::NonNull;

use tch::Tensor;

use crate::error::{Error, Result};

extern "C" {
    fn ll_frozen_from_traced(traced: *mut c_void, fuse: i32, error: *mut *mut c_char) -> *mut c_void;
    fn ll_frozen_forward(module: *mut c_void, input: *const torch_sys::C_tensor, error: *mut *mut c_char) -> *mut torch_sys::C_tensor;
    fn ll_frozen_free(module: *mut c_void);
    fn ll_free_string(s: *mut c_char);
}

/// Takes a C error string (if any) and frees it: the shim's, or tch's last error (both
/// NUL-terminated and malloc'd).
fn take_error(error: *mut c_char) -> String {
    if error.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a NUL-terminated malloc'd string, as above.
    let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    // SAFETY: allocated by the shim's malloc, freed once.
    unsafe { ll_free_string(error) };
    message
}

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
    /// process) or applies `optimize_for_inference`. The trace stays in memory: tch's
    /// `CModule::create_by_tracing` would do, but its module can only reach C++ through a file,
    /// and libtorch aborts the process when writing one fails (a full disk, say).
    pub fn trace(example: &Tensor, fuse: bool, forward: impl FnOnce(&Tensor) -> Tensor) -> Result<Self> {
        let torch_error = || {
            // SAFETY: tch's C API keeps its last error as a malloc'd string (or null), which is
            // taken and freed here, as tch itself does.
            let ptr = unsafe { torch_sys::get_and_reset_last_err() };
            if ptr.is_null() {
                return Ok(());
            }
            Err(Error::Torch(tch::TchError::Torch(format!("tracing the backbone: {}", take_error(ptr)))))
        };
        let inputs = [example.as_ptr() as *mut torch_sys::C_tensor];
        // SAFETY: valid C strings and a live input tensor; errors are read right after.
        let traced = unsafe { torch_sys::atm_create_for_tracing(c"backbone".as_ptr(), inputs.as_ptr(), 1) };
        torch_error()?;
        let output = forward(example);
        let outputs = [output.as_ptr() as *mut torch_sys::C_tensor];
        // SAFETY: `traced` came from `atm_create_for_tracing`; `output` is alive.
        unsafe { torch_sys::atm_end_tracing(traced, c"forward".as_ptr(), outputs.as_ptr(), 1) };
        let ended = torch_error();
        let mut error = std::ptr::null_mut();
        let frozen = match ended {
            // SAFETY: `traced` is a live module; the shim catches every C++ exception.
            Ok(()) => unsafe { ll_frozen_from_traced(traced.cast(), i32::from(fuse), &mut error) },
            Err(_) => std::ptr::null_mut(),
        };
        // SAFETY: made by `atm_create_for_tracing`, freed once; the frozen module is a clone.
        unsafe { torch_sys::atm_free(traced) };
        ended?;
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

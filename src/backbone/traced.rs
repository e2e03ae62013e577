//! A function of one tensor traced into a TorchScript module in memory, through torch-sys's
//! tracing calls. tch's `CModule::create_by_tracing` makes the same module, but it can reach
//! C++ only through a file, and libtorch's file writer aborts the whole process when a write
//! fails (a full disk, a file-size limit). The frozen engine freezes the trace
//! ([`super::frozen`]); the TorchScript export serialises it to bytes in memory
//! (`crates/torch-shim/csrc/save.cpp`) and writes them itself.

use std::ffi::{c_char, c_void, CStr};
use std::ptr::NonNull;

use lastlayer_torch_shim::{ll_free_bytes, ll_free_string, ll_module_pack_outputs, ll_module_save_bytes};
use tch::Tensor;

use crate::error::{Error, Result};

/// Takes a C error string (if any) and frees it: the shims', or tch's last error (both
/// NUL-terminated and malloc'd).
pub(super) fn take_error(error: *mut c_char) -> String {
    if error.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a NUL-terminated malloc'd string, as above.
    let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    // SAFETY: allocated by malloc, freed once.
    unsafe { ll_free_string(error) };
    message
}

/// tch's last error, if a call left one, as an error about `what`.
fn torch_error(what: &str) -> Result<()> {
    // SAFETY: tch's C API keeps its last error as a malloc'd string (or null), which is taken
    // and freed here, as tch itself does.
    let ptr = unsafe { torch_sys::get_and_reset_last_err() };
    if ptr.is_null() {
        return Ok(());
    }
    Err(Error::Torch(tch::TchError::Torch(format!("{what}: {}", take_error(ptr)))))
}

/// A traced TorchScript module (single input, single tensor output), owned.
#[derive(Debug)]
pub struct TracedModule {
    module: NonNull<torch_sys::CModule_>,
}

impl TracedModule {
    /// Traces `forward` on `example` into a module named `name` (its method is `forward`).
    /// `what` names the traced thing in errors.
    pub fn trace(name: &CStr, what: &str, example: &Tensor, forward: impl FnOnce(&Tensor) -> Tensor) -> Result<Self> {
        Self::trace_outputs(name, what, example, |x| vec![forward(x)])
    }

    /// [`TracedModule::trace`] of a `forward` with several outputs: the module's `forward`
    /// then returns them as a tuple.
    pub fn trace_outputs(name: &CStr, what: &str, example: &Tensor, forward: impl FnOnce(&Tensor) -> Vec<Tensor>) -> Result<Self> {
        let inputs = [example.as_ptr() as *mut torch_sys::C_tensor];
        // SAFETY: valid C strings and a live input tensor; errors are read right after.
        let traced = unsafe { torch_sys::atm_create_for_tracing(name.as_ptr(), inputs.as_ptr(), 1) };
        // Owned from here, so that it is freed whatever happens next.
        let module = NonNull::new(traced).map(|module| TracedModule { module });
        torch_error(&format!("tracing {what}"))?;
        let module = module.ok_or_else(|| Error::Torch(tch::TchError::Torch(format!("tracing {what}: no module"))))?;
        let produced = forward(example);
        let outputs: Vec<*mut torch_sys::C_tensor> = produced.iter().map(|t| t.as_ptr() as *mut torch_sys::C_tensor).collect();
        // SAFETY: a live module from `atm_create_for_tracing`; every output is alive.
        unsafe { torch_sys::atm_end_tracing(module.module.as_ptr(), c"forward".as_ptr(), outputs.as_ptr(), outputs.len() as i32) };
        torch_error(&format!("tracing {what}"))?;
        if outputs.len() > 1 {
            let mut error = std::ptr::null_mut();
            // SAFETY: a live module whose `forward` was just traced; the shim catches every C++
            // exception and sets `error` on failure.
            if unsafe { ll_module_pack_outputs(module.as_ptr(), c"forward".as_ptr(), &mut error) } != 0 {
                return Err(Error::Torch(tch::TchError::Torch(format!("tracing {what}: packing its outputs: {}", take_error(error)))));
            }
        }
        Ok(module)
    }

    /// The `torch::jit::Module*` for the C++ shims; it stays this module's.
    pub(super) fn as_ptr(&self) -> *mut c_void {
        self.module.as_ptr().cast()
    }

    /// The module as `torch.jit.save` writes it (a zip archive that `torch.jit.load` and
    /// `torch::jit::load` read), in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let (mut len, mut error) = (0usize, std::ptr::null_mut());
        // SAFETY: a live module; the shim catches every C++ exception and returns a malloc'd
        // buffer of `len` bytes, or null with `error` set.
        let bytes = unsafe { ll_module_save_bytes(self.as_ptr(), &mut len, &mut error) };
        if bytes.is_null() {
            return Err(Error::Torch(tch::TchError::Torch(format!("serialising the TorchScript module: {}", take_error(error)))));
        }
        // SAFETY: `len` bytes at `bytes`, copied before the buffer is freed, once.
        let out = unsafe { std::slice::from_raw_parts(bytes.cast::<u8>(), len) }.to_vec();
        unsafe { ll_free_bytes(bytes) };
        Ok(out)
    }
}

impl Drop for TracedModule {
    fn drop(&mut self) {
        // SAFETY: made by `atm_create_for_tracing`, freed once.
        unsafe { torch_sys::atm_free(self.module.as_ptr()) }
    }
}

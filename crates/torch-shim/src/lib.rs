//! The C functions of `csrc/`: libtorch calls that tch does not expose. Tensors cross as
//! torch-sys's `C_tensor` (an `at::Tensor*`), modules as `torch::jit::Module*`; errors come back
//! as malloc'd C strings that the caller frees with [`ll_free_string`]. lastlayer wraps them
//! safely in `backbone::frozen` and `backbone::traced`.

use std::ffi::{c_char, c_void};

extern "C" {
    /// Freezes the traced module (`torch::jit::freeze`), then turns oneDNN Graph fusion on
    /// (`fuse` != 0; for the whole process) or applies `optimize_for_inference`. Returns a new
    /// module, or null with `*error` set.
    pub fn ll_frozen_from_traced(traced: *mut c_void, fuse: i32, error: *mut *mut c_char) -> *mut c_void;
    /// Runs a frozen module on one tensor; null with `*error` set on failure.
    pub fn ll_frozen_forward(module: *mut c_void, input: *const torch_sys::C_tensor, error: *mut *mut c_char) -> *mut torch_sys::C_tensor;
    /// Frees a module from [`ll_frozen_from_traced`].
    pub fn ll_frozen_free(module: *mut c_void);
    /// Serialises a module as TorchScript to malloc'd bytes (`*len` of them); null with
    /// `*error` set on failure.
    pub fn ll_module_save_bytes(module: *mut c_void, len: *mut usize, error: *mut *mut c_char) -> *mut c_char;
    /// Frees bytes from [`ll_module_save_bytes`].
    pub fn ll_free_bytes(bytes: *mut c_char);
    /// Packs the outputs of the module's traced method `name` into one tuple; -1 with
    /// `*error` set on failure.
    pub fn ll_module_pack_outputs(module: *mut c_void, name: *const c_char, error: *mut *mut c_char) -> i32;
    /// Frees an error string.
    pub fn ll_free_string(s: *mut c_char);
}

//! Makes the `lastlayer` binaries find libtorch without `LD_LIBRARY_PATH`.
//!
//! torch-sys links `libtorch_cpu.so` and `libc10.so` from the pip-installed torch but sets no
//! rpath for downstream binaries; it exports the library folder to its direct dependents as
//! `DEP_TCH_LIBTORCH_LIB`, which is why `torch-sys` is listed in our own `[dependencies]`.
//!
//! The C++ shims over libtorch (`src/backbone/frozen.rs`, `src/backbone/traced.rs`) compile in
//! `crates/torch-shim`, whose build script runs while tch compiles; one here would wait for tch.
//!
//! It also generates the ONNX protobuf types from `proto/onnx.proto` (protox compiles the
//! schema in Rust, so no `protoc` binary is needed; prost-build writes the types).

use std::path::Path;

fn main() {
    generate_onnx_types();
    link_libtorch();
}

fn generate_onnx_types() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"]).expect("proto/onnx.proto must compile");
    prost_build::Config::new().compile_fds(descriptors).expect("prost-build must generate the ONNX types");
}

fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch folder; set LD_LIBRARY_PATH to run");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // The linker drops libtorch_cuda.so under --as-needed, as nothing references it directly,
    // and CUDA then reports itself unavailable. Keep it whenever the installed torch has it.
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        println!("cargo:rustc-cfg=lastlayer_has_cuda_lib");
    }
    println!("cargo:rustc-check-cfg=cfg(lastlayer_has_cuda_lib)");
}

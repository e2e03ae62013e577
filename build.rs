//! Makes the `lastlayer` binaries find libtorch without `LD_LIBRARY_PATH`.
//!
//! torch-sys links `libtorch_cpu.so` and `libc10.so` from the pip-installed torch but sets no
//! rpath for downstream binaries; it exports the library folder to its direct dependents as
//! `DEP_TCH_LIBTORCH_LIB`, which is why `torch-sys` is listed in our own `[dependencies]`.
//!
//! It compiles `csrc/frozen.cpp`, a few C functions over libtorch's `torch::jit::freeze` and
//! `optimize_for_inference` (see `src/backbone/frozen.rs`), and `csrc/save.cpp`, which
//! serialises a TorchScript module to bytes in memory (`src/backbone/traced.rs`), against the
//! same libtorch headers.
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
    compile_frozen_shim(Path::new(&lib_dir));
    // The linker drops libtorch_cuda.so under --as-needed, as nothing references it directly,
    // and CUDA then reports itself unavailable. Keep it whenever the installed torch has it.
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        println!("cargo:rustc-cfg=lastlayer_has_cuda_lib");
    }
    println!("cargo:rustc-check-cfg=cfg(lastlayer_has_cuda_lib)");
}

/// `csrc/frozen.cpp` and `csrc/save.cpp`, with the flags torch-sys uses for its own C++ wrapper.
fn compile_frozen_shim(lib_dir: &Path) {
    for file in ["csrc/frozen.cpp", "csrc/save.cpp", "csrc/shim.h"] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let include = lib_dir.parent().unwrap_or(lib_dir).join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").ok().or_else(python_cxx11_abi).unwrap_or_else(|| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("csrc/frozen.cpp")
        .file("csrc/save.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("lastlayer_frozen");
}

/// The C++ ABI the installed torch was built with (as torch-sys asks it).
fn python_cxx11_abi() -> Option<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python).args(["-c", "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

//! Compiles `csrc/all.cpp` (`frozen.cpp` and `save.cpp`: a few C functions over libtorch's
//! `torch::jit::freeze`, `optimize_for_inference`, oneDNN Graph fusion and the TorchScript
//! writer) against the libtorch that torch-sys links, with the flags torch-sys uses for its own
//! C++ wrapper.

use std::path::Path;

fn main() {
    for file in ["csrc/all.cpp", "csrc/frozen.cpp", "csrc/save.cpp", "csrc/shim.h"] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports its libtorch folder as DEP_TCH_LIBTORCH_LIB");
    let lib_dir = Path::new(&lib_dir);
    let include = lib_dir.parent().unwrap_or(lib_dir).join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").ok().or_else(python_cxx11_abi).unwrap_or_else(|| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("csrc/all.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("lastlayer_torch_shim");
}

/// The C++ ABI the installed torch was built with (as torch-sys asks it).
fn python_cxx11_abi() -> Option<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python).args(["-c", "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

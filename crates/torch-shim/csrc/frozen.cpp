// A TorchScript module frozen for inference, for lastlayer's CPU backbones.
//
// tch exposes TorchScript loading and tracing but not `torch::jit::freeze`, nor the two ways
// libtorch then speeds a frozen convolutional network up on the CPU, which these few
// functions call:
// - oneDNN Graph fusion (`torch.jit.enable_onednn_fusion(True)` in Python): the profiling
//   executor hands whole subgraphs (convolution + bias + ReLU + residual add) to oneDNN Graph,
//   which runs them as fused kernels on blocked layouts;
// - `torch::jit::optimize_for_inference`: convolutions become oneDNN ones with prepacked
//   weights, activations stay in oneDNN's blocked layout between them. Tensors cross as tch's `C_tensor`,
// which is an `at::Tensor*` (torch-sys's torch_api.h); errors come back as strings that the
// caller frees with `ll_free_string`.

#include <torch/csrc/jit/codegen/onednn/interface.h>
#include <torch/script.h>

#include <exception>
#include <string>

#include "shim.h"

using lastlayer::copy_string;

extern "C" {

// Freezes a traced module (a `torch::jit::Module*`, tch's `CModule_`, which stays the
// caller's) in eval mode; then, with `fuse` set, turns oneDNN Graph fusion on (for the whole
// process: every TorchScript graph run from then on may be fused), else applies
// `optimize_for_inference`. A new module, or null with `*error` set. Nothing touches the disk.
void* ll_frozen_from_traced(void* traced, int fuse, char** error) {
  try {
    torch::jit::Module module = static_cast<torch::jit::Module*>(traced)->clone();
    module.eval();
    torch::jit::Module frozen = torch::jit::freeze(module);
    // The fuser's switch is process-wide: set it either way, so that a module frozen without
    // fusion (after the fuser failed on it) is not fused all the same.
    torch::jit::RegisterLlgaFuseGraph::setEnabled(fuse != 0);
    if (fuse != 0) {
      return new torch::jit::Module(std::move(frozen));
    }
    torch::jit::Module optimised = torch::jit::optimize_for_inference(frozen);
    return new torch::jit::Module(std::move(optimised));
  } catch (const std::exception& e) {
    *error = copy_string(e.what());
    return nullptr;
  }
}

// `module.forward(input)` without autograd (oneDNN Graph fusion profiles the graph under
// no_grad, not under inference mode). A new tensor (owned by the caller), or null with
// `*error` set.
at::Tensor* ll_frozen_forward(void* module, const at::Tensor* input, char** error) {
  try {
    torch::NoGradGuard guard;
    auto* m = static_cast<torch::jit::Module*>(module);
    at::Tensor output = m->forward({*input}).toTensor();
    return new at::Tensor(std::move(output));
  } catch (const std::exception& e) {
    *error = copy_string(e.what());
    return nullptr;
  }
}

void ll_frozen_free(void* module) { delete static_cast<torch::jit::Module*>(module); }

void ll_free_string(char* s) { std::free(s); }

}  // extern "C"

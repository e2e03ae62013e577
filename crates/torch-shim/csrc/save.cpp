// A TorchScript module serialised to bytes in memory, as `torch.jit.save` writes it, for
// `lastlayer export --format torchscript`. libtorch's own file writer (tch's `CModule::save`)
// aborts the whole process when a write fails (a full disk, a file-size limit), so lastlayer
// writes these bytes itself, atomically, and reports such a failure as an error.

#include <torch/script.h>

#include <exception>
#include <sstream>
#include <string>

#include "shim.h"

extern "C" {

// `module` (a `torch::jit::Module*`, tch's `CModule_`, which stays the caller's) serialised:
// `*len` bytes at the returned malloc'd buffer, which the caller frees with `ll_free_bytes`;
// or null with `*error` set.
char* ll_module_save_bytes(void* module, size_t* len, char** error) {
  try {
    std::ostringstream out;
    static_cast<torch::jit::Module*>(module)->save(out);
    const std::string bytes = out.str();
    char* buffer = static_cast<char*>(std::malloc(bytes.size() == 0 ? 1 : bytes.size()));
    if (buffer == nullptr) {
      *error = lastlayer::copy_string("out of memory for the serialised module");
      return nullptr;
    }
    std::memcpy(buffer, bytes.data(), bytes.size());
    *len = bytes.size();
    return buffer;
  } catch (const std::exception& e) {
    *error = lastlayer::copy_string(e.what());
    return nullptr;
  }
}

void ll_free_bytes(char* bytes) { std::free(bytes); }

// Packs the outputs of `module`'s traced method `name` into one tuple (a traced graph with
// several registered outputs cannot be saved: a method returns one value). Returns 0, or -1
// with `*error` set.
int ll_module_pack_outputs(void* module, const char* name, char** error) {
  try {
    auto method = static_cast<torch::jit::Module*>(module)->get_method(name);
    auto& fn = torch::jit::toGraphFunction(method.function());
    auto graph = fn.graph();
    if (graph->outputs().size() > 1) {
      std::vector<torch::jit::Value*> outputs(graph->outputs().begin(), graph->outputs().end());
      auto tuple = graph->insertNode(graph->createTuple(outputs));
      while (!graph->outputs().empty()) graph->eraseOutput(0);
      graph->registerOutput(tuple->output());
      fn.setSchema(fn.getSchema().cloneWithReturns({c10::Argument("", tuple->output()->type())}));
    }
    return 0;
  } catch (const std::exception& e) {
    *error = lastlayer::copy_string(e.what());
    return -1;
  }
}

}  // extern "C"

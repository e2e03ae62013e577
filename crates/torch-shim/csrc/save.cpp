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

}  // extern "C"

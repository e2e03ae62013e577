// What lastlayer's C++ shims share: errors cross to Rust as malloc'd C strings, which the
// caller frees with `ll_free_string` (csrc/frozen.cpp).
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>

namespace lastlayer {
inline char* copy_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}
}  // namespace lastlayer

// The shims as one translation unit: libtorch's headers (<torch/script.h>) are most of the
// compile time, and are parsed once this way instead of once per file.
#include "frozen.cpp"
#include "save.cpp"

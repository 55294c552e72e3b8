#include "titan/core/build_info.h"

#include <dlfcn.h>

#include <cstddef>

#include "titan/core/error.h"

#ifdef TITAN_WITH_CUDA
#include <cuda_runtime_api.h>  // CUDART_VERSION: the runtime titan was built with
#endif

#ifndef TITAN_BUILD_ID
#define TITAN_BUILD_ID "unknown"
#endif

namespace titan {

namespace {
#ifdef TITAN_WITH_CUDA
// The version a run-time library reports, or why there is none (titan loads these on demand).
template <typename F, typename Format>
std::string loaded_version(const char* library, const char* symbol, Format format) {
  void* handle = dlopen(library, RTLD_LAZY | RTLD_LOCAL);
  if (!handle) return concat("not found (", library, ")");
  auto* get = reinterpret_cast<F>(dlsym(handle, symbol));
  const std::string out = get ? format(get) : concat(library, " without ", symbol);
  dlclose(handle);
  return out;
}
#endif
}  // namespace

std::string build_commit() { return TITAN_BUILD_ID; }

std::string version_text() {
  std::string out = concat("titan ", build_commit());
#ifdef TITAN_WITH_CUDA
  out += concat(" (cuda build, sm_90a; CUDA runtime ", CUDART_VERSION / 1000, ".", (CUDART_VERSION % 1000) / 10, ")\n");
  out += "NCCL: " + loaded_version<int (*)(int*)>("libnccl.so.2", "ncclGetVersion", [](int (*get)(int*)) {
           int v = 0;
           get(&v);
           return concat(v / 10000, ".", (v / 100) % 100, ".", v % 100);
         }) + "\n";
  out += "cuDNN: " + loaded_version<size_t (*)()>("libcudnn.so.9", "cudnnGetVersion", [](size_t (*get)()) {
           const size_t v = get();
           return concat(v / 10000, ".", (v / 100) % 100, ".", v % 100);
         }) + "\n";
#else
  out += " (cpu build: the float32 reference backend; no CUDA)\n";
#endif
  return out;
}

}  // namespace titan

#include "titan/ops/cpu/blas_kernels.h"

#include <cblas.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace titan::cpu {

namespace {
constexpr const char* kChosenBy = "TITAN_CHOSE_OPENBLAS_CORETYPE";  // marks the re-executed process

const char* better_kernels() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return nullptr;
}
}  // namespace

void reexec_with_known_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;  // the user's choice, or ours already
  const char* core = openblas_get_corename();
  if (core == nullptr || std::strcmp(core, "Prescott") != 0) return;
  const char* kernels = better_kernels();
  if (kernels == nullptr) return;
  // The binary's own path, not /proc/self/exe: the process keeps its name ("titan" in ps, which
  // launchers and the tests look for).
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return;
  self[n] = '\0';
  setenv("OPENBLAS_CORETYPE", kernels, 1);
  setenv(kChosenBy, "1", 1);
  execv(self, argv);
  unsetenv("OPENBLAS_CORETYPE");  // exec failed: go on with the generic kernels
  unsetenv(kChosenBy);
}

std::string blas_kernels_description() {
  const char* core = openblas_get_corename();
  std::string out = std::string("OpenBLAS ") + (core ? core : "?") + " kernels";
  if (std::getenv(kChosenBy)) out += " (OPENBLAS_CORETYPE set by titan: this OpenBLAS does not know the CPU)";
  return out;
}

}  // namespace titan::cpu

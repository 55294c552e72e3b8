// Which OpenBLAS kernels the CPU backend's GEMMs run. Debian's OpenBLAS picks its kernels at
// load time from the CPU model; a CPU newer than the library falls back to its generic
// "Prescott" (SSE3) kernels. On the Intel Xeon (family 6, model 207) of 2026-12-07 that ran the
// debug model's step at 0.9-1.0k tokens/s. The same build with OPENBLAS_CORETYPE=SkylakeX ran it
// at 2.6-2.8k: a measured reason to choose for the library where it cannot.
#pragma once
#include <string>

namespace titan::cpu {

// Where OpenBLAS fell back to its generic kernels on a CPU with AVX-512 (or AVX2 + FMA), and
// OPENBLAS_CORETYPE is unset: sets it to the matching kernels (SkylakeX, or Haswell) and
// re-executes this program, since OpenBLAS reads it only when it loads. Returns (doing nothing)
// otherwise, or when the re-execution fails. Call first thing in main, before any thread or
// MPI exists.
void reexec_with_known_blas_kernels(char** argv);
// OpenBLAS's kernels, and whether titan chose them ("SkylakeX (set by titan: ...)").
std::string blas_kernels_description();

}  // namespace titan::cpu

// Row-major sgemm on OpenMP's thread pool: OpenBLAS runs single-threaded inside each OpenMP
// thread, on a fixed split of the output. Measured on the 2-core CI machine (debug model,
// seq 512 x 2): letting OpenBLAS's own pthreads run beside OpenMP's spinning workers cost
// about a third of the step in sched_yield; one pool removes that.
#pragma once
#include <cstdint>

namespace titan::cpu {

// C[m, n] = alpha * op(A) op(B) + beta * C, with op = transpose where the flag is set.
// Splits the longer of m and n across threads; each element's sum order is fixed.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace titan::cpu

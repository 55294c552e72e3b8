#include "titan/ops/cpu/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <mutex>

namespace titan::cpu {

namespace {
void single_threaded_blas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

constexpr int64_t kAlign = 16;  // split points on multiples of 16 rows/columns
}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  single_threaded_blas();
  if (m == 0 || n == 0) return;
  const auto ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
  const bool split_m = m >= n;
  const int64_t extent = split_m ? m : n;
  const int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), (extent + kAlign - 1) / kAlign));
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t chunk = ((extent + nt - 1) / nt + kAlign - 1) / kAlign * kAlign;
    const int64_t begin = std::min(extent, t * chunk), end = std::min(extent, begin + chunk);
    if (begin < end) {
      if (split_m) {
        // Rows [begin, end) of C come from rows of op(A).
        const float* a_part = trans_a ? a + begin : a + begin * lda;
        cblas_sgemm(CblasRowMajor, ta, tb, end - begin, n, k, alpha, a_part, lda, b, ldb, beta,
                    c + begin * ldc, ldc);
      } else {
        // Columns [begin, end) of C come from columns of op(B).
        const float* b_part = trans_b ? b + begin * ldb : b + begin;
        cblas_sgemm(CblasRowMajor, ta, tb, m, end - begin, k, alpha, a, lda, b_part, ldb, beta,
                    c + begin, ldc);
      }
    }
  }
}

}  // namespace titan::cpu

#include "titan/ops/cuda/gemm.h"

#include "titan/ops/cuda/cuda_check.h"

namespace titan::cuda {

namespace {
// Hopper's cuBLASLt kernels want a workspace; 32 MiB is what PyTorch gives them there.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

void check_blas(cublasStatus_t status, const char* what, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw InternalError(concat(file, ":", line, ": ", what, ": cuBLAS status ", static_cast<int>(status), " (",
                               cublasLtGetStatusString(status), ")"));
}
}  // namespace

#define TITAN_CUBLAS_CHECK(call) check_blas((call), #call, __FILE__, __LINE__)

Gemm::Gemm(cudaStream_t stream) : stream_(stream), workspace_bytes_(kWorkspaceBytes) {
  TITAN_CUBLAS_CHECK(cublasLtCreate(&handle_));
  TITAN_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
}

Gemm::~Gemm() {
  auto destroy = [](Plan& p) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
  };
  for (auto& [key, p] : float8_plans_) destroy(p);
  for (auto& [key, p] : plans_) destroy(p);
  cudaFree(workspace_);
  cublasLtDestroy(handle_);
}

// cuBLASLt's first choice for the plan's descriptors within the workspace, into p.algo; false when
// it has none (the caller names the GEMM).
bool Gemm::choose_algorithm(Plan& p) {
  cublasLtMatmulPreference_t pref = nullptr;
  TITAN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  TITAN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                          &workspace_bytes_, sizeof workspace_bytes_));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  TITAN_CUBLAS_CHECK(st);
  if (found > 0) p.algo = result.algo;
  return found > 0;
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLASLt's first operand is
// our b and its second our a, each seen column-major with the same leading dimension.
Gemm::Plan& Gemm::plan_for(const Key& key) {
  if (auto it = plans_.find(key); it != plans_.end()) return it->second;
  const auto [trans_a, trans_b, m, n, k, c_type, accumulate] = key;
  Plan p;
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_first = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof op_first));
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof op_second));
  // First operand, column-major (n x k) after its op: stored b is row-major [k, n] (ld n) or [n, k] (ld k).
  if (trans_b) TITAN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, k, n, k));
  else TITAN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, n, k, n));
  // Second operand (k x m) after its op: stored a is row-major [m, k] (ld k) or [k, m] (ld m).
  if (trans_a) TITAN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, m, k, m));
  else TITAN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, k, m, k));
  const cudaDataType_t ct = c_type == static_cast<int>(OutType::f32) ? CUDA_R_32F : CUDA_R_16BF;
  TITAN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, ct, n, m, n));
  if (!choose_algorithm(p))
    throw InternalError(concat("cuBLASLt has no algorithm for a ", m, "x", n, "x", k, " GEMM (trans_a ", trans_a,
                               ", trans_b ", trans_b, ")"));
  (void)accumulate;
  return plans_.emplace(key, p).first->second;
}

// Column-major, cuBLASLt's view: D (m x n, ld m) = op(A) op(B) with A stored k x m (ld k) and
// transposed, B stored k x n (ld k): the "TN" layout, the only one Hopper's FP8 kernels take.
// Row-major, that is c [n, m] = a [m, k] . b [n, k]^T. Scales: SCALAR_32F (one float) or
// OUTER_VEC_32F (m floats for A, n for B; cuBLAS 12.9+), applied to the fp32 accumulator.
Gemm::Plan& Gemm::float8_plan_for(const Float8Key& key, const float* a_scale, const float* b_scale) {
  if (auto it = float8_plans_.find(key); it != float8_plans_.end()) return it->second;
  const auto [m, n, k, a_format, b_format, a_per_row, b_per_row, c_type, fast_accum] = key;
  auto fp8 = [](int f) { return f == static_cast<int>(float8::Format::e4m3) ? CUDA_R_8F_E4M3 : CUDA_R_8F_E5M2; };
  if (a_format == static_cast<int>(float8::Format::e5m2) && b_format == static_cast<int>(float8::Format::e5m2))
    throw InternalError("cuBLASLt has no e5m2 x e5m2 GEMM (the recipes never ask for one)");
  Plan p;
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t t = CUBLAS_OP_T, nt = CUBLAS_OP_N;
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof nt));
  const int8_t fast = fast_accum ? 1 : 0;
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
  const int32_t scalar = CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, vector = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
  const int32_t a_mode = a_per_row ? vector : scalar, b_mode = b_per_row ? vector : scalar;
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof a_mode));
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof b_mode));
  // Scale pointers before the heuristic, as NVIDIA's FP8 sample sets them (run_float8 re-sets them per call).
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof a_scale));
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof b_scale));
  TITAN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, fp8(a_format), k, m, k));
  TITAN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, fp8(b_format), k, n, k));
  TITAN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, c_type == static_cast<int>(OutType::f32) ? CUDA_R_32F : CUDA_R_16BF,
                                                m, n, m));
  if (!choose_algorithm(p))
    throw InternalError(concat("cuBLASLt has no float8 algorithm for a ", m, "x", n, "x", k, " GEMM (",
                               a_per_row || b_per_row ? "outer-vector" : "scalar", " scales)"));
  return float8_plans_.emplace(key, p).first->second;
}

void Gemm::run_float8(int64_t m, int64_t n, int64_t k, const Float8Operand& a, const Float8Operand& b, void* c,
                      OutType c_type, float beta, bool fast_accum) {
  if (m == 0 || n == 0) return;
  TITAN_CHECK(a.per_row == b.per_row, "a float8 GEMM with one operand scaled per row and the other per tensor");
  Plan& p = float8_plan_for({m, n, k, static_cast<int>(a.format), static_cast<int>(b.format), a.per_row, b.per_row,
                             static_cast<int>(c_type), fast_accum},
                            a.inv_scale, b.inv_scale);
  // The scale pointers change per call (each operand's own), so they are set here, not cached.
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a.inv_scale,
                                                    sizeof a.inv_scale));
  TITAN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b.inv_scale,
                                                    sizeof b.inv_scale));
  const float alpha = 1.0f;
  TITAN_CUBLAS_CHECK(cublasLtMatmul(handle_, p.op, &alpha, a.data, p.a, b.data, p.b, &beta, c, p.c, c, p.c, &p.algo,
                                    workspace_, workspace_bytes_, stream_));
}

void Gemm::run(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const bf16* a, const bf16* b, void* c,
               OutType c_type, float alpha, float beta) {
  if (m == 0 || n == 0) return;
  Plan& p = plan_for({trans_a, trans_b, m, n, k, static_cast<int>(c_type), beta != 0.0f});
  TITAN_CUBLAS_CHECK(cublasLtMatmul(handle_, p.op, &alpha, b, p.a, a, p.b, &beta, c, p.c, c, p.c, &p.algo, workspace_,
                                    workspace_bytes_, stream_));
}

}  // namespace titan::cuda

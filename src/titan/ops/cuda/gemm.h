// Row-major GEMMs through cuBLASLt: bf16 inputs, fp32 accumulation, bf16 or fp32 output.
// One Gemm per stream; descriptors and the heuristic's algorithm are cached per shape.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/float8.h"

namespace titan::cuda {

enum class OutType { bf16, f32 };

class Gemm {
 public:
  Gemm(cudaStream_t stream);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // c[m, n] = alpha * op(a) @ op(b) + beta * c, all row-major: op(a) is [m, k] (a stored
  // [k, m] when trans_a), op(b) is [k, n] (b stored [n, k] when trans_b).
  void run(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const bf16* a, const bf16* b, void* c,
           OutType c_type, float alpha, float beta);

  // One float8 operand: row-major [rows, k] bits (K-major, as Hopper's FP8 GEMMs take both
  // operands), its format, and its dequantisation factors (1 / scale) on the device: one, or
  // one per row (cuBLASLt's outer-vector scaling).
  struct Float8Operand {
    const uint8_t* data;
    float8::Format format;
    const float* inv_scale;
    bool per_row;
  };
  // c[n, m] (row-major) = (b [n, k] . a [m, k]^T) * the scales + beta * c. Both operands'
  // scales are scalars or both vectors (cuBLASLt's outer-vector mode takes no mix). `fast_accum`:
  // cuBLASLt's fast FP8 accumulation (torchao's forward uses it, its gradient GEMMs do not).
  void run_float8(int64_t m, int64_t n, int64_t k, const Float8Operand& a, const Float8Operand& b, void* c,
                  OutType c_type, float beta, bool fast_accum);

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int, bool>;
  Plan& plan_for(const Key& key);
  bool choose_algorithm(Plan& p);
  // m, n, k, a format, b format, a per row, b per row, c type, fast accumulation
  using Float8Key = std::tuple<int64_t, int64_t, int64_t, int, int, bool, bool, int, bool>;
  Plan& float8_plan_for(const Float8Key& key, const float* a_scale, const float* b_scale);
  std::map<Float8Key, Plan> float8_plans_;

  cudaStream_t stream_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan> plans_;
};

}  // namespace titan::cuda

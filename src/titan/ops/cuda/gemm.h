// Row-major GEMMs through cuBLASLt: bf16 inputs, fp32 accumulation, bf16 or fp32 output.
// One Gemm per stream; descriptors and the heuristic's algorithm are cached per shape.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "titan/ops/cuda/cuda_ops.h"

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

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int, bool>;
  Plan& plan_for(const Key& key);

  cudaStream_t stream_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan> plans_;
};

}  // namespace titan::cuda

// GPU casts against the CPU conversion, on fresh random inputs with poisoned outputs.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "titan/core/dtype.h"
#include "titan/core/rng.h"
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"

using namespace titan;

TEST(CudaCast, MatchesCpuRoundToNearestEven) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  for (int64_t n : {1L, 255L, 1000003L}) {
    NamedStream s(static_cast<uint64_t>(n), "cast");
    std::vector<float> x(n);
    for (int64_t i = 0; i < n; ++i) x[i] = s.normal(i) * std::ldexp(1.0f, static_cast<int>(i % 40) - 20);
    float* dx = nullptr;
    uint16_t* dy = nullptr;
    float* dz = nullptr;
    TITAN_CUDA_CHECK(cudaMalloc(&dx, n * sizeof(float)));
    TITAN_CUDA_CHECK(cudaMalloc(&dy, n * sizeof(uint16_t)));
    TITAN_CUDA_CHECK(cudaMalloc(&dz, n * sizeof(float)));
    TITAN_CUDA_CHECK(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    TITAN_CUDA_CHECK(cudaMemset(dy, 0xff, n * sizeof(uint16_t)));  // poison: bf16 NaN
    TITAN_CUDA_CHECK(cudaMemset(dz, 0xff, n * sizeof(float)));
    cuda::cast_f32_to_bf16(dx, dy, n, nullptr);
    cuda::cast_bf16_to_f32(dy, dz, n, nullptr);
    std::vector<uint16_t> y(n);
    std::vector<float> z(n);
    TITAN_CUDA_CHECK(cudaMemcpy(y.data(), dy, n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    TITAN_CUDA_CHECK(cudaMemcpy(z.data(), dz, n * sizeof(float), cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(y[i], f32_to_bf16(x[i])) << "element " << i << " of " << n;
      ASSERT_EQ(z[i], bf16_to_f32(y[i])) << "element " << i << " of " << n;
    }
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(dz);
  }
}

// Helpers for the GPU tests: device arrays with poisoned contents, fresh random inputs, bf16
// rounding on the host, and relative L2 errors.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "titan/core/dtype.h"
#include "titan/core/rng.h"
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"

namespace titan::gpu_test {

// Skips the test, saying why, on machines without a GPU.
#define TITAN_REQUIRE_GPU() \
  if (::titan::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine"

// A new seed per run (printed on failure), so every run checks fresh inputs.
inline uint64_t fresh_seed() {
  static const uint64_t seed = std::random_device{}();
  return seed;
}

inline std::vector<float> randn(const std::string& name, int64_t n, float scale = 1.0f) {
  NamedStream s(fresh_seed(), name);
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = scale * s.normal(i);
  return v;
}

// Rounds to bf16 in place (so CPU references see exactly the GPU's inputs); returns the bits.
inline std::vector<uint16_t> to_bf16(std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    b[i] = f32_to_bf16(v[i]);
    v[i] = bf16_to_f32(b[i]);
  }
  return b;
}

inline std::vector<float> from_bf16(const std::vector<uint16_t>& b) {
  std::vector<float> v(b.size());
  for (size_t i = 0; i < b.size(); ++i) v[i] = bf16_to_f32(b[i]);
  return v;
}

// ||got - want|| / ||want||; NaN anywhere (an unwritten, poisoned element) gives infinity.
inline double rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) {
    TITAN_CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T)));
    poison();
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host); }
  ~DeviceArray() { cudaFree(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  // All bits set: NaN for f32 and bf16, so any element a kernel forgets to write shows.
  void poison() { TITAN_CUDA_CHECK(cudaMemset(p_, 0xff, std::max<size_t>(n_, 1) * sizeof(T))); }
  void upload(const std::vector<T>& host) {
    TITAN_CUDA_CHECK(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    TITAN_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> host(n_);
    TITAN_CUDA_CHECK(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  size_t n_;
};

}  // namespace titan::gpu_test

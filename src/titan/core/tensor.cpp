#include "titan/core/tensor.h"

#include <cmath>

#include <cstdlib>
#include <cstring>
#include <new>

namespace titan {

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  TITAN_CHECK(device == Device::cpu, "CUDA storage comes with the CUDA backend");
  constexpr size_t kAlign = 64;  // one cache line; also enough for AVX-512 loads
  size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  data_ = std::aligned_alloc(kAlign, rounded == 0 ? kAlign : rounded);
  if (!data_) throw std::bad_alloc();
  std::memset(data_, 0, rounded == 0 ? kAlign : rounded);
}

Storage::~Storage() { std::free(data_); }

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  for (int64_t d : shape) TITAN_CHECK(d >= 0, "negative dimension in ", shape_str(shape));
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::make_shared<Storage>(t.bytes(), device);
  return t;
}

Tensor Tensor::view_of(const Tensor& base, Shape shape, int64_t offset) {
  TITAN_CHECK(base.defined(), "view of an undefined tensor");
  Tensor t = base;
  t.shape_ = std::move(shape);
  t.offset_ = base.offset_ + offset;
  TITAN_CHECK((t.offset_ + t.numel()) * dtype_size(t.dtype_) <= base.storage_->bytes(), "view ",
              shape_str(t.shape_), " at offset ", offset, " exceeds its storage");
  return t;
}

void Tensor::zero_() { std::memset(data<char>(), 0, bytes()); }

int64_t first_nonfinite(const float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) return i;
  return -1;
}

}  // namespace titan

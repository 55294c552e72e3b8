// A dense, contiguous, row-major tensor. Storage is shared between views of the same memory
// (a parameter's full weight aliases its master shard at world size 1).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "titan/core/dtype.h"
#include "titan/core/error.h"

namespace titan {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);
// Index of the first inf or NaN among n floats, or -1 (checkpoints, exports and verify refuse them).
int64_t first_nonfinite(const float* v, int64_t n);

// Host memory aligned for vector loads; released when the last tensor using it goes.
class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;
  // Allocates zero-filled storage.
  static Tensor zeros(Shape shape, DType dtype = DType::f32, Device device = Device::cpu);
  // A view of `numel(shape)` elements of `base` starting at element `offset`.
  static Tensor view_of(const Tensor& base, Shape shape, int64_t offset = 0);

  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t bytes() const { return numel() * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool defined() const { return storage_ != nullptr; }

  template <typename T>
  T* data() const {
    TITAN_CHECK(storage_ != nullptr, "data() of an undefined tensor");
    return reinterpret_cast<T*>(static_cast<char*>(storage_->data()) + offset_ * dtype_size(dtype_));
  }
  float* f32() const {
    TITAN_CHECK(dtype_ == DType::f32, "tensor is ", dtype_name(dtype_), ", expected float32");
    return data<float>();
  }
  void zero_();
  bool shares_storage(const Tensor& o) const { return storage_ && storage_ == o.storage_; }
  // Identity of the underlying memory (views of one buffer share it); nullptr when undefined.
  const void* storage_id() const { return storage_.get(); }

 private:
  Shape shape_;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;
};

}  // namespace titan

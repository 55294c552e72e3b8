// Where a model finds the weight it computes with and the gradient it adds to, by the tensor's
// position in the model's layout. What stands behind it is applied from outside: whole host
// parameters, FSDP's gathered units, a device mirror. The model asks each time it runs a unit,
// so a store may move weights between units.
#pragma once
#include <cstddef>
#include <deque>

#include "titan/core/parameter.h"

namespace titan {

class WeightStore {
 public:
  virtual ~WeightStore() = default;
  virtual const void* weight(size_t i) = 0;  // in the backend's compute dtype
  virtual float* grad(size_t i) = 0;         // fp32
  // The fp32 master of a whole weight where the store holds one apart from weight(i) (a device
  // mirror's), else null: float8 casts weights from it, so every mode quantises the same values.
  virtual const float* master(size_t /*i*/) { return nullptr; }
  // Where the store gathered weight i already cast to float8 (FP8 all-gather): its tensorwise
  // scale, and 1/scale where the backend wants it (a GPU store: both in device memory); else null.
  virtual const float* float8_scale(size_t /*i*/) { return nullptr; }
  virtual const float* float8_inv_scale(size_t /*i*/) { return nullptr; }
};

// Host parameters: each one's `full` weight and `full_grad` (whole, or FSDP's gathered views).
class ParameterWeights final : public WeightStore {
 public:
  explicit ParameterWeights(std::deque<Parameter>& params) : params_(params) {}
  const void* weight(size_t i) override { return params_[i].full.f32(); }
  float* grad(size_t i) override { return params_[i].full_grad.f32(); }
  const float* float8_scale(size_t i) override {
    return params_[i].full_float8_scale > 0 ? &params_[i].full_float8_scale : nullptr;
  }

 private:
  std::deque<Parameter>& params_;
};

}  // namespace titan

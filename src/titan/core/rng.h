// Counter-based random numbers (Philox4x32-10). A value depends only on (key, counter), so
// element i of a parameter is the same however the parameter is split across ranks.
#pragma once
#include <array>
#include <cstdint>
#include <string_view>

namespace titan {

using PhiloxKey = std::array<uint32_t, 2>;
using PhiloxCounter = std::array<uint32_t, 4>;

std::array<uint32_t, 4> philox4x32(PhiloxCounter ctr, PhiloxKey key);

// 64-bit FNV-1a: turns a parameter's name into part of its stream key.
uint64_t fnv1a64(std::string_view s);

// The random stream of one named tensor under one seed.
class NamedStream {
 public:
  NamedStream(uint64_t seed, std::string_view name);
  // Standard normal for element i; `attempt` selects an independent redraw (for truncation).
  float normal(uint64_t i, uint32_t attempt = 0) const;
  // Uniform in [0, 1) for element i.
  float uniform(uint64_t i, uint32_t attempt = 0) const;
  // Normal(0, std) redrawn until |x| <= bound: the redraw also depends only on i.
  float truncated_normal(uint64_t i, float std, float bound) const;

 private:
  PhiloxKey key_;
};

}  // namespace titan

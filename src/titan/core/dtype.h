// Element types and the bf16 <-> f32 conversion used by the CPU path and checkpoints.
#pragma once
#include <cstdint>
#include <cstring>
#include <string_view>

namespace titan {

enum class DType : uint8_t { f32, bf16, f8e4m3, f8e5m2, i32, i64 };
enum class Device : uint8_t { cpu, cuda };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);
std::string_view device_name(Device d);

using bf16_bits = uint16_t;

// Round-to-nearest-even; NaN stays a (quiet) NaN.
inline bf16_bits f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) return static_cast<bf16_bits>((u >> 16) | 0x40u);
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<bf16_bits>((u + rounding) >> 16);
}

inline float bf16_to_f32(bf16_bits b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace titan

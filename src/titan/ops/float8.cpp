#include "titan/ops/float8.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "titan/core/error.h"

namespace titan::float8 {

namespace {
struct Traits {
  int mantissa_bits, bias;
  float max;
};
Traits traits(Format f) { return f == Format::e4m3 ? Traits{3, 7, 448.0f} : Traits{2, 15, 57344.0f}; }

// torchao's EPS: the smallest amax a scale is taken from (an all-zero tensor gets max / 1e-12).
constexpr double kAmaxFloor = 1e-12;

// amax of |x| over a strided run; NaN wins, as torch.max does.
float amax(const float* x, int64_t count, int64_t stride) {
  float m = 0.0f;
  bool nan = false;
  for (int64_t i = 0; i < count; ++i) {
    const float a = std::fabs(x[i * stride]);
    nan |= std::isnan(a);
    m = std::max(m, a);
  }
  return nan ? std::nanf("") : m;
}
}  // namespace

float max_finite(Format f) { return traits(f).max; }
const char* name(Format f) { return f == Format::e4m3 ? "e4m3" : "e5m2"; }

// Rounds with float32 arithmetic rather than frexp/ldexp/nearbyint: the emulated linear casts
// every operand element (three times per GEMM), and this made the debug model's float8 step
// 2.5x slower than fp32 before; now it costs a fraction of the GEMMs.
float saturate_round(float x, Format f) {
  if (std::isnan(x)) return x;
  const Traits t = traits(f);
  const float a = std::min(std::fabs(x), t.max);
  const int min_exponent = 1 - t.bias;  // of the normal numbers; below it the spacing stays 2^(min - mantissa)
  float r;
  if (a < std::ldexp(1.0f, min_exponent)) {
    // Adding 2^(min - mantissa + 23) leaves float32 exactly that spacing: the add rounds a to it
    // (ties to even), and the subtraction is exact.
    const float magic = std::ldexp(1.0f, min_exponent - t.mantissa_bits + 23);
    r = (a + magic) - magic;
  } else {
    // Round the float32 mantissa to the format's bits, ties to even; a carry moves the exponent.
    const int drop = 23 - t.mantissa_bits;
    uint32_t u = 0;
    std::memcpy(&u, &a, sizeof u);
    u += ((1u << (drop - 1)) - 1) + ((u >> drop) & 1u);
    u &= ~((1u << drop) - 1);
    std::memcpy(&r, &u, sizeof r);
  }
  return std::copysign(r, x);
}

uint8_t encode(float x, Format f) {
  const Traits t = traits(f);
  const float r = saturate_round(x, f);
  const uint8_t sign = std::signbit(r) ? 0x80 : 0x00;
  if (std::isnan(r)) return sign | (f == Format::e4m3 ? 0x7F : 0x7E);
  const float a = std::fabs(r);
  if (a == 0.0f) return sign;
  const int min_exponent = 1 - t.bias;
  int e = 0;
  std::frexp(a, &e);
  const int exponent = e - 1;
  if (exponent < min_exponent)  // subnormal: the exponent field is 0
    return sign | static_cast<uint8_t>(std::ldexp(a, t.mantissa_bits - min_exponent));
  const int mantissa = static_cast<int>(std::ldexp(a, t.mantissa_bits - exponent)) - (1 << t.mantissa_bits);
  return sign | static_cast<uint8_t>(((exponent + t.bias) << t.mantissa_bits) | mantissa);
}

float decode(uint8_t bits, Format f) {
  const Traits t = traits(f);
  const int exponent_bits = 7 - t.mantissa_bits, top = (1 << exponent_bits) - 1;
  const int field = (bits >> t.mantissa_bits) & top, mantissa = bits & ((1 << t.mantissa_bits) - 1);
  const float sign = (bits & 0x80) ? -1.0f : 1.0f;
  if (f == Format::e4m3 && field == top && mantissa == (1 << t.mantissa_bits) - 1) return std::nanf("");
  if (f == Format::e5m2 && field == top) return mantissa == 0 ? sign * INFINITY : std::nanf("");
  if (field == 0) return sign * std::ldexp(static_cast<float>(mantissa), 1 - t.bias - t.mantissa_bits);
  return sign * std::ldexp(static_cast<float>((1 << t.mantissa_bits) + mantissa), field - t.bias - t.mantissa_bits);
}

float scale_from_amax(float amax_value, Format f, bool power_of_2) {
  const double floor_amax = std::isnan(amax_value) ? amax_value : std::max<double>(amax_value, kAmaxFloor);
  float scale = static_cast<float>(static_cast<double>(max_finite(f)) / floor_amax);
  if (power_of_2 && std::isfinite(scale) && scale > 0.0f) {
    uint32_t bits = 0;
    std::memcpy(&bits, &scale, sizeof bits);
    bits &= 0xFF800000u;  // sign and exponent: the power of two at or below
    std::memcpy(&scale, &bits, sizeof bits);
  }
  return scale;
}

Recipe recipe(const std::string& recipe_name) {
  const Cast e4m3_tensor{Scaling::tensorwise, Format::e4m3}, e4m3_axis{Scaling::axiswise, Format::e4m3};
  Recipe r;
  if (recipe_name.empty() || recipe_name == "tensorwise") {
    const Cast e5m2_tensor{Scaling::tensorwise, Format::e5m2};
    r = {"tensorwise", e4m3_tensor, e4m3_tensor, e5m2_tensor, e4m3_tensor, e5m2_tensor, e4m3_tensor, false};
  } else if (recipe_name == "rowwise") {
    r = {"rowwise", e4m3_axis, e4m3_axis, e4m3_axis, e4m3_axis, e4m3_axis, e4m3_axis, true};
  } else if (recipe_name == "rowwise_with_gw_hp") {
    const Cast high{Scaling::disabled, Format::e4m3};
    r = {"rowwise_with_gw_hp", e4m3_axis, e4m3_axis, e4m3_axis, e4m3_tensor, high, high, true};
  } else {
    throw UserError(concat("float8.recipe_name = \"", recipe_name,
                           "\": unknown recipe (expected tensorwise, rowwise or rowwise_with_gw_hp; unset is tensorwise)"));
  }
  return r;
}

std::vector<std::string> recipe_names() { return {"tensorwise", "rowwise", "rowwise_with_gw_hp"}; }

std::vector<float> scales(const float* src, int64_t rows, int64_t cols, const Cast& cast, Axis axis, bool power_of_2) {
  if (cast.scaling == Scaling::disabled) return {};
  if (cast.scaling == Scaling::tensorwise) {
    std::vector<float> partial(static_cast<size_t>(rows));
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) partial[static_cast<size_t>(r)] = amax(src + r * cols, cols, 1);
    return {scale_from_amax(amax(partial.data(), rows, 1), cast.format, power_of_2)};
  }
  const int64_t count = axis == Axis::rows ? rows : cols;
  std::vector<float> out(static_cast<size_t>(count));
  if (axis == Axis::rows) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      out[static_cast<size_t>(r)] = scale_from_amax(amax(src + r * cols, cols, 1), cast.format, power_of_2);
  } else {
    // Column amaxes a row at a time (unit stride), so the sweep reads memory in order.
    std::vector<float> m(static_cast<size_t>(cols), 0.0f);
    std::vector<char> nan(static_cast<size_t>(cols), 0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const float a = std::fabs(src[r * cols + c]);
        nan[static_cast<size_t>(c)] |= std::isnan(a);
        m[static_cast<size_t>(c)] = std::max(m[static_cast<size_t>(c)], a);
      }
    for (int64_t c = 0; c < cols; ++c)
      out[static_cast<size_t>(c)] =
        scale_from_amax(nan[static_cast<size_t>(c)] ? std::nanf("") : m[static_cast<size_t>(c)], cast.format, power_of_2);
  }
  return out;
}

void quantize_dequantize(const float* src, float* dst, int64_t rows, int64_t cols, const Cast& cast, Axis axis,
                         bool power_of_2) {
  if (cast.scaling == Scaling::disabled) {
    if (dst != src) std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(rows * cols));
    return;
  }
  const std::vector<float> s = scales(src, rows, cols, cast, axis, power_of_2);
  const bool per_row = cast.scaling == Scaling::axiswise && axis == Axis::rows;
  const bool per_column = cast.scaling == Scaling::axiswise && axis == Axis::columns;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float scale = per_row ? s[static_cast<size_t>(r)] : per_column ? s[static_cast<size_t>(c)] : s[0];
      const int64_t i = r * cols + c;
      dst[i] = saturate_round(src[i] * scale, cast.format) / scale;
    }
}

}  // namespace titan::float8

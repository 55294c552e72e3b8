// Float8 training numerics, as torchao's float8 training defines them (docs/float8.md says
// where each rule comes from): the two formats, dynamic scales from amax, the saturating cast,
// and the recipes that say which operand of which GEMM is cast how. Host code: the CPU backend
// emulates a float8 linear with it, and the CUDA kernels are tested against it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace titan::float8 {

enum class Format { e4m3, e5m2 };  // float8_e4m3fn (no inf, max 448) and float8_e5m2 (IEEE-like, max 57344)

float max_finite(Format f);
const char* name(Format f);

// The value nearest x in the format (ties to even, subnormals kept, sign of zero kept), after
// clamping to +-max_finite: torchao's to_fp8_saturated. NaN stays NaN; +-inf become +-max.
float saturate_round(float x, Format f);
// The format's bits of saturate_round(x) (NaN: 0x7F in e4m3, 0x7E in e5m2, sign kept).
uint8_t encode(float x, Format f);
float decode(uint8_t bits, Format f);

// torchao's amax_to_scale: max_finite / max(amax, 1e-12), computed in double and rounded to
// float. power_of_2: rounded down to a power of two (the rowwise recipes), taken exactly from
// the exponent bits (torchao's float32 exp2(floor(log2(s))) can round a scale a few ulps under
// 2^k up to 2^k; titan does not, on either device).
float scale_from_amax(float amax, Format f, bool power_of_2);

enum class Scaling { disabled, tensorwise, axiswise };

// How one operand of one GEMM is cast.
struct Cast {
  Scaling scaling = Scaling::tensorwise;
  Format format = Format::e4m3;
};

// torchao's Float8LinearConfig for y = x @ W^T: each operand of each of the three GEMMs. The
// axiswise scales of an operand are always taken along the GEMM's contraction dimension: per
// row of x and of W in forward; per row of dY and per column of W for dX = dY @ W; per column
// of dY and of x for dW = dY^T @ x.
struct Recipe {
  std::string name;  // tensorwise | rowwise | rowwise_with_gw_hp
  Cast input, weight;                           // forward
  Cast grad_output, weight_for_grad_input;      // dX
  Cast grad_output_for_grad_weight, input_for_grad_weight;  // dW (disabled: high precision)
  bool power_of_2_scales = false;
};

// The recipe of torchtitan's float8.recipe_name ("" is tensorwise); UserError for another name.
Recipe recipe(const std::string& recipe_name);
std::vector<std::string> recipe_names();

// Where an axiswise operand's scales run: one per row (amax over the columns) or one per column.
enum class Axis { rows, columns };

// dst = dequantised(quantised(src)): each element times its scale, saturate_round to the
// format, divided by the same scale (torchao's emulation, in float32). rows x cols, row-major.
// Disabled scaling copies. dst may be src.
void quantize_dequantize(const float* src, float* dst, int64_t rows, int64_t cols, const Cast& cast, Axis axis,
                         bool power_of_2);

// The scales quantize_dequantize uses: one (tensorwise), rows or cols of them (axiswise).
std::vector<float> scales(const float* src, int64_t rows, int64_t cols, const Cast& cast, Axis axis, bool power_of_2);

}  // namespace titan::float8

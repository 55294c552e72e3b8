// The safetensors format: 8-byte little-endian header length, a JSON header (name -> dtype,
// shape, data_offsets; optional __metadata__), then the raw data.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace titan::checkpoint {

struct StTensor {
  std::string dtype;  // "F32" or "BF16"
  std::vector<int64_t> shape;
  std::vector<char> data;
};

void write_safetensors(const std::string& path, const std::map<std::string, StTensor>& tensors,
                       const std::map<std::string, std::string>& metadata);
// Reads every tensor; UserError naming the file on a malformed or truncated one.
std::map<std::string, StTensor> read_safetensors(const std::string& path);
// The tensor as float32 (converting BF16/F16); UserError naming it for other dtypes.
std::vector<float> to_f32(const StTensor& t, const std::string& name);

}  // namespace titan::checkpoint

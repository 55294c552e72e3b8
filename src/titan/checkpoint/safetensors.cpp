#include "titan/checkpoint/safetensors.h"

#include <cmath>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "titan/core/dtype.h"
#include "titan/core/error.h"

namespace titan::checkpoint {

using nlohmann::json;

void write_safetensors(const std::string& path, const std::map<std::string, StTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw UserError(concat(path, ": cannot write"));
    const uint64_t n = text.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, t] : tensors) out.write(t.data.data(), static_cast<std::streamsize>(t.data.size()));
    if (!out) throw UserError(concat(path, ": write failed"));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw UserError(concat(path, ": cannot rename into place"));
}

std::map<std::string, StTensor> read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw UserError(concat(path, ": cannot open"));
  const int64_t size = in.tellg();
  in.seekg(0);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  if (!in || n > static_cast<uint64_t>(size) - 8 || n > (100u << 20))
    throw UserError(concat(path, ": not a safetensors file (bad header length)"));
  std::string text(n, '\0');
  in.read(text.data(), static_cast<std::streamsize>(n));
  std::map<std::string, StTensor> out;
  try {
    const json header = json::parse(text);
    const int64_t data_start = 8 + static_cast<int64_t>(n);
    for (const auto& [name, v] : header.items()) {
      if (name == "__metadata__") continue;
      StTensor t;
      t.dtype = v.at("dtype").get<std::string>();
      t.shape = v.at("shape").get<std::vector<int64_t>>();
      const auto b = v.at("data_offsets").at(0).get<int64_t>(), e = v.at("data_offsets").at(1).get<int64_t>();
      if (b < 0 || e < b || data_start + e > size) throw UserError(concat(path, ": tensor ", name, " lies past the end of the file (truncated?)"));
      t.data.resize(static_cast<size_t>(e - b));
      in.seekg(data_start + b);
      in.read(t.data.data(), e - b);
      if (!in) throw UserError(concat(path, ": tensor ", name, ": read failed"));
      out.emplace(name, std::move(t));
    }
  } catch (const json::exception& e) {
    throw UserError(concat(path, ": malformed safetensors header: ", e.what()));
  }
  return out;
}

std::vector<float> to_f32(const StTensor& t, const std::string& name) {
  int64_t count = 1;
  for (auto d : t.shape) count *= d;
  std::vector<float> out(static_cast<size_t>(count));
  if (t.dtype == "F32" && t.data.size() == out.size() * 4) {
    std::memcpy(out.data(), t.data.data(), t.data.size());
  } else if (t.dtype == "BF16" && t.data.size() == out.size() * 2) {
    const auto* p = reinterpret_cast<const uint16_t*>(t.data.data());
    for (size_t i = 0; i < out.size(); ++i) out[i] = bf16_to_f32(p[i]);
  } else if (t.dtype == "F16" && t.data.size() == out.size() * 2) {
    const auto* p = reinterpret_cast<const uint16_t*>(t.data.data());
    for (size_t i = 0; i < out.size(); ++i) {  // IEEE half -> float
      const uint32_t h = p[i], sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
      uint32_t bits;
      if (exp == 0) {
        float f = std::ldexp(static_cast<float>(man), -24);
        std::memcpy(&bits, &f, 4);
        bits |= sign;
      } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
      } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
      }
      std::memcpy(&out[i], &bits, 4);
    }
  } else {
    throw UserError(concat("tensor ", name, ": dtype ", t.dtype, " with ", t.data.size(), " bytes for shape of ",
                           count, " elements (expected F32, BF16 or F16)"));
  }
  return out;
}

}  // namespace titan::checkpoint

#include "tensor_file.h"

#include <cstring>
#include <stdexcept>

namespace titan::testing {

namespace {
int64_t count(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (auto d : dims) n *= d;
  return n;
}
}  // namespace

void TensorFile::add(const std::string& name, std::vector<int64_t> dims, const float* data) {
  std::vector<char> bytes(count(dims) * 4);
  std::memcpy(bytes.data(), data, bytes.size());
  entries_.push_back({name, 0, std::move(dims), std::move(bytes)});
}

void TensorFile::add(const std::string& name, std::vector<int64_t> dims, const int32_t* data) {
  std::vector<char> bytes(count(dims) * 4);
  std::memcpy(bytes.data(), data, bytes.size());
  entries_.push_back({name, 1, std::move(dims), std::move(bytes)});
}

void TensorFile::save(const std::string& path) const {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write " + path);
  auto u32 = [&](uint32_t v) { out.write(reinterpret_cast<const char*>(&v), 4); };
  out.write("TTNS", 4);
  u32(static_cast<uint32_t>(entries_.size()));
  for (const auto& e : entries_) {
    u32(static_cast<uint32_t>(e.name.size()));
    out.write(e.name.data(), static_cast<std::streamsize>(e.name.size()));
    u32(e.dtype);
    u32(static_cast<uint32_t>(e.dims.size()));
    for (int64_t d : e.dims) out.write(reinterpret_cast<const char*>(&d), 8);
    out.write(e.bytes.data(), static_cast<std::streamsize>(e.bytes.size()));
  }
  if (!out) throw std::runtime_error("short write to " + path);
}

}  // namespace titan::testing

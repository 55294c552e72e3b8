// A minimal tensor container for handing data to the Python oracle scripts:
// "TTNS", u32 count, then per tensor: u32 name length, name, u32 dtype (0 f32, 1 i32),
// u32 ndim, i64 dims[ndim], raw little-endian data.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace titan::testing {

class TensorFile {
 public:
  void add(const std::string& name, std::vector<int64_t> dims, const float* data);
  void add(const std::string& name, std::vector<int64_t> dims, const int32_t* data);
  void save(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    uint32_t dtype;
    std::vector<int64_t> dims;
    std::vector<char> bytes;
  };
  std::vector<Entry> entries_;
};

}  // namespace titan::testing

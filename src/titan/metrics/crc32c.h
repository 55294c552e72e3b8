// CRC-32C (Castagnoli), as TFRecord framing needs. Debian ships no CRC-32C library and zlib's
// crc32 is the other polynomial, so this is a small table-driven one.
#pragma once
#include <cstddef>
#include <cstdint>

namespace titan::metrics {

uint32_t crc32c(const void* data, size_t size);
// TFRecord's masked CRC: rotate right by 15, add a constant.
inline uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

}  // namespace titan::metrics

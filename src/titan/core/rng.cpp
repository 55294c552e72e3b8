#include "titan/core/rng.h"

#include <cmath>

namespace titan {

namespace {
constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;

inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// 24 random bits -> [0, 1), exactly representable in float.
inline float to_unit(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }
}  // namespace

std::array<uint32_t, 4> philox4x32(PhiloxCounter c, PhiloxKey k) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c[0], hi0, lo0);
    mulhilo(kMul1, c[2], hi1, lo1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
    k[0] += kWeyl0;
    k[1] += kWeyl1;
  }
  return c;
}

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 0x100000001b3ull;
  }
  return h;
}

NamedStream::NamedStream(uint64_t seed, std::string_view name) {
  uint64_t k = fnv1a64(name) ^ (seed * 0x9E3779B97F4A7C15ull);
  key_ = {static_cast<uint32_t>(k), static_cast<uint32_t>(k >> 32)};
}

float NamedStream::normal(uint64_t i, uint32_t attempt) const {
  auto r = philox4x32({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), attempt, 0x4e4f524du}, key_);
  // Box-Muller with u1 in (0, 1] so the log is finite.
  double u1 = (static_cast<double>(r[0] >> 8) + 1.0) / 16777216.0;
  double u2 = static_cast<double>(r[1] >> 8) / 16777216.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

float NamedStream::uniform(uint64_t i, uint32_t attempt) const {
  auto r = philox4x32({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), attempt, 0x554e4946u}, key_);
  return to_unit(r[0]);
}

float NamedStream::truncated_normal(uint64_t i, float std, float bound) const {
  for (uint32_t attempt = 0;; ++attempt) {
    float x = std * normal(i, attempt);
    if (std::fabs(x) <= bound) return x;
  }
}

}  // namespace titan

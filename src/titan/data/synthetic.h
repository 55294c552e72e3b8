// Synthetic token streams (no tokenizer needed): uniform random tokens for benchmarks, and a
// repeating pattern of period 16 that a working model learns quickly (a training smoke test).
// Window w of the global stream is a pure function of (seed, w), so any rank or resume point
// can produce it.
#pragma once
#include <cstdint>
#include <string>

namespace titan::data {

enum class SyntheticKind { random, pattern };

class SyntheticStream {
 public:
  static constexpr int64_t kPeriod = 16;
  SyntheticStream(SyntheticKind kind, int64_t vocab, uint64_t seed);
  // Token t of global window w.
  int32_t token(int64_t w, int64_t t) const;

 private:
  SyntheticKind kind_;
  int64_t vocab_;
  uint64_t seed_;
  int32_t pattern_[kPeriod];
};

}  // namespace titan::data

#include "titan/data/synthetic.h"

#include <algorithm>

#include "titan/core/error.h"
#include "titan/core/rng.h"

namespace titan::data {

SyntheticStream::SyntheticStream(SyntheticKind kind, int64_t vocab, uint64_t seed)
    : kind_(kind), vocab_(vocab), seed_(seed) {
  TITAN_CHECK(vocab >= kPeriod, "synthetic data needs a vocabulary of at least ", kPeriod, " ids");
  // Distinct ids, so each token of the pattern determines the next.
  NamedStream s(seed, "synthetic.pattern");
  int64_t filled = 0;
  for (uint32_t draw = 0; filled < kPeriod; ++draw) {
    auto id = static_cast<int32_t>(s.uniform(draw) * static_cast<float>(vocab));
    id = std::min<int32_t>(id, static_cast<int32_t>(vocab - 1));
    if (std::find(pattern_, pattern_ + filled, id) == pattern_ + filled) pattern_[filled++] = id;
  }
}

int32_t SyntheticStream::token(int64_t w, int64_t t) const {
  if (kind_ == SyntheticKind::pattern) {
    NamedStream s(seed_, "synthetic.offset");
    auto offset = static_cast<int64_t>(s.uniform(static_cast<uint64_t>(w)) * kPeriod);
    return pattern_[(offset + t) % kPeriod];
  }
  NamedStream s(seed_ + static_cast<uint64_t>(w), "synthetic.random");
  auto id = static_cast<int64_t>(s.uniform(static_cast<uint64_t>(t)) * static_cast<float>(vocab_));
  return static_cast<int32_t>(std::min(id, vocab_ - 1));
}

}  // namespace titan::data

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <cstdlib>

#include "titan/core/dtype.h"
#include "titan/core/dynamic_library.h"
#include "titan/core/env.h"
#include "titan/core/error.h"
#include "titan/core/parameter.h"
#include "titan/core/rng.h"
#include "titan/core/tensor.h"

using namespace titan;

TEST(BF16, RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 lies halfway between 0x3f80 and 0x3f81: ties go to the even mantissa.
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  // Just above halfway rounds up.
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  // A NaN whose payload sits only in the low bits must not turn into infinity.
  uint32_t low_nan_bits = 0x7f800001u;
  float low_nan;
  std::memcpy(&low_nan, &low_nan_bits, 4);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(low_nan))));
}

TEST(BF16, EveryFiniteValueRoundTrips) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    float f = bf16_to_f32(static_cast<bf16_bits>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), b) << "bits " << b;
  }
}

TEST(Philox, MatchesRandom123KnownAnswers) {
  auto zero = philox4x32({0, 0, 0, 0}, {0, 0});
  EXPECT_EQ(zero, (std::array<uint32_t, 4>{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
  auto ones = philox4x32({~0u, ~0u, ~0u, ~0u}, {~0u, ~0u});
  EXPECT_EQ(ones, (std::array<uint32_t, 4>{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
}

TEST(NamedStream, NormalHasUnitMomentsAndDependsOnName) {
  NamedStream a(7, "layers.0.attention.wq.weight"), b(7, "layers.0.attention.wk.weight");
  double sum = 0, sq = 0;
  const int n = 200000;
  int same = 0;
  for (int i = 0; i < n; ++i) {
    double x = a.normal(i);
    sum += x;
    sq += x * x;
    same += a.normal(i) == b.normal(i);
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0, 0.01);
  EXPECT_LT(same, 5);
  EXPECT_EQ(a.normal(12345), NamedStream(7, "layers.0.attention.wq.weight").normal(12345));
  EXPECT_NE(a.normal(12345), NamedStream(8, "layers.0.attention.wq.weight").normal(12345));
}

TEST(NamedStream, TruncatedNormalStaysInBounds) {
  NamedStream s(3, "output.weight");
  for (int i = 0; i < 100000; ++i) ASSERT_LE(std::fabs(s.truncated_normal(i, 1.0f, 0.5f)), 0.5f);
}

TEST(Shard, FollowsTorchChunk) {
  // torch.chunk(10 rows, 4) -> 3, 3, 3, 1
  EXPECT_EQ(shard_range(10, 0, 4).rows(), 3);
  EXPECT_EQ(shard_range(10, 3, 4).begin, 9);
  EXPECT_EQ(shard_range(10, 3, 4).rows(), 1);
  // torch.chunk(5 rows, 4) -> 2, 2, 1 and an empty fourth shard
  EXPECT_EQ(shard_range(5, 2, 4).rows(), 1);
  EXPECT_EQ(shard_range(5, 3, 4).rows(), 0);
  EXPECT_THROW(shard_range(5, 4, 4), InternalError);
}

TEST(Tensor, ViewsShareStorageAndCheckBounds) {
  Tensor t = Tensor::zeros({4, 3});
  Tensor v = Tensor::view_of(t, {3}, 6);
  v.f32()[0] = 5.0f;
  EXPECT_EQ(t.f32()[6], 5.0f);
  EXPECT_TRUE(v.shares_storage(t));
  EXPECT_THROW(Tensor::view_of(t, {4}, 9), InternalError);
  EXPECT_THROW(Tensor::zeros({2}, DType::i32).f32(), InternalError);
}

TEST(Parameter, WorldOneAliasesFullWeight) {
  Parameter p = make_parameter("w", {4, 2});
  EXPECT_TRUE(p.full.shares_storage(p.master));
  EXPECT_TRUE(p.full_grad.shares_storage(p.grad));
  Parameter s = make_parameter("w", {4, 2}, 1, 2);
  EXPECT_EQ(s.master.dim(0), 2);
  EXPECT_EQ(s.global_index(0), 4);
}

TEST(Environment, IntegersAndChoicesWithOneLineErrors) {
  const char* name = "TITAN_TEST_ENV_SETTING";
  unsetenv(name);
  EXPECT_EQ(env_int(name, 7, 0, 10), 7);
  EXPECT_EQ(env_one_of(name, {16, 32}, 16), 16);
  setenv(name, "32", 1);
  EXPECT_EQ(env_int(name, 7, 0, 100), 32);
  EXPECT_EQ(env_one_of(name, {16, 32}, 16), 32);
  for (const char* bad : {"", "20", "32x", "x", "99999999999999999999"}) {
    setenv(name, bad, 1);
    try {
      env_one_of(name, {16, 32}, 16);
      FAIL() << "accepted " << name << "=" << bad;
    } catch (const UserError& e) {
      EXPECT_EQ(std::string(e.what()), std::string("environment: ") + name + "=" + bad + ": expected 16 or 32");
    }
  }
  setenv(name, "11", 1);
  EXPECT_THROW(env_int(name, 7, 0, 10), UserError);
  unsetenv(name);
  EXPECT_EQ(env_word(name, {"titan", "cudnn"}, "titan"), "titan");
  setenv(name, "cudnn", 1);
  EXPECT_EQ(env_word(name, {"titan", "cudnn"}, "titan"), "cudnn");
  for (const char* bad : {"", "cuDNN", "cudnn "}) {
    setenv(name, bad, 1);
    try {
      env_word(name, {"titan", "cudnn"}, "titan");
      FAIL() << "accepted " << name << "=" << bad;
    } catch (const UserError& e) {
      EXPECT_EQ(std::string(e.what()), std::string("environment: ") + name + "=" + bad + ": expected titan or cudnn");
    }
  }
  unsetenv(name);
}

TEST(DynamicLibrary, MissingLibraryOrSymbolIsAOneLineUserError) {
  try {
    DynamicLibrary lib("libtitan-no-such-library.so.1", "this feature needs X", "install X");
    FAIL() << "a missing library loaded";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("this feature needs X: cannot load libtitan-no-such-library.so.1 (", 0), 0u) << msg;
    EXPECT_NE(msg.find("); install X"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  DynamicLibrary libm("libm.so.6", "math", "none");
  using Cos = double (*)(double);
  EXPECT_EQ(libm.symbol<Cos>("cos", "a C library")(0.0), 1.0);
  try {
    (void)libm.symbol<Cos>("titan_no_such_symbol", "X 2 or newer");
    FAIL() << "a missing symbol resolved";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()), "libm.so.6: no symbol titan_no_such_symbol (X 2 or newer)");
  }
}

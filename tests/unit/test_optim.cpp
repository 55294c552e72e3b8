#include <gtest/gtest.h>

#include <cmath>
#include <deque>

#include "titan/optim/adamw.h"
#include "titan/optim/grad_clip.h"
#include "titan/optim/lr_schedule.h"

using namespace titan;
using namespace titan::optim;

TEST(LrSchedule, LinearWarmupThenLinearDecayToZero) {
  LrSchedule s{4, 10, DecayKind::linear};
  EXPECT_DOUBLE_EQ(s.factor(0), 1.0 / 5.0);
  EXPECT_DOUBLE_EQ(s.factor(3), 4.0 / 5.0);
  EXPECT_DOUBLE_EQ(s.factor(4), 1.0);
  EXPECT_DOUBLE_EQ(s.factor(7), 0.5);
  EXPECT_DOUBLE_EQ(s.factor(10), 0.0);
  EXPECT_DOUBLE_EQ(s.factor(12), 0.0);  // never negative past the end
}

TEST(LrSchedule, CosineDecay) {
  LrSchedule s{0, 100, DecayKind::cosine};
  EXPECT_DOUBLE_EQ(s.factor(0), 1.0);
  EXPECT_NEAR(s.factor(50), 0.5, 1e-12);
  EXPECT_NEAR(s.factor(100), 0.0, 1e-12);
}

namespace {
std::deque<Parameter> two_params(float g0, float g1) {
  std::deque<Parameter> ps;
  ps.push_back(make_parameter("a", {2}));
  ps.push_back(make_parameter("b", {1, 1}));
  ps[0].grad.f32()[0] = g0;
  ps[0].grad.f32()[1] = 0;
  ps[1].grad.f32()[0] = g1;
  return ps;
}
}  // namespace

TEST(GradClip, NormAndClipFollowTorch) {
  auto ps = two_params(3, 4);
  const double norm = std::sqrt(grad_sq_sum(ps));
  EXPECT_DOUBLE_EQ(norm, 5.0);
  clip_grads(ps, norm, 1.0);
  EXPECT_NEAR(ps[0].grad.f32()[0], 3.0 / (5.0 + 1e-6), 1e-7);
  EXPECT_NEAR(ps[1].grad.f32()[0], 4.0 / (5.0 + 1e-6), 1e-7);
  auto small = two_params(0.3f, 0.4f);
  clip_grads(small, 0.5, 1.0);  // under the limit: untouched
  EXPECT_EQ(small[0].grad.f32()[0], 0.3f);
}

TEST(AdamW, TwoStepsMatchTheFormula) {
  auto ps = two_params(0.5f, -2.0f);
  ps[0].master.f32()[0] = 1.0f;
  ps[1].master.f32()[0] = -1.0f;
  AdamW opt({0.1, 0.9, 0.95, 1e-8, 0.1});
  // Reference in double: decoupled decay, then the bias-corrected Adam update.
  double w = 1.0, m = 0, v = 0;
  for (int t = 1; t <= 2; ++t) {
    opt.step(ps, 0.1);
    const double g = 0.5;
    w *= 1 - 0.1 * 0.1;
    m = 0.9 * m + 0.1 * g;
    v = 0.95 * v + 0.05 * g * g;
    const double mhat = m / (1 - std::pow(0.9, t)), denom = std::sqrt(v) / std::sqrt(1 - std::pow(0.95, t)) + 1e-8;
    w -= 0.1 * mhat / denom;
  }
  EXPECT_NEAR(ps[0].master.f32()[0], w, 1e-6);
  EXPECT_EQ(opt.steps_taken(), 2);
  // A zero gradient only decays the weight.
  EXPECT_EQ(ps[0].master.f32()[1], 0.0f);
  EXPECT_GT(ps[1].master.f32()[0], -1.0f);  // negative gradient pushes the weight up
}

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

TEST(LrSchedule, WarmupStableDecayToLrMin) {
  // 10 steps, warmup 2, the last 4 decay (decay_ratio 0.4) to 0.1 of the peak.
  const LrSchedule s{2, 10, DecayKind::linear, 4, 0.1};
  EXPECT_DOUBLE_EQ(s.factor(1), 2.0 / 3.0);
  for (int64_t step : {2, 3, 4, 5, 6}) EXPECT_DOUBLE_EQ(s.factor(step), 1.0) << step;  // stable until step 10 - 4
  EXPECT_DOUBLE_EQ(s.factor(7), 0.1 + 0.9 * 0.75);
  EXPECT_DOUBLE_EQ(s.factor(9), 0.1 + 0.9 * 0.25);
  EXPECT_DOUBLE_EQ(s.factor(10), 0.1);
  EXPECT_DOUBLE_EQ(s.factor(14), 0.1);  // never below lr_min past the end
  const LrSchedule root{0, 4, DecayKind::sqrt, 4, 0.0};
  EXPECT_DOUBLE_EQ(root.factor(1), 1.0 - 0.5);
  // More decay steps than there are after warmup: the decay starts right after it.
  EXPECT_DOUBLE_EQ((LrSchedule{4, 10, DecayKind::linear, 50, 0.0}).factor(7), 0.5);
}

TEST(LrSchedule, DefaultsKeepTheDecayRightAfterWarmup) {
  for (DecayKind kind : {DecayKind::linear, DecayKind::cosine}) {
    const LrSchedule plain{3, 17, kind}, explicit_default{3, 17, kind, -1, 0.0}, all_steps{3, 17, kind, 14, 0.0};
    for (int64_t step = 0; step < 20; ++step) {
      EXPECT_EQ(plain.factor(step), explicit_default.factor(step)) << step;
      EXPECT_EQ(plain.factor(step), all_steps.factor(step)) << step;
    }
  }
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

// A different gradient at each step (with one gradient repeated, bias-corrected Adam moves by
// lr * sign(g) whatever the betas, so swapped betas would pass), weights that start away from 0
// (decay shows), one gradient near eps (eps shows), and every buffer compared: weights and both
// moments against a double reference. Measured: worst relative error 2.6e-7 (exp_avg_sq, float
// rounding), so 1e-6; swapped betas move the moments by 70%, eps 1e-6 moves the weight with the
// tiny gradient by 19%, no decay moves every weight by 3%.
TEST(AdamW, ThreeStepsMatchTheFormulaInEveryBuffer) {
  const double lr = 0.1, b1 = 0.8, b2 = 0.95, eps = 1e-8, wd = 0.1;
  const double grads[3][3] = {{0.5, 3e-7, 0.0}, {-1.5, -2e-7, 0.0}, {0.25, 4e-7, 0.0}};
  std::deque<Parameter> ps;
  ps.push_back(make_parameter("w", {3}));
  double w[3] = {1.0, -0.5, 2.0}, m[3] = {}, v[3] = {};
  for (int i = 0; i < 3; ++i) ps[0].master.f32()[i] = static_cast<float>(w[i]);
  AdamW opt({lr, b1, b2, eps, wd});
  for (int t = 1; t <= 3; ++t) {
    for (int i = 0; i < 3; ++i) ps[0].grad.f32()[i] = static_cast<float>(grads[t - 1][i]);
    opt.step(ps, lr);
    for (int i = 0; i < 3; ++i) {
      // Rounded as the optimizer sees it.
      const double g = static_cast<float>(grads[t - 1][i]);
      w[i] *= 1 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const double mhat = m[i] / (1 - std::pow(b1, t)), denom = std::sqrt(v[i] / (1 - std::pow(b2, t))) + eps;
      w[i] -= lr * mhat / denom;
    }
  }
  EXPECT_EQ(opt.steps_taken(), 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(ps[0].master.f32()[i], w[i], 1e-6 * std::fabs(w[i])) << "weight " << i;
    EXPECT_NEAR(ps[0].exp_avg.f32()[i], m[i], 1e-6 * std::fabs(m[i])) << "exp_avg " << i;
    EXPECT_NEAR(ps[0].exp_avg_sq.f32()[i], v[i], 1e-6 * std::fabs(v[i])) << "exp_avg_sq " << i;
  }
  // A zero gradient only decays the weight: 2 * 0.99^3.
  EXPECT_NEAR(ps[0].master.f32()[2], 2.0 * std::pow(1 - lr * wd, 3), 1e-6);
}

// The factors the GPU applies (AdamWStep) come from advance(): checked here against the
// textbook formula, so a GPU test need not trust advance() for its reference.
TEST(AdamW, AdvanceGivesTheBiasCorrectedFactors) {
  const double lr = 3e-3, b1 = 0.85, b2 = 0.97, eps = 1e-7, wd = 0.05;
  AdamW opt({lr, b1, b2, eps, wd});
  for (int t = 1; t <= 4; ++t) {
    const double lr_t = lr * t / 4;
    const AdamWFactors f = opt.advance(lr_t);
    EXPECT_FLOAT_EQ(f.beta1, static_cast<float>(b1));
    EXPECT_FLOAT_EQ(f.beta2, static_cast<float>(b2));
    EXPECT_FLOAT_EQ(f.eps, static_cast<float>(eps));
    EXPECT_FLOAT_EQ(f.step_size, static_cast<float>(lr_t / (1 - std::pow(b1, t)))) << "step " << t;
    EXPECT_FLOAT_EQ(f.bias_correction2_sqrt, static_cast<float>(std::sqrt(1 - std::pow(b2, t)))) << "step " << t;
    EXPECT_FLOAT_EQ(f.decay, static_cast<float>(1 - lr_t * wd)) << "step " << t;
  }
}

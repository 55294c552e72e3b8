// CPU kernels against naive double-precision references where the oracle's shapes do not
// reach (many tiles, several classifier chunks), and thread-count invariance.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "titan/core/error.h"
#include "titan/core/rng.h"
#include "titan/ops/cpu/vec_math.h"
#include "titan/ops/embedding_index.h"
#include "titan/ops/ops.h"

using namespace titan;

namespace {
std::vector<float> randn(const char* name, int64_t n, float scale = 1.0f) {
  NamedStream s(99, name);
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = scale * s.normal(i);
  return v;
}

double rel_l2(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

// Causal GQA attention in double, one full score row at a time.
std::vector<double> naive_attention(const std::vector<float>& q, const std::vector<float>& k,
                                    const std::vector<float>& v, const cpu::AttentionShape& s) {
  std::vector<double> o(q.size());
  const int64_t group = s.heads / s.kv_heads, hd = s.head_dim;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.seq; ++i) {
        std::vector<double> p(i + 1);
        double mx = -1e300, sum = 0;
        const float* qi = &q[((b * s.seq + i) * s.heads + h) * hd];
        for (int64_t j = 0; j <= i; ++j) {
          const float* kj = &k[((b * s.seq + j) * s.kv_heads + h / group) * hd];
          double dot = 0;
          for (int64_t d = 0; d < hd; ++d) dot += static_cast<double>(qi[d]) * kj[d];
          p[j] = dot / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, p[j]);
        }
        for (auto& x : p) sum += (x = std::exp(x - mx));
        for (int64_t d = 0; d < hd; ++d) {
          double acc = 0;
          for (int64_t j = 0; j <= i; ++j) acc += p[j] * v[((b * s.seq + j) * s.kv_heads + h / group) * hd + d];
          o[((b * s.seq + i) * s.heads + h) * hd + d] = acc / sum;
        }
      }
  return o;
}
}  // namespace

TEST(Attention, ManyTilesMatchNaiveReference) {
  for (cpu::AttentionShape s : {cpu::AttentionShape{2, 300, 4, 2, 16}, cpu::AttentionShape{1, 129, 3, 1, 8},
                                cpu::AttentionShape{1, 64, 2, 2, 32}}) {
    const int64_t nq = s.batch * s.seq * s.heads * s.head_dim, nk = s.batch * s.seq * s.kv_heads * s.head_dim;
    auto q = randn("q", nq), k = randn("k", nk), v = randn("v", nk);
    std::vector<float> o(nq, std::nanf("")), lse(s.batch * s.heads * s.seq);
    cpu::attention_forward(q.data(), k.data(), v.data(), o.data(), lse.data(), s);
    EXPECT_LT(rel_l2(o, naive_attention(q, k, v, s)), 1e-5) << "seq " << s.seq;
  }
}

TEST(Attention, BackwardMatchesFiniteDifferences) {
  const cpu::AttentionShape s{1, 70, 2, 1, 4};
  const int64_t nq = s.seq * s.heads * s.head_dim, nk = s.seq * s.kv_heads * s.head_dim;
  auto q = randn("q", nq), k = randn("k", nk), v = randn("v", nk), dy = randn("dy", nq);
  std::vector<float> o(nq), lse(s.heads * s.seq), dq(nq), dk(nk), dv(nk);
  cpu::attention_forward(q.data(), k.data(), v.data(), o.data(), lse.data(), s);
  cpu::attention_backward(q.data(), k.data(), v.data(), o.data(), lse.data(), dy.data(), dq.data(), dk.data(), dv.data(), s);
  // d(sum(dy * o))/dk[i] by central differences in double.
  auto objective = [&](const std::vector<float>& kk) {
    auto out = naive_attention(q, kk, v, s);
    double acc = 0;
    for (int64_t i = 0; i < nq; ++i) acc += out[i] * dy[i];
    return acc;
  };
  for (int64_t i : {0L, 5L, 100L, nk - 1}) {
    auto kp = k, km = k;
    const float eps = 1e-2f;
    kp[i] += eps;
    km[i] -= eps;
    const double fd = (objective(kp) - objective(km)) / (2.0 * eps);
    EXPECT_NEAR(dk[i], fd, 2e-3 * std::max(1.0, std::fabs(fd))) << "dk[" << i << "]";
  }
}

TEST(Classifier, SeveralChunksMatchNaiveCrossEntropy) {
  const int64_t n = 200, d = 8, vocab = 50000;  // ~83 rows per chunk: three chunks
  auto h = randn("h", n * d), w = randn("w", vocab * d, 0.5f);
  std::vector<int32_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = static_cast<int32_t>((i * 7919) % vocab);
  labels[3] = -100;
  std::vector<float> dh(n * d), dw(vocab * d, 0.0f), scratch(cpu::classifier_scratch_floats(n, vocab));
  EXPECT_LT(static_cast<int64_t>(scratch.size()), n * vocab);  // really chunked
  auto r = cpu::classifier_forward_backward(h.data(), w.data(), labels.data(), n, d, vocab, -100,
                                            1.0f / (n - 1), dh.data(), dw.data(), scratch.data());
  double loss = 0;
  std::vector<double> dh_ref(n * d, 0.0), dw_ref(vocab * d, 0.0);
  std::vector<double> z(vocab);
  for (int64_t i = 0; i < n; ++i) {
    if (labels[i] == -100) continue;
    double mx = -1e300, sum = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      double acc = 0;
      for (int64_t c = 0; c < d; ++c) acc += static_cast<double>(h[i * d + c]) * w[j * d + c];
      mx = std::max(mx, z[j] = acc);
    }
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(z[j] - mx);
    loss += mx + std::log(sum) - z[labels[i]];
    for (int64_t j = 0; j < vocab; ++j) {
      double g = (std::exp(z[j] - mx) / sum - (j == labels[i])) / (n - 1);
      for (int64_t c = 0; c < d; ++c) {
        dh_ref[i * d + c] += g * w[j * d + c];
        dw_ref[j * d + c] += g * h[i * d + c];
      }
    }
  }
  EXPECT_EQ(r.count, n - 1);
  EXPECT_NEAR(r.loss_sum / r.count, loss / (n - 1), 1e-5 * loss / (n - 1));
  EXPECT_LT(rel_l2(dh, dh_ref), 1e-4);
  // dW sums over every chunk's rows (beta 1 after the first): only here do several chunks reach
  // it. Measured 1.7e-7; a dW that keeps only the last chunk is off by 0.90.
  EXPECT_LT(rel_l2(dw, dw_ref), 1e-5);
}

TEST(Reductions, GradientsDoNotDependOnThreadCount) {
  const int64_t n = 333, d = 40, vocab = 50;
  auto x = randn("x", n * d), w = randn("w", d), dy = randn("dy", n * d);
  std::vector<int32_t> tokens(n);
  for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>((i * 31) % vocab);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> y(n * d), rstd(n), dx(n * d), dw(d, 0.0f), demb(vocab * d, 0.0f);
    cpu::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), n, d, 1e-5f);
    cpu::rmsnorm_backward(x.data(), w.data(), rstd.data(), dy.data(), dx.data(), dw.data(), n, d);
    cpu::embedding_backward(tokens.data(), dy.data(), demb.data(), n, d);
    dw.insert(dw.end(), demb.begin(), demb.end());
    return dw;
  };
  const int original = omp_get_max_threads();
  auto one = run(1), two = run(2), three = run(3);
  omp_set_num_threads(original);
  EXPECT_EQ(one, two);
  EXPECT_EQ(one, three);
}

TEST(ExpApprox, WithinThreeUlpOfLibm) {
  double worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f) {
    const double want = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(cpu::exp_approx(x) - want) / want);
  }
  EXPECT_LT(worst, 3.6e-7);  // 3 ulp of float
  EXPECT_EQ(cpu::exp_approx(0.0f), 1.0f);
  EXPECT_LT(cpu::exp_approx(-1e30f), 1e-37f);  // far below: clamps towards zero, never NaN
}

TEST(EmbeddingIndex, GroupsPositionsByTokenInOrderAndPads) {
  for (int64_t vocab : {1L, 7L, 2048L}) {
    const int64_t n = 1000;
    NamedStream s(5, "embedding index");
    std::vector<int32_t> tokens(n);
    for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>(s.uniform(i) * vocab) % vocab;
    EmbeddingIndex idx;
    std::vector<int32_t> scratch;
    build_embedding_index(tokens.data(), n, vocab, true, idx, scratch);
    // Reference: a stable sort of positions by token.
    std::vector<int32_t> pos(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(i);
    std::stable_sort(pos.begin(), pos.end(), [&](int32_t a, int32_t b) { return tokens[a] < tokens[b]; });
    EXPECT_EQ(idx.positions, pos);
    ASSERT_EQ(idx.ids.size(), static_cast<size_t>(n));
    ASSERT_EQ(idx.offsets.size(), static_cast<size_t>(n + 1));
    for (int64_t u = 0; u < idx.distinct; ++u)
      for (int32_t p = idx.offsets[u]; p < idx.offsets[u + 1]; ++p) ASSERT_EQ(tokens[idx.positions[p]], idx.ids[u]);
    for (int64_t u = idx.distinct; u < n; ++u) EXPECT_EQ(idx.offsets[u], idx.offsets[u + 1]) << "padding is empty";
    EXPECT_EQ(idx.offsets[idx.distinct], n);
  }
  EmbeddingIndex idx;
  std::vector<int32_t> scratch;
  const int32_t bad[] = {0, 9};
  EXPECT_THROW(build_embedding_index(bad, 2, 5, false, idx, scratch), InternalError);
}

// Llama 3.1's RoPE scaling, regime by regime (transformers' logits hold the whole of it in
// oracle.hf_rope_scaling): short wavelengths unchanged, long ones slowed by the factor, those
// between blended; factor 0 is the plain table.
TEST(Ops, RopeScalingPerFrequencyRegime) {
  const int64_t hd = 16, half = hd / 2, seq = 2;
  const double theta = 10000.0;  // wavelengths 6.3, 20, 63, 199, ...: every regime once or more
  const cpu::RopeScaling scaling{8.0, 1.0, 4.0, 64};
  std::vector<float> cos0(seq * half), sin0(seq * half), cos1(seq * half), sin1(seq * half), cosn(seq * half), sinn(seq * half);
  cpu::rope_tables(cos0.data(), sin0.data(), seq, hd, theta);
  cpu::rope_tables(cosn.data(), sinn.data(), seq, hd, theta, cpu::RopeScaling{});
  cpu::rope_tables(cos1.data(), sin1.data(), seq, hd, theta, scaling);
  EXPECT_EQ(cos0, cosn);
  for (int64_t i = 0; i < half; ++i) {
    // Position 1's angle is the frequency itself.
    const double freq = std::atan2(sin0[half + i], cos0[half + i]), scaled = std::atan2(sin1[half + i], cos1[half + i]);
    const double wavelen = 2 * M_PI / freq;
    if (wavelen < 64.0 / 4.0) EXPECT_NEAR(scaled, freq, 1e-6 * freq) << i;
    else if (wavelen > 64.0) EXPECT_NEAR(scaled, freq / 8.0, 1e-6 * freq) << i;
    else {
      EXPECT_LT(scaled, freq) << i;
      EXPECT_GT(scaled, freq / 8.0) << i;
    }
  }
}

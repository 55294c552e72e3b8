// Every CUDA kernel against the CPU reference (ops/ops.h) on fresh random inputs with
// poisoned outputs, at sizes that are not multiples of 8, 16 or 128. Tolerances (relative
// L2): fp32 outputs 1e-5, bf16 outputs 1e-2, attention 2e-2.
#include <algorithm>
#include <array>
#include <deque>
#include <cmath>
#include <vector>

#include "gpu_test_util.h"
#include "titan/ops/cuda/gemm.h"
#include "titan/ops/ops.h"
#include "titan/optim/adamw.h"

using namespace titan;
using namespace titan::gpu_test;

namespace {
constexpr double kF32 = 1e-5, kBF16 = 1e-2, kAttention = 2e-2;

std::string where(const char* what, std::initializer_list<int64_t> dims) {
  std::string s = what;
  for (int64_t d : dims) s += " " + std::to_string(d);
  return s + " (seed " + std::to_string(fresh_seed()) + ")";
}
}  // namespace

TEST(CudaGemm, LinearForwardAndBackwardMatchCpu) {
  TITAN_REQUIRE_GPU();
  cudaStream_t stream = nullptr;
  cuda::Gemm gemm(stream);
  for (auto [n, in, out] : std::vector<std::array<int64_t, 3>>{{37, 72, 100}, {256, 256, 768}, {1000, 130, 2048}}) {
    const auto tag = where("gemm n in out", {n, in, out});
    auto x = randn(tag + "x", n * in), w = randn(tag + "w", out * in, 0.05f), dy = randn(tag + "dy", n * out);
    auto dx0 = randn(tag + "dx0", n * in), dw0 = randn(tag + "dw0", out * in);
    const auto xb = to_bf16(x), wb = to_bf16(w), dyb = to_bf16(dy), dx0b = to_bf16(dx0);
    DeviceArray<uint16_t> dx_(xb), dw_(wb), ddy(dyb), dy_out(n * out), ddx(dx0b);
    DeviceArray<float> ddw(dw0);
    gemm.run(false, true, n, out, in, dx_.get(), dw_.get(), dy_out.get(), cuda::OutType::bf16, 1.0f, 0.0f);
    gemm.run(false, false, n, in, out, ddy.get(), dw_.get(), ddx.get(), cuda::OutType::bf16, 1.0f, 1.0f);
    gemm.run(true, false, out, in, n, ddy.get(), dx_.get(), ddw.get(), cuda::OutType::f32, 1.0f, 1.0f);
    std::vector<float> y(n * out), dx = dx0, dw = dw0;
    cpu::linear_forward(x.data(), w.data(), y.data(), n, in, out);
    cpu::linear_backward(x.data(), w.data(), dy.data(), dx.data(), dw.data(), n, in, out, 1.0f);
    EXPECT_LT(rel_l2(from_bf16(dy_out.download()), y), kBF16) << tag << " forward";
    EXPECT_LT(rel_l2(from_bf16(ddx.download()), dx), kBF16) << tag << " dx (accumulated)";
    EXPECT_LT(rel_l2(ddw.download(), dw), kF32) << tag << " dw (fp32, accumulated)";
  }
}

TEST(CudaRmsNorm, ForwardFusedAddAndBackwardMatchCpu) {
  TITAN_REQUIRE_GPU();
  for (auto [n, d] : std::vector<std::array<int64_t, 2>>{{1, 100}, {37, 256}, {300, 770}}) {
    const auto tag = where("rmsnorm n d", {n, d});
    auto x = randn(tag + "x", n * d), r = randn(tag + "r", n * d), w = randn(tag + "w", d, 0.5f);
    auto dy = randn(tag + "dy", n * d), dx0 = randn(tag + "dx0", n * d), dw0 = randn(tag + "dw0", d);
    for (auto& v : w) v += 1.0f;
    const auto xb = to_bf16(x), rb = to_bf16(r), wb = to_bf16(w), dyb = to_bf16(dy), dx0b = to_bf16(dx0);
    DeviceArray<uint16_t> dx_(xb), dr(rb), dw_(wb), ddy(dyb), y(n * d), h(n * d), y2(n * d), dxw(n * d), dxa(dx0b);
    DeviceArray<float> rstd(n), rstd2(n), ddw(dw0), partial(cuda::rmsnorm_partial_floats(n, d));
    cuda::rmsnorm_forward(dx_.get(), dw_.get(), y.get(), rstd.get(), n, d, 1e-5f, nullptr);
    cuda::add_rmsnorm_forward(dx_.get(), dr.get(), h.get(), dw_.get(), y2.get(), rstd2.get(), n, d, 1e-5f, nullptr);
    cuda::rmsnorm_backward(dx_.get(), dw_.get(), rstd.get(), ddy.get(), dxw.get(), false, ddw.get(), partial.get(), n, d,
                           nullptr);
    cuda::rmsnorm_backward(dx_.get(), dw_.get(), rstd.get(), ddy.get(), dxa.get(), true, ddw.get(), partial.get(), n, d,
                           nullptr);
    std::vector<float> ry(n * d), rrstd(n), rdx(n * d), rdw = dw0;
    cpu::rmsnorm_forward(x.data(), w.data(), ry.data(), rrstd.data(), n, d, 1e-5f);
    EXPECT_LT(rel_l2(from_bf16(y.download()), ry), kBF16) << tag << " y";
    EXPECT_LT(rel_l2(rstd.download(), rrstd), kF32) << tag << " rstd";
    cpu::rmsnorm_backward(x.data(), w.data(), rrstd.data(), dy.data(), rdx.data(), rdw.data(), n, d);
    cpu::rmsnorm_backward(x.data(), w.data(), rrstd.data(), dy.data(), rdx.data(), rdw.data(), n, d);
    EXPECT_LT(rel_l2(from_bf16(dxw.download()), rdx), kBF16) << tag << " dx";
    std::vector<float> rdxa(n * d);
    for (int64_t i = 0; i < n * d; ++i) rdxa[i] = dx0[i] + rdx[i];
    EXPECT_LT(rel_l2(from_bf16(dxa.download()), rdxa), kBF16) << tag << " dx accumulated";
    EXPECT_LT(rel_l2(ddw.download(), rdw), kF32) << tag << " dw (two backward calls)";
    // Fused add: h = bf16(x + r), y2 = rmsnorm(h).
    std::vector<float> hsum(n * d);
    for (int64_t i = 0; i < n * d; ++i) hsum[i] = x[i] + r[i];
    to_bf16(hsum);
    std::vector<float> ry2(n * d), rrstd2(n);
    cpu::rmsnorm_forward(hsum.data(), w.data(), ry2.data(), rrstd2.data(), n, d, 1e-5f);
    EXPECT_EQ(from_bf16(h.download()), hsum) << tag << " h = x + r";
    EXPECT_LT(rel_l2(from_bf16(y2.download()), ry2), kBF16) << tag << " y of x + r";
    EXPECT_LT(rel_l2(rstd2.download(), rrstd2), kF32) << tag << " rstd of x + r";
  }
}

TEST(CudaRope, ForwardAndInverseMatchCpu) {
  TITAN_REQUIRE_GPU();
  for (auto [batch, seq, heads, hd] : std::vector<std::array<int64_t, 4>>{{2, 37, 3, 16}, {1, 130, 5, 64}, {1, 9, 2, 128}}) {
    const auto tag = where("rope b s h hd", {batch, seq, heads, hd});
    const int64_t count = batch * seq * heads * hd, half = hd / 2;
    std::vector<float> cos(seq * half), sin(seq * half);
    cpu::rope_tables(cos.data(), sin.data(), seq, hd, 500000.0);
    DeviceArray<float> dcos(cos), dsin(sin);
    for (bool inverse : {false, true}) {
      auto x = randn(tag + (inverse ? "inv" : "fwd"), count);
      const auto xb = to_bf16(x);
      DeviceArray<uint16_t> dx(xb);
      cuda::rope(dx.get(), dcos.get(), dsin.get(), batch, seq, heads, hd, inverse, nullptr);
      if (inverse) cpu::rope_backward(x.data(), cos.data(), sin.data(), batch, seq, heads, hd);
      else cpu::rope_forward(x.data(), cos.data(), sin.data(), batch, seq, heads, hd);
      EXPECT_LT(rel_l2(from_bf16(dx.download()), x), kBF16) << tag << (inverse ? " inverse" : " forward");
    }
  }
}

TEST(CudaElementwise, SwigluAndAddMatchCpu) {
  TITAN_REQUIRE_GPU();
  for (int64_t n : {1L, 1000L, 65537L}) {
    const auto tag = where("swiglu n", {n});
    auto a = randn(tag + "a", n, 2.0f), b = randn(tag + "b", n), dg = randn(tag + "dg", n);
    const auto ab = to_bf16(a), bb = to_bf16(b), dgb = to_bf16(dg);
    DeviceArray<uint16_t> da_(ab), db_(bb), ddg(dgb), g(n), da(n), db(n), sum(n);
    cuda::swiglu_forward(da_.get(), db_.get(), g.get(), n, nullptr);
    cuda::swiglu_backward(da_.get(), db_.get(), ddg.get(), da.get(), db.get(), n, nullptr);
    cuda::add(da_.get(), db_.get(), sum.get(), n, nullptr);
    std::vector<float> rg(n), rda(n), rdb(n), rsum(n);
    cpu::swiglu_forward(a.data(), b.data(), rg.data(), n);
    cpu::swiglu_backward(a.data(), b.data(), dg.data(), rda.data(), rdb.data(), n);
    for (int64_t i = 0; i < n; ++i) rsum[i] = a[i] + b[i];
    EXPECT_LT(rel_l2(from_bf16(g.download()), rg), kBF16) << tag << " g";
    EXPECT_LT(rel_l2(from_bf16(da.download()), rda), kBF16) << tag << " da";
    EXPECT_LT(rel_l2(from_bf16(db.download()), rdb), kBF16) << tag << " db";
    EXPECT_LT(rel_l2(from_bf16(sum.download()), rsum), kBF16) << tag << " a + b";
  }
}

TEST(CudaEmbedding, ForwardGathersAndBackwardSumsInOrder) {
  TITAN_REQUIRE_GPU();
  for (auto [n, vocab, d] : std::vector<std::array<int64_t, 3>>{{1, 5, 8}, {300, 37, 100}, {4099, 2048, 256}}) {
    const auto tag = where("embedding n vocab d", {n, vocab, d});
    NamedStream s(fresh_seed(), tag);
    std::vector<int32_t> tokens(n);
    for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>(s.uniform(i) * vocab) % vocab;
    auto w = randn(tag + "w", vocab * d), dout = randn(tag + "dout", n * d), dw0 = randn(tag + "dw0", vocab * d);
    const auto wb = to_bf16(w), doutb = to_bf16(dout);
    DeviceArray<int32_t> dtok(tokens);
    DeviceArray<uint16_t> dw_(wb), out(n * d), ddout(doutb);
    DeviceArray<float> ddw(dw0);
    cuda::embedding_forward(dtok.get(), dw_.get(), out.get(), n, d, nullptr);
    // The grouping the CUDA model builds on the host: positions by token, in position order.
    std::vector<int32_t> pos(n), ids, offsets;
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(i);
    std::stable_sort(pos.begin(), pos.end(), [&](int32_t a, int32_t b) { return tokens[a] < tokens[b]; });
    for (int64_t i = 0; i < n; ++i)
      if (i == 0 || tokens[pos[i]] != tokens[pos[i - 1]]) {
        ids.push_back(tokens[pos[i]]);
        offsets.push_back(static_cast<int32_t>(i));
      }
    offsets.push_back(static_cast<int32_t>(n));
    DeviceArray<int32_t> dids(ids), doff(offsets), dpos(pos);
    cuda::embedding_backward(dids.get(), doff.get(), dpos.get(), static_cast<int64_t>(ids.size()), ddout.get(), ddw.get(),
                             d, nullptr);
    std::vector<float> rout(n * d), rdw = dw0;
    cpu::embedding_forward(tokens.data(), w.data(), rout.data(), n, vocab, d);
    cpu::embedding_backward(tokens.data(), dout.data(), rdw.data(), n, d);
    EXPECT_EQ(from_bf16(out.download()), rout) << tag << " forward";
    EXPECT_LT(rel_l2(ddw.download(), rdw), kF32) << tag << " backward";
  }
}

TEST(CudaAttention, ForwardAndBackwardMatchCpu) {
  TITAN_REQUIRE_GPU();
  const std::vector<cuda::AttentionShape> shapes{
      {2, 100, 4, 2, 16}, {1, 130, 8, 8, 64}, {2, 64, 4, 1, 32}, {1, 257, 2, 1, 128}, {3, 1, 2, 2, 16}, {1, 200, 6, 3, 64},
      {1, 300, 4, 2, 64}, {2, 384, 2, 2, 32}};  // several 128-row blocks: full, partial, skipped and unmasked tiles
  for (auto impl : {cuda::AttentionImpl::tensor_core, cuda::AttentionImpl::fma})
  for (const auto& s : shapes) {
    const auto tag = where(impl == cuda::AttentionImpl::fma ? "fma attention b s h kv hd" : "tensor-core attention b s h kv hd",
                           {s.batch, s.seq, s.heads, s.kv_heads, s.head_dim});
    const int64_t nq = s.batch * s.seq * s.heads * s.head_dim, nk = s.batch * s.seq * s.kv_heads * s.head_dim;
    auto q = randn(tag + "q", nq), k = randn(tag + "k", nk), v = randn(tag + "v", nk), dout = randn(tag + "do", nq);
    const auto qb = to_bf16(q), kb = to_bf16(k), vb = to_bf16(v), doutb = to_bf16(dout);
    DeviceArray<uint16_t> dq_(qb), dk_(kb), dv_(vb), ddo(doutb), o(nq), dq(nq), dk(nk), dv(nk);
    DeviceArray<float> lse(s.batch * s.heads * s.seq), delta(s.batch * s.heads * s.seq);
    cuda::attention_forward(dq_.get(), dk_.get(), dv_.get(), o.get(), lse.get(), s, nullptr, impl);
    cuda::attention_backward(dq_.get(), dk_.get(), dv_.get(), o.get(), lse.get(), ddo.get(), dq.get(), dk.get(), dv.get(),
                             delta.get(), s, nullptr, impl);
    const cpu::AttentionShape cs{s.batch, s.seq, s.heads, s.kv_heads, s.head_dim};
    std::vector<float> ro(nq), rlse(s.batch * s.heads * s.seq), rdq(nq), rdk(nk), rdv(nk);
    cpu::attention_forward(q.data(), k.data(), v.data(), ro.data(), rlse.data(), cs);
    cpu::attention_backward(q.data(), k.data(), v.data(), ro.data(), rlse.data(), dout.data(), rdq.data(), rdk.data(),
                            rdv.data(), cs);
    EXPECT_LT(rel_l2(from_bf16(o.download()), ro), kAttention) << tag << " o";
    EXPECT_LT(rel_l2(lse.download(), rlse), kF32) << tag << " lse (fp32)";
    EXPECT_LT(rel_l2(from_bf16(dq.download()), rdq), kAttention) << tag << " dq";
    EXPECT_LT(rel_l2(from_bf16(dk.download()), rdk), kAttention) << tag << " dk";
    EXPECT_LT(rel_l2(from_bf16(dv.download()), rdv), kAttention) << tag << " dv";
    // Deterministic: a second backward gives the same bits.
    const auto dq_first = dq.download(), dk_first = dk.download(), dv_first = dv.download();
    dq.poison();
    dk.poison();
    dv.poison();
    cuda::attention_backward(dq_.get(), dk_.get(), dv_.get(), o.get(), lse.get(), ddo.get(), dq.get(), dk.get(), dv.get(),
                             delta.get(), s, nullptr, impl);
    EXPECT_EQ(dq.download(), dq_first) << tag << " dq rerun";
    EXPECT_EQ(dk.download(), dk_first) << tag << " dk rerun";
    EXPECT_EQ(dv.download(), dv_first) << tag << " dv rerun";
  }
}

TEST(CudaCrossEntropy, LossAndGradientMatchDoubleReference) {
  TITAN_REQUIRE_GPU();
  // 301: rows start at every alignment (the kernel's one-by-one head and tail); 128256: Llama 3's.
  for (auto [rows, vocab] : std::vector<std::array<int64_t, 2>>{{1, 10}, {37, 2048}, {9, 301}, {5, 128256}}) {
    const auto tag = where("cross-entropy rows vocab", {rows, vocab});
    auto logits = randn(tag + "z", rows * vocab, 3.0f);
    const std::vector<uint16_t> logits_bf16 = to_bf16(logits);
    NamedStream s(fresh_seed(), tag + "labels");
    std::vector<int32_t> labels(rows);
    for (int64_t r = 0; r < rows; ++r) labels[r] = r % 4 == 3 ? -100 : static_cast<int32_t>(s.uniform(r) * vocab) % vocab;
    const float scale = 1.0f / static_cast<float>(rows);
    DeviceArray<uint16_t> dz(logits_bf16), dz_loss_only(logits_bf16);
    DeviceArray<float> loss(rows), loss_only(rows);
    DeviceArray<int32_t> dl(labels);
    cuda::cross_entropy_rows(dz.get(), dl.get(), rows, vocab, -100, scale, loss.get(), true, nullptr);
    cuda::cross_entropy_rows(dz_loss_only.get(), dl.get(), rows, vocab, -100, scale, loss_only.get(), false, nullptr);
    std::vector<float> rloss(rows), rgrad(rows * vocab);
    for (int64_t r = 0; r < rows; ++r) {
      const float* z = logits.data() + r * vocab;
      const double mx = *std::max_element(z, z + vocab);
      double sum = 0;
      for (int64_t j = 0; j < vocab; ++j) sum += std::exp(z[j] - mx);
      const double lse = mx + std::log(sum);
      const bool ignored = labels[r] == -100;
      rloss[r] = ignored ? 0.0f : static_cast<float>(lse - z[labels[r]]);
      for (int64_t j = 0; j < vocab; ++j)
        rgrad[r * vocab + j] = ignored ? 0.0f : static_cast<float>((std::exp(z[j] - lse) - (j == labels[r])) * scale);
    }
    EXPECT_LT(rel_l2(loss.download(), rloss), kF32) << tag << " loss";
    EXPECT_LT(rel_l2(from_bf16(dz.download()), rgrad), kBF16) << tag << " gradient, in place of the logits";
    EXPECT_EQ(loss_only.download(), loss.download()) << tag << " loss without the gradient";
    EXPECT_EQ(dz_loss_only.download(), logits_bf16) << tag << " logits untouched without the gradient";
  }
}

TEST(CudaReduce, SumsMatchDoubleAndRepeat) {
  TITAN_REQUIRE_GPU();
  // Offsets 1..3 start the kernel's 16-byte loads after a one-by-one head; n = 3 is all head.
  for (int64_t n : {1L, 3L, 1000L, 1000003L})
    for (int64_t offset : {0L, 1L, 3L}) {
      if (offset >= n) continue;
      const auto tag = where("reduce n offset", {n, offset});
      const auto x = randn(tag, n);
      double sum = 0, sq = 0;
      for (int64_t i = offset; i < n; ++i) {
        sum += x[i];
        sq += static_cast<double>(x[i]) * x[i];
      }
      DeviceArray<float> dx(x);
      DeviceArray<double> out(2), scratch(cuda::reduce_scratch_doubles());
      cuda::sum_f32(dx.get() + offset, n - offset, out.get(), scratch.get(), nullptr);
      cuda::sum_squares_f32(dx.get() + offset, n - offset, out.get() + 1, scratch.get(), nullptr);
      const auto got = out.download();
      EXPECT_NEAR(got[0], sum, 1e-9 * std::max(1.0, sq)) << tag << " sum";
      EXPECT_NEAR(got[1], sq, 1e-9 * sq) << tag << " sum of squares";
      cuda::sum_squares_f32(dx.get() + offset, n - offset, out.get() + 1, scratch.get(), nullptr);
      EXPECT_EQ(out.download()[1], got[1]) << tag << " repeat";
    }
}

TEST(CudaAdamW, MatchesCpuOptimizerIncludingClipping) {
  TITAN_REQUIRE_GPU();
  for (int64_t n : {1L, 1003L, 300007L}) {
    const auto tag = where("adamw n", {n});
    Parameter p = make_parameter("w", {n});
    auto w = randn(tag + "w", n), g = randn(tag + "g", n), m = randn(tag + "m", n, 0.1f), v = randn(tag + "v", n, 0.1f);
    for (auto& x : v) x = x * x;  // second moments are non-negative
    std::copy(w.begin(), w.end(), p.master.f32());
    std::copy(g.begin(), g.end(), p.grad.f32());
    std::copy(m.begin(), m.end(), p.exp_avg.f32());
    std::copy(v.begin(), v.end(), p.exp_avg_sq.f32());
    DeviceArray<float> dw(w), dg(g), dm(m), dv(v);
    DeviceArray<uint16_t> wb(n);
    const double lr = 1e-3, b1 = 0.9, b2 = 0.95, wd = 0.1;
    optim::AdamW cpu_opt({lr, b1, b2, 1e-8, wd});
    std::deque<Parameter> params;
    params.push_back(std::move(p));
    const float coef = 0.5f;
    for (int step = 0; step < 3; ++step) {
      if (step > 0) {  // a new gradient each step: with one gradient repeated, swapped betas would pass
        g = randn(tag + "g" + std::to_string(step), n);
        dg.upload(g);
      }
      for (int64_t i = 0; i < n; ++i) params[0].grad.f32()[i] = g[i] * coef;  // clip on the CPU as clip_grads would
      cpu_opt.step(params, lr);
      // The GPU's factors from the textbook formula, not from AdamW::advance(), which the CPU
      // reference also uses (a wrong factor there would pass both sides).
      const double t = step + 1;
      const cuda::AdamWStep f{static_cast<float>(1 - lr * wd), static_cast<float>(b1), static_cast<float>(b2), 1e-8f,
                              static_cast<float>(lr / (1 - std::pow(b1, t))),
                              static_cast<float>(std::sqrt(1 - std::pow(b2, t))), coef};
      cuda::adamw(dw.get(), dg.get(), dm.get(), dv.get(), wb.get(), n, f, nullptr);
    }
    const auto gw = dw.download(), gm = dm.download(), gv = dv.download();
    const auto gwb = wb.download();
    EXPECT_LT(rel_l2(gw, std::vector<float>(params[0].master.f32(), params[0].master.f32() + n)), kF32) << tag;
    EXPECT_LT(rel_l2(gm, std::vector<float>(params[0].exp_avg.f32(), params[0].exp_avg.f32() + n)), kF32) << tag;
    EXPECT_LT(rel_l2(gv, std::vector<float>(params[0].exp_avg_sq.f32(), params[0].exp_avg_sq.f32() + n)), kF32) << tag;
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(gwb[i], f32_to_bf16(gw[i])) << tag << " bf16 copy, element " << i;
  }
}

// Causal grouped-query attention on the CPU, flash-style: scores are made one Bq x Bk tile at
// a time with an online softmax, so memory per thread is a few tiles whatever seq is.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "titan/core/error.h"
#include "titan/ops/ops.h"

namespace titan::cpu {

namespace {
constexpr int64_t kBq = 64;  // query rows per tile
constexpr int64_t kBk = 64;  // key columns per tile
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Copies rows [k0, k0 + nk) of one head of x (row stride ld) transposed into xt[hd][kBk].
void load_transposed(const float* x, int64_t ld, int64_t k0, int64_t nk, int64_t hd, float* xt) {
  for (int64_t j = 0; j < nk; ++j) {
    const float* row = x + (k0 + j) * ld;
    for (int64_t d = 0; d < hd; ++d) xt[d * kBk + j] = row[d];
  }
}

// s[i][j] = scale * q[i] . k[j] for an nq x nk tile; kt is the transposed key tile.
void tile_scores(const float* q, int64_t ldq, const float* kt, int64_t nq, int64_t nk, int64_t hd,
                 float scale, float* __restrict s) {
  for (int64_t i = 0; i < nq; ++i) {
    float* __restrict si = s + i * kBk;
    for (int64_t j = 0; j < nk; ++j) si[j] = 0;
    const float* qi = q + i * ldq;
    for (int64_t d = 0; d < hd; ++d) {
      float qv = qi[d] * scale;
      const float* __restrict kd = kt + d * kBk;
      for (int64_t j = 0; j < nk; ++j) si[j] += qv * kd[j];
    }
  }
}

// acc[i][:] += sum_j p[i][j] * x[j][:] over the tile (x rows with stride ldx).
void tile_apply(const float* p, const float* x, int64_t ldx, int64_t nq, int64_t nk, int64_t hd,
                float* __restrict acc) {
  for (int64_t i = 0; i < nq; ++i) {
    float* __restrict ai = acc + i * hd;
    for (int64_t j = 0; j < nk; ++j) {
      float pij = p[i * kBk + j];
      const float* __restrict xj = x + j * ldx;
      for (int64_t d = 0; d < hd; ++d) ai[d] += pij * xj[d];
    }
  }
}

// acc[j][:] += sum_i p[i][j] * x[i][:] (the transposed product, for dK and dV).
void tile_apply_transposed(const float* p, const float* x, int64_t ldx, int64_t nq, int64_t nk,
                           int64_t hd, float* __restrict acc) {
  for (int64_t i = 0; i < nq; ++i) {
    const float* __restrict xi = x + i * ldx;
    for (int64_t j = 0; j < nk; ++j) {
      float pij = p[i * kBk + j];
      float* __restrict aj = acc + j * hd;
      for (int64_t d = 0; d < hd; ++d) aj[d] += pij * xi[d];
    }
  }
}

void check_shape(const AttentionShape& s) {
  TITAN_CHECK(s.heads > 0 && s.kv_heads > 0 && s.heads % s.kv_heads == 0, "heads ", s.heads,
              " must be a multiple of kv_heads ", s.kv_heads);
  TITAN_CHECK(s.head_dim > 0 && s.seq > 0 && s.batch > 0, "empty attention shape");
}
}  // namespace

void attention_forward(const float* q, const float* k, const float* v, float* o, float* lse,
                       const AttentionShape& s) {
  check_shape(s);
  const int64_t T = s.seq, H = s.heads, hd = s.head_dim, group = s.heads / s.kv_heads;
  const int64_t ldq = H * hd, ldk = s.kv_heads * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel
  {
    std::vector<float> kt(hd * kBk), sc(kBq * kBk), acc(kBq * hd), m(kBq), l(kBq);
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t bh = 0; bh < s.batch * H; ++bh) {
      for (int64_t q0 = 0; q0 < T; q0 += kBq) {
        const int64_t b = bh / H, h = bh % H, kvh = h / group;
        const int64_t nq = std::min(kBq, T - q0);
        const float* qb = q + (b * T + q0) * ldq + h * hd;
        const float* kbase = k + b * T * ldk + kvh * hd;
        const float* vbase = v + b * T * ldk + kvh * hd;
        std::fill(m.begin(), m.end(), kNegInf);
        std::fill(l.begin(), l.end(), 0.0f);
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t k0 = 0; k0 < q0 + nq; k0 += kBk) {
          const int64_t nk = std::min(kBk, q0 + nq - k0);
          load_transposed(kbase, ldk, k0, nk, hd, kt.data());
          tile_scores(qb, ldq, kt.data(), nq, nk, hd, scale, sc.data());
          for (int64_t i = 0; i < nq; ++i) {
            float* si = sc.data() + i * kBk;
            const int64_t valid = std::min(nk, q0 + i - k0 + 1);  // causal: key <= query
            float mx = m[i];
            for (int64_t j = 0; j < valid; ++j) mx = std::max(mx, si[j]);
            float corr = std::exp(m[i] - mx);  // 0 on the first tile (m = -inf)
            float sum = 0;
            for (int64_t j = 0; j < valid; ++j) {
              si[j] = std::exp(si[j] - mx);
              sum += si[j];
            }
            for (int64_t j = std::max<int64_t>(valid, 0); j < nk; ++j) si[j] = 0;
            l[i] = l[i] * corr + sum;
            m[i] = mx;
            float* ai = acc.data() + i * hd;
            for (int64_t d = 0; d < hd; ++d) ai[d] *= corr;
          }
          tile_apply(sc.data(), vbase + k0 * ldk, ldk, nq, nk, hd, acc.data());
        }
        for (int64_t i = 0; i < nq; ++i) {
          float* oi = o + (b * T + q0 + i) * ldq + h * hd;
          float inv = 1.0f / l[i];
          for (int64_t d = 0; d < hd; ++d) oi[d] = acc[i * hd + d] * inv;
          lse[(b * H + h) * T + q0 + i] = m[i] + std::log(l[i]);
        }
      }
    }
  }
}

void attention_backward(const float* q, const float* k, const float* v, const float* o,
                        const float* lse, const float* dout, float* dq, float* dk, float* dv,
                        const AttentionShape& s) {
  check_shape(s);
  const int64_t B = s.batch, T = s.seq, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  const int64_t group = H / KV, ldq = H * hd, ldk = KV * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  // delta[b, h, t] = dout . out, the softmax-backward row term.
  std::vector<float> delta(B * H * T);
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < B * T; ++row) {
    const int64_t b = row / T, t = row % T;
    for (int64_t h = 0; h < H; ++h) {
      const float* oi = o + row * ldq + h * hd;
      const float* gi = dout + row * ldq + h * hd;
      float acc = 0;
      for (int64_t d = 0; d < hd; ++d) acc += oi[d] * gi[d];
      delta[(b * H + h) * T + t] = acc;
    }
  }

  // One task per (batch, kv head): it owns dk/dv of that head and dq of its query heads, so no
  // two threads write the same memory and the sum order is fixed.
#pragma omp parallel
  {
    std::vector<float> kt(hd * kBk), vt(hd * kBk), p(kBq * kBk), dp(kBq * kBk), dq_acc(kBq * hd);
    std::vector<float> dk_acc(T * hd), dv_acc(T * hd);
#pragma omp for schedule(dynamic, 1)
    for (int64_t bk = 0; bk < B * KV; ++bk) {
      const int64_t b = bk / KV, kvh = bk % KV;
      const float* kbase = k + b * T * ldk + kvh * hd;
      const float* vbase = v + b * T * ldk + kvh * hd;
      std::fill(dk_acc.begin(), dk_acc.end(), 0.0f);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.0f);
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        for (int64_t q0 = 0; q0 < T; q0 += kBq) {
          const int64_t nq = std::min(kBq, T - q0);
          const float* qb = q + (b * T + q0) * ldq + h * hd;
          const float* gb = dout + (b * T + q0) * ldq + h * hd;
          const float* lse_b = lse + (b * H + h) * T + q0;
          const float* delta_b = delta.data() + (b * H + h) * T + q0;
          std::fill(dq_acc.begin(), dq_acc.end(), 0.0f);
          for (int64_t k0 = 0; k0 < q0 + nq; k0 += kBk) {
            const int64_t nk = std::min(kBk, q0 + nq - k0);
            load_transposed(kbase, ldk, k0, nk, hd, kt.data());
            load_transposed(vbase, ldk, k0, nk, hd, vt.data());
            tile_scores(qb, ldq, kt.data(), nq, nk, hd, scale, p.data());
            tile_scores(gb, ldq, vt.data(), nq, nk, hd, 1.0f, dp.data());
            for (int64_t i = 0; i < nq; ++i) {
              const int64_t valid = std::min(nk, q0 + i - k0 + 1);
              float* pi = p.data() + i * kBk;
              float* dpi = dp.data() + i * kBk;
              for (int64_t j = 0; j < nk; ++j) {
                float pij = j < valid ? std::exp(pi[j] - lse_b[i]) : 0.0f;
                pi[j] = pij;
                dpi[j] = pij * (dpi[j] - delta_b[i]) * scale;  // dS, scaled for dq and dk
              }
            }
            tile_apply_transposed(p.data(), gb, ldq, nq, nk, hd, dv_acc.data() + k0 * hd);
            tile_apply(dp.data(), kbase + k0 * ldk, ldk, nq, nk, hd, dq_acc.data());
            tile_apply_transposed(dp.data(), qb, ldq, nq, nk, hd, dk_acc.data() + k0 * hd);
          }
          for (int64_t i = 0; i < nq; ++i)
            std::copy_n(dq_acc.data() + i * hd, hd, dq + (b * T + q0 + i) * ldq + h * hd);
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        std::copy_n(dk_acc.data() + t * hd, hd, dk + (b * T + t) * ldk + kvh * hd);
        std::copy_n(dv_acc.data() + t * hd, hd, dv + (b * T + t) * ldk + kvh * hd);
      }
    }
  }
}

}  // namespace titan::cpu

// Causal grouped-query attention on the CPU, flash-style: scores are made one kBq x kBk tile
// at a time with an online softmax, so memory per thread is a few tiles whatever seq is.
// The tile products are register-blocked loops of fixed width that the compiler vectorizes.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "titan/core/error.h"
#include "titan/ops/cpu/vec_math.h"
#include "titan/ops/ops.h"

namespace titan::cpu {

namespace {
constexpr int64_t kBq = 64;  // query rows per tile
constexpr int64_t kBk = 64;  // key columns per tile
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Rows [k0, k0 + nk) of one head of x (row stride ld), transposed into xt[hd][kBk]; columns
// past nk are zero so the fixed-width products below need no masks.
void load_transposed(const float* x, int64_t ld, int64_t k0, int64_t nk, int64_t hd, float* xt) {
  for (int64_t d = 0; d < hd; ++d) std::fill(xt + d * kBk + nk, xt + (d + 1) * kBk, 0.0f);
  for (int64_t j = 0; j < nk; ++j) {
    const float* row = x + (k0 + j) * ld;
    for (int64_t d = 0; d < hd; ++d) xt[d * kBk + j] = row[d];
  }
}

// s[r][0..kBk) = scale * q[r] . k[j] for R query rows at once (accumulators in registers).
template <int R>
inline void score_rows(const float* q, int64_t ldq, const float* kt, int64_t hd, float scale, float* s) {
  float acc[R][kBk] = {};
  for (int64_t d = 0; d < hd; ++d) {
    const float* kd = kt + d * kBk;
    for (int r = 0; r < R; ++r) {
      const float qv = q[r * ldq + d] * scale;
#pragma omp simd
      for (int64_t j = 0; j < kBk; ++j) acc[r][j] += qv * kd[j];
    }
  }
  for (int r = 0; r < R; ++r) std::copy_n(acc[r], kBk, s + r * kBk);
}

void tile_scores(const float* q, int64_t ldq, const float* kt, int64_t nq, int64_t hd, float scale, float* s) {
  int64_t i = 0;
  for (; i + 4 <= nq; i += 4) score_rows<4>(q + i * ldq, ldq, kt, hd, scale, s + i * kBk);
  for (; i < nq; ++i) score_rows<1>(q + i * ldq, ldq, kt, hd, scale, s + i * kBk);
}

// acc[r][d0..d0+W) += sum_j p[r][j] * x[j][d0..d0+W) for R rows and a W-wide slice of hd.
template <int R, int W>
inline void apply_block(const float* p, int64_t ldp, const float* x, int64_t ldx, int64_t inner,
                        float* acc, int64_t hd) {
  float a[R][W];
  for (int r = 0; r < R; ++r) std::copy_n(acc + r * hd, W, a[r]);
  for (int64_t j = 0; j < inner; ++j) {
    const float* xj = x + j * ldx;
    for (int r = 0; r < R; ++r) {
      const float pj = p[r * ldp + j];
#pragma omp simd
      for (int w = 0; w < W; ++w) a[r][w] += pj * xj[w];
    }
  }
  for (int r = 0; r < R; ++r) std::copy_n(a[r], W, acc + r * hd);
}

template <int W>
void apply_rows(const float* p, int64_t ldp, const float* x, int64_t ldx, int64_t rows,
                int64_t inner, float* acc, int64_t hd, int64_t d0) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) apply_block<4, W>(p + r * ldp, ldp, x + d0, ldx, inner, acc + r * hd + d0, hd);
  for (; r < rows; ++r) apply_block<1, W>(p + r * ldp, ldp, x + d0, ldx, inner, acc + r * hd + d0, hd);
}

// acc[rows][hd] += p[rows][inner] @ x[inner][hd] (p row stride ldp, x row stride ldx).
void tile_apply(const float* p, int64_t ldp, const float* x, int64_t ldx, int64_t rows, int64_t inner,
                int64_t hd, float* acc) {
  int64_t d0 = 0;
  for (; d0 + 32 <= hd; d0 += 32) apply_rows<32>(p, ldp, x, ldx, rows, inner, acc, hd, d0);
  for (; d0 + 16 <= hd; d0 += 16) apply_rows<16>(p, ldp, x, ldx, rows, inner, acc, hd, d0);
  for (; d0 + 4 <= hd; d0 += 4) apply_rows<4>(p, ldp, x, ldx, rows, inner, acc, hd, d0);
  for (; d0 < hd; ++d0) apply_rows<1>(p, ldp, x, ldx, rows, inner, acc, hd, d0);
}

// t[j][i] = s[i][j] for the nq x nk tile.
void transpose_tile(const float* s, int64_t nq, int64_t nk, float* t) {
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t j = 0; j < nk; ++j) t[j * kBq + i] = s[i * kBk + j];
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
  const int64_t q_tiles = (T + kBq - 1) / kBq;
#pragma omp parallel
  {
    std::vector<float> kt(hd * kBk), sc(kBq * kBk), acc(kBq * hd), m(kBq), l(kBq);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < s.batch * H * q_tiles; ++task) {
      // Largest query tiles first: they have the most key tiles to visit.
      const int64_t bh = task / q_tiles, q0 = (q_tiles - 1 - task % q_tiles) * kBq;
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
        tile_scores(qb, ldq, kt.data(), nq, hd, scale, sc.data());
        for (int64_t i = 0; i < nq; ++i) {
          float* si = sc.data() + i * kBk;
          const int64_t valid = std::min(nk, q0 + i - k0 + 1);  // causal: key <= query
          float mx = m[i];
#pragma omp simd reduction(max : mx)
          for (int64_t j = 0; j < valid; ++j) mx = std::max(mx, si[j]);
          float sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < valid; ++j) {
            si[j] = exp_approx(si[j] - mx);
            sum += si[j];
          }
          std::fill(si + std::max<int64_t>(valid, 0), si + kBk, 0.0f);
          const float corr = std::exp(m[i] - mx);  // 0 on the first tile (m = -inf)
          l[i] = l[i] * corr + sum;
          m[i] = mx;
          float* ai = acc.data() + i * hd;
          for (int64_t d = 0; d < hd; ++d) ai[d] *= corr;
        }
        tile_apply(sc.data(), kBk, vbase + k0 * ldk, ldk, nq, nk, hd, acc.data());
      }
      for (int64_t i = 0; i < nq; ++i) {
        float* oi = o + (b * T + q0 + i) * ldq + h * hd;
        const float inv = 1.0f / l[i];
        for (int64_t d = 0; d < hd; ++d) oi[d] = acc[i * hd + d] * inv;
        lse[(b * H + h) * T + q0 + i] = m[i] + std::log(l[i]);
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
    std::vector<float> kt(hd * kBk), vt(hd * kBk), p(kBq * kBk), ds(kBq * kBk), tr(kBk * kBq);
    std::vector<float> dq_acc(kBq * hd), dk_acc(T * hd), dv_acc(T * hd);
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
            tile_scores(qb, ldq, kt.data(), nq, hd, scale, p.data());
            tile_scores(gb, ldq, vt.data(), nq, hd, 1.0f, ds.data());  // dP = dO V^T
            for (int64_t i = 0; i < nq; ++i) {
              const int64_t valid = std::min(nk, q0 + i - k0 + 1);
              float* pi = p.data() + i * kBk;
              float* dsi = ds.data() + i * kBk;
              const float li = lse_b[i], di = delta_b[i];
#pragma omp simd
              for (int64_t j = 0; j < kBk; ++j) {
                const float pij = j < valid ? exp_approx(pi[j] - li) : 0.0f;
                pi[j] = pij;
                dsi[j] = pij * (dsi[j] - di) * scale;  // dS, with the score scale folded in
              }
            }
            transpose_tile(p.data(), nq, nk, tr.data());
            tile_apply(tr.data(), kBq, gb, ldq, nk, nq, hd, dv_acc.data() + k0 * hd);  // dV += P^T dO
            tile_apply(ds.data(), kBk, kbase + k0 * ldk, ldk, nq, nk, hd, dq_acc.data());  // dQ += dS K
            transpose_tile(ds.data(), nq, nk, tr.data());
            tile_apply(tr.data(), kBq, qb, ldq, nk, nq, hd, dk_acc.data() + k0 * hd);  // dK += dS^T Q
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

namespace titan::cpu {

void attention_decode(const float* q, const float* k_cache, const float* v_cache, float* o, int64_t positions,
                      int64_t heads, int64_t kv_heads, int64_t head_dim) {
  const int64_t group = heads / kv_heads, kv = kv_heads * head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  std::vector<float> scores(static_cast<size_t>(positions));
  for (int64_t h = 0; h < heads; ++h) {
    const float* qh = q + h * head_dim;
    const int64_t kvh = h / group;
    float mx = -INFINITY;
    for (int64_t t = 0; t < positions; ++t) {
      const float* kt = k_cache + t * kv + kvh * head_dim;
      float s = 0;
      for (int64_t i = 0; i < head_dim; ++i) s += qh[i] * kt[i];
      scores[t] = s * scale;
      mx = std::max(mx, scores[t]);
    }
    float sum = 0;
    for (int64_t t = 0; t < positions; ++t) sum += (scores[t] = std::exp(scores[t] - mx));
    float* out = o + h * head_dim;
    std::fill(out, out + head_dim, 0.0f);
    for (int64_t t = 0; t < positions; ++t) {
      const float* vt = v_cache + t * kv + kvh * head_dim;
      const float pt = scores[t] / sum;
      for (int64_t i = 0; i < head_dim; ++i) out[i] += pt * vt[i];
    }
  }
}

}  // namespace titan::cpu

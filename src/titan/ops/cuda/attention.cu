// Causal grouped-query flash attention: forward, and a deterministic backward in two kernels
// (dK/dV per key tile, dQ per query tile) so no gradient is ever summed with atomics.
// Tiles of 64 queries x 64 keys in shared memory as fp32; 256 threads, four per tile row, each
// thread owning every fourth key of the tile and every fourth element of the head dimension.
// The math runs on the FMA units: simple, and an independent check of the tensor-core kernels
// (attention_tc.cu), which are the default.
#include <cmath>

#include "titan/ops/attention_head_dims.h"
#include "titan/ops/cuda/attention_kernels.h"
#include "titan/ops/cuda/attention_launch.cuh"
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/cuda/kernel_util.cuh"

namespace titan::cuda {

using namespace detail;

namespace {
constexpr int kTile = 64;       // queries per block tile and keys per key tile
constexpr int kThreads = 256;   // four threads per tile row
constexpr int kPerThread = kTile / 4;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Copies rows [row0, row0 + kTile) of one head into a padded fp32 tile; rows past seq are zeros.
template <int D>
__device__ void load_tile(float* tile, const bf16_t* src, int64_t batch, int64_t row0, int64_t seq, int64_t heads,
                          int64_t head) {
  for (int idx = threadIdx.x; idx < kTile * D; idx += blockDim.x) {
    const int rr = idx / D, dd = idx % D;
    const int64_t pos = row0 + rr;
    tile[rr * (D + 1) + dd] = pos < seq ? to_f(src[((batch * seq + pos) * heads + head) * D + dd]) : 0.0f;
  }
}

template <int D>
size_t forward_smem() { return (3 * kTile * (D + 1) + kTile * (kTile + 1)) * sizeof(float); }
template <int D>
size_t dkdv_smem() { return (4 * kTile * (D + 1) + 2 * kTile * (kTile + 1) + 2 * kTile) * sizeof(float); }
template <int D>
size_t dq_smem() { return (4 * kTile * (D + 1) + kTile * (kTile + 1)) * sizeof(float); }

// grid (query tiles, heads, batch)
template <int D>
__global__ void __launch_bounds__(kThreads) forward_kernel(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                                           bf16_t* o, float* lse, AttentionDims dims) {
  extern __shared__ float smem[];
  float* qs = smem;
  float* ks = qs + kTile * (D + 1);
  float* vs = ks + kTile * (D + 1);
  float* ps = vs + kTile * (D + 1);
  const int64_t qt = blockIdx.x, h = blockIdx.y, b = blockIdx.z, seq = dims.seq;
  const int64_t kvh = h / (dims.heads / dims.kv_heads), q0 = qt * kTile;
  const int r = threadIdx.x >> 2, sub = threadIdx.x & 3;
  const int64_t qpos = q0 + r;
  const float scale_log2 = dims.scale * kLog2e;
  load_tile<D>(qs, q, b, q0, seq, dims.heads, h);
  float m = -INFINITY, l = 0.0f, acc[D / 4];
#pragma unroll
  for (int i = 0; i < D / 4; ++i) acc[i] = 0.0f;
  for (int64_t kt = 0; kt <= qt; ++kt) {
    const int64_t k0 = kt * kTile;
    __syncthreads();  // the previous tile's reads of ks/vs/ps are done
    load_tile<D>(ks, k, b, k0, seq, dims.kv_heads, kvh);
    load_tile<D>(vs, v, b, k0, seq, dims.kv_heads, kvh);
    __syncthreads();
    float s[kPerThread];
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) s[j] = 0.0f;
    for (int d = 0; d < D; ++d) {
      const float qv = qs[r * (D + 1) + d];
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) s[j] += qv * ks[(sub + 4 * j) * (D + 1) + d];
    }
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t kpos = k0 + sub + 4 * j;
      s[j] = (kpos <= qpos && kpos < seq) ? s[j] * scale_log2 : -INFINITY;
      tile_max = fmaxf(tile_max, s[j]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    // Key k0 <= q0 <= qpos is always unmasked, so m_new is finite.
    const float m_new = fmaxf(m, tile_max);
    const float alpha = exp2f(m - m_new);
    float row_sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const float p = exp2f(s[j] - m_new);
      row_sum += p;
      ps[r * (kTile + 1) + sub + 4 * j] = p;
    }
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
    l = l * alpha + row_sum;
    m = m_new;
    __syncwarp();  // a row's probabilities are written by the four lanes that read them
#pragma unroll
    for (int i = 0; i < D / 4; ++i) acc[i] *= alpha;
    for (int c = 0; c < kTile; ++c) {
      const float p = ps[r * (kTile + 1) + c];
#pragma unroll
      for (int i = 0; i < D / 4; ++i) acc[i] += p * vs[c * (D + 1) + sub + 4 * i];
    }
  }
  if (qpos >= seq) return;
  bf16_t* out = o + ((b * seq + qpos) * dims.heads + h) * D;
  const float inv_l = 1.0f / l;
#pragma unroll
  for (int i = 0; i < D / 4; ++i) out[sub + 4 * i] = to_bf(acc[i] * inv_l);
  if (sub == 0) lse[(b * dims.heads + h) * seq + qpos] = (m + log2f(l)) * kLn2;
}

// delta[b, h, s] = sum_d dout * o over rows (b, s, h) of kLanes x 8 elements: each thread takes
// 16 bytes of both, kLanes neighbouring lanes add theirs. (One warp per row with 2-byte loads
// ran at a quarter of HBM's rate.) The loop runs whole warps, so every lane reaches the shuffles.
template <int kLanes>
__global__ void delta_kernel(const bf16_t* o, const bf16_t* dout, float* delta, int64_t rows, int64_t seq,
                             int64_t heads) {
  const int64_t total = rows * kLanes, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int lane = threadIdx.x & 31;
  for (int64_t base = blockIdx.x * static_cast<int64_t>(blockDim.x) + (threadIdx.x - lane); base < total;
       base += stride) {
    const int64_t i = base + lane;
    float acc = 0.0f;
    if (i < total) {
      const uint4 a = reinterpret_cast<const uint4*>(o)[i], b = reinterpret_cast<const uint4*>(dout)[i];
      const bf16_t* x = reinterpret_cast<const bf16_t*>(&a);
      const bf16_t* y = reinterpret_cast<const bf16_t*>(&b);
#pragma unroll
      for (int k = 0; k < 8; ++k) acc += to_f(x[k]) * to_f(y[k]);
    }
#pragma unroll
    for (int off = kLanes / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (i < total && i % kLanes == 0) {
      const int64_t row = i / kLanes, h = row % heads, bs = row / heads;
      delta[(bs / seq * heads + h) * seq + bs % seq] = acc;
    }
  }
}

template <int kLanes>
void launch_delta(const bf16* o, const bf16* dout, float* delta, int64_t rows, const AttentionShape& s,
                  cudaStream_t stream) {
  delta_kernel<kLanes><<<grid_for(rows * kLanes, kThreads), kThreads, 0, stream>>>(as_bf16(o), as_bf16(dout), delta,
                                                                                 rows, s.seq, s.heads);
  TITAN_CUDA_CHECK_LAUNCH();
}

// grid (key tiles, kv heads, batch): dK and dV of one key tile, summed over the query heads
// of its group and every query tile at or after it, in a fixed order.
template <int D>
__global__ void __launch_bounds__(kThreads) dkdv_kernel(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                                        const float* lse, const bf16_t* dout, const float* delta,
                                                        bf16_t* dk, bf16_t* dv, AttentionDims dims) {
  extern __shared__ float smem[];
  float* ks = smem;
  float* vs = ks + kTile * (D + 1);
  float* qs = vs + kTile * (D + 1);
  float* dos = qs + kTile * (D + 1);
  float* ps = dos + kTile * (D + 1);    // [key][query]
  float* dss = ps + kTile * (kTile + 1);
  float* lse_s = dss + kTile * (kTile + 1);
  float* delta_s = lse_s + kTile;
  const int64_t kt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, seq = dims.seq;
  const int64_t group = dims.heads / dims.kv_heads, k0 = kt * kTile, q_tiles = (seq + kTile - 1) / kTile;
  const int c = threadIdx.x >> 2, sub = threadIdx.x & 3;
  const int64_t kpos = k0 + c;
  const float scale_log2 = dims.scale * kLog2e;
  load_tile<D>(ks, k, b, k0, seq, dims.kv_heads, kvh);
  load_tile<D>(vs, v, b, k0, seq, dims.kv_heads, kvh);
  float dk_acc[D / 4], dv_acc[D / 4];
#pragma unroll
  for (int i = 0; i < D / 4; ++i) dk_acc[i] = dv_acc[i] = 0.0f;
  for (int64_t hg = 0; hg < group; ++hg) {
    const int64_t h = kvh * group + hg;
    for (int64_t qt = kt; qt < q_tiles; ++qt) {
      const int64_t q0 = qt * kTile;
      __syncthreads();
      load_tile<D>(qs, q, b, q0, seq, dims.heads, h);
      load_tile<D>(dos, dout, b, q0, seq, dims.heads, h);
      if (threadIdx.x < kTile) {
        const int64_t pos = q0 + threadIdx.x;
        lse_s[threadIdx.x] = pos < seq ? lse[(b * dims.heads + h) * seq + pos] * kLog2e : 0.0f;
        delta_s[threadIdx.x] = pos < seq ? delta[(b * dims.heads + h) * seq + pos] : 0.0f;
      }
      __syncthreads();
      float s[kPerThread], dp[kPerThread];
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) s[j] = dp[j] = 0.0f;
      for (int d = 0; d < D; ++d) {
        const float kv = ks[c * (D + 1) + d], vv = vs[c * (D + 1) + d];
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) {
          s[j] += qs[(sub + 4 * j) * (D + 1) + d] * kv;
          dp[j] += dos[(sub + 4 * j) * (D + 1) + d] * vv;
        }
      }
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int rr = sub + 4 * j;
        const int64_t qpos = q0 + rr;
        const bool live = kpos <= qpos && qpos < seq && kpos < seq;
        const float p = live ? exp2f(s[j] * scale_log2 - lse_s[rr]) : 0.0f;
        ps[c * (kTile + 1) + rr] = p;
        dss[c * (kTile + 1) + rr] = p * (dp[j] - delta_s[rr]);
      }
      __syncwarp();  // row c of ps/dss is written and read by the same four lanes
      for (int rr = 0; rr < kTile; ++rr) {
        const float p = ps[c * (kTile + 1) + rr], ds = dss[c * (kTile + 1) + rr];
#pragma unroll
        for (int i = 0; i < D / 4; ++i) {
          dv_acc[i] += p * dos[rr * (D + 1) + sub + 4 * i];
          dk_acc[i] += ds * qs[rr * (D + 1) + sub + 4 * i];
        }
      }
    }
  }
  if (kpos >= seq) return;
  const int64_t base = ((b * seq + kpos) * dims.kv_heads + kvh) * D;
#pragma unroll
  for (int i = 0; i < D / 4; ++i) {
    dk[base + sub + 4 * i] = to_bf(dk_acc[i] * dims.scale);
    dv[base + sub + 4 * i] = to_bf(dv_acc[i]);
  }
}

// grid (query tiles, heads, batch): dQ of one query tile over the key tiles at or before it.
template <int D>
__global__ void __launch_bounds__(kThreads) dq_kernel(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                                      const float* lse, const bf16_t* dout, const float* delta,
                                                      bf16_t* dq, AttentionDims dims) {
  extern __shared__ float smem[];
  float* qs = smem;
  float* dos = qs + kTile * (D + 1);
  float* ks = dos + kTile * (D + 1);
  float* vs = ks + kTile * (D + 1);
  float* dss = vs + kTile * (D + 1);  // [query][key]
  const int64_t qt = blockIdx.x, h = blockIdx.y, b = blockIdx.z, seq = dims.seq;
  const int64_t kvh = h / (dims.heads / dims.kv_heads), q0 = qt * kTile;
  const int r = threadIdx.x >> 2, sub = threadIdx.x & 3;
  const int64_t qpos = q0 + r;
  const float scale_log2 = dims.scale * kLog2e;
  load_tile<D>(qs, q, b, q0, seq, dims.heads, h);
  load_tile<D>(dos, dout, b, q0, seq, dims.heads, h);
  const bool row_live = qpos < seq;
  const float row_lse = row_live ? lse[(b * dims.heads + h) * seq + qpos] * kLog2e : 0.0f;
  const float row_delta = row_live ? delta[(b * dims.heads + h) * seq + qpos] : 0.0f;
  float dq_acc[D / 4];
#pragma unroll
  for (int i = 0; i < D / 4; ++i) dq_acc[i] = 0.0f;
  for (int64_t kt = 0; kt <= qt; ++kt) {
    const int64_t k0 = kt * kTile;
    __syncthreads();
    load_tile<D>(ks, k, b, k0, seq, dims.kv_heads, kvh);
    load_tile<D>(vs, v, b, k0, seq, dims.kv_heads, kvh);
    __syncthreads();
    float s[kPerThread], dp[kPerThread];
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) s[j] = dp[j] = 0.0f;
    for (int d = 0; d < D; ++d) {
      const float qv = qs[r * (D + 1) + d], gv = dos[r * (D + 1) + d];
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        s[j] += qv * ks[(sub + 4 * j) * (D + 1) + d];
        dp[j] += gv * vs[(sub + 4 * j) * (D + 1) + d];
      }
    }
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t kpos = k0 + sub + 4 * j;
      const bool live = row_live && kpos <= qpos && kpos < seq;
      const float p = live ? exp2f(s[j] * scale_log2 - row_lse) : 0.0f;
      dss[r * (kTile + 1) + sub + 4 * j] = p * (dp[j] - row_delta);
    }
    __syncwarp();
    for (int c = 0; c < kTile; ++c) {
      const float ds = dss[r * (kTile + 1) + c];
#pragma unroll
      for (int i = 0; i < D / 4; ++i) dq_acc[i] += ds * ks[c * (D + 1) + sub + 4 * i];
    }
  }
  if (!row_live) return;
  bf16_t* out = dq + ((b * seq + qpos) * dims.heads + h) * D;
#pragma unroll
  for (int i = 0; i < D / 4; ++i) out[sub + 4 * i] = to_bf(dq_acc[i] * dims.scale);
}

template <int D>
void forward_for(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const AttentionShape& s,
                 cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((s.seq + kTile - 1) / kTile), static_cast<unsigned>(s.heads),
                  static_cast<unsigned>(s.batch));
  allow_smem_once<forward_kernel<D>>(forward_smem<D>());
  forward_kernel<D><<<grid, kThreads, forward_smem<D>(), stream>>>(as_bf16(q), as_bf16(k), as_bf16(v), as_bf16(o),
                                                                   lse, dims_of(s));
  TITAN_CUDA_CHECK_LAUNCH();
}

template <int D>
void backward_for(const bf16* q, const bf16* k, const bf16* v, const float* lse, const bf16* dout, bf16* dq,
                  bf16* dk, bf16* dv, const float* delta, const AttentionShape& s, cudaStream_t stream) {
  const unsigned tiles = static_cast<unsigned>((s.seq + kTile - 1) / kTile);
  allow_smem_once<dkdv_kernel<D>>(dkdv_smem<D>());
  dkdv_kernel<D><<<dim3(tiles, static_cast<unsigned>(s.kv_heads), static_cast<unsigned>(s.batch)), kThreads,
                   dkdv_smem<D>(), stream>>>(as_bf16(q), as_bf16(k), as_bf16(v), lse, as_bf16(dout), delta,
                                             as_bf16(dk), as_bf16(dv), dims_of(s));
  TITAN_CUDA_CHECK_LAUNCH();
  allow_smem_once<dq_kernel<D>>(dq_smem<D>());
  dq_kernel<D><<<dim3(tiles, static_cast<unsigned>(s.heads), static_cast<unsigned>(s.batch)), kThreads, dq_smem<D>(),
                 stream>>>(as_bf16(q), as_bf16(k), as_bf16(v), lse, as_bf16(dout), delta, as_bf16(dq), dims_of(s));
  TITAN_CUDA_CHECK_LAUNCH();
}

void check_shape(const AttentionShape& s) {
  TITAN_CHECK(attention_supported(s.head_dim), "CUDA attention: head_dim ", s.head_dim, " is not 16, 32, 64 or 128");
  TITAN_CHECK(s.kv_heads > 0 && s.heads % s.kv_heads == 0, "CUDA attention: heads ", s.heads,
              " is not a multiple of kv_heads ", s.kv_heads);
}
}  // namespace

bool attention_supported(int64_t head_dim) { return cuda_attention_head_dim_supported(head_dim); }

void attention_forward(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const AttentionShape& s,
                       cudaStream_t stream, AttentionImpl impl) {
  check_shape(s);
  if (s.batch * s.seq == 0) return;
  if (impl == AttentionImpl::tensor_core) return attention_forward_tc(q, k, v, o, lse, s, stream);
  switch (s.head_dim) {
    case 16: return forward_for<16>(q, k, v, o, lse, s, stream);
    case 32: return forward_for<32>(q, k, v, o, lse, s, stream);
    case 64: return forward_for<64>(q, k, v, o, lse, s, stream);
    default: return forward_for<128>(q, k, v, o, lse, s, stream);
  }
}

void attention_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* o, const float* lse,
                        const bf16* dout, bf16* dq, bf16* dk, bf16* dv, float* delta, const AttentionShape& s,
                        cudaStream_t stream, AttentionImpl impl) {
  check_shape(s);
  if (s.batch * s.seq == 0) return;
  const int64_t rows = s.batch * s.seq * s.heads;
  switch (s.head_dim) {
    case 16: launch_delta<2>(o, dout, delta, rows, s, stream); break;
    case 32: launch_delta<4>(o, dout, delta, rows, s, stream); break;
    case 64: launch_delta<8>(o, dout, delta, rows, s, stream); break;
    default: launch_delta<16>(o, dout, delta, rows, s, stream); break;
  }
  if (impl == AttentionImpl::tensor_core) return attention_backward_tc(q, k, v, lse, dout, dq, dk, dv, delta, s, stream);
  switch (s.head_dim) {
    case 16: return backward_for<16>(q, k, v, lse, dout, dq, dk, dv, delta, s, stream);
    case 32: return backward_for<32>(q, k, v, lse, dout, dq, dk, dv, delta, s, stream);
    case 64: return backward_for<64>(q, k, v, lse, dout, dq, dk, dv, delta, s, stream);
    default: return backward_for<128>(q, k, v, lse, dout, dq, dk, dv, delta, s, stream);
  }
}

}  // namespace titan::cuda

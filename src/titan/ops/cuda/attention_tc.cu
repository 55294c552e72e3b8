// Causal grouped-query flash attention on the tensor cores (mma.sync m16n8k16, bf16 in, fp32
// accumulate), FlashAttention-2's scheme: each warp owns 16 x M query rows (M = 2 for
// head_dim <= 64 in the forward and dQ kernels, else 1) against 64-key tiles that stream
// through shared memory double-buffered (cp.async); scores and probabilities stay in registers
// (an mma's accumulator layout is the next mma's operand layout), the online softmax runs in
// fp32. The backward is two kernels, dK/dV per 64-key tile and dQ per query block, so no
// gradient is summed with atomics and reruns are bit-identical.
// Operands are read from the row-major tiles with ldmatrix (.trans where an mma needs them
// transposed), except where plain loads keep a kernel within its register cap.
#include <cmath>

#include "titan/ops/cuda/attention_kernels.h"
#include "titan/ops/cuda/attention_launch.cuh"
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/kernel_util.cuh"

namespace titan::cuda {

using namespace detail;

namespace {
constexpr int kTile = 64;              // rows of a query or key tile
constexpr int kWarps = 4;              // 16 rows each of a 64-row tile (forward and dQ: 16 x row_groups)
constexpr int kThreads = 32 * kWarps;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int D>
__host__ __device__ constexpr int ld() { return D + 8; }  // row stride of row-major tiles

__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit alone: exp2f adds instructions around it to keep subnormal
// results, which the softmax has no use for.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Two floats as a bf16 pair; the first is the lower-indexed element.
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Shared-memory address of a tile element, as ldmatrix takes it.
__device__ __forceinline__ uint32_t smem_addr(const bf16_t* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// A-operand fragment of rows [row0, row0 + 16) and columns [col0, col0 + 16) of a row-major
// tile. Plain loads, not ldmatrix: the compiler may schedule them freely, which keeps dQ and
// dK/dV within their register caps (with ldmatrix both spilled).
template <int LD>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16_t* tile, int row0, int col0) {
  const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  auto ld32 = [](const bf16_t* p) { return *reinterpret_cast<const uint32_t*>(p); };
  a[0] = ld32(tile + (row0 + g) * LD + col0 + 2 * t);
  a[1] = ld32(tile + (row0 + g + 8) * LD + col0 + 2 * t);
  a[2] = ld32(tile + (row0 + g) * LD + col0 + 2 * t + 8);
  a[3] = ld32(tile + (row0 + g + 8) * LD + col0 + 2 * t + 8);
}

// B operand (16 x 8) whose column n is row (n0 + n) of a row-major tile, k along that row:
// one ldmatrix.x2 (lanes 0-15 point at row l % 8 of block l / 8, columns k0 + 8 for the second).
// In dQ, this rather than load_b_x4 keeps the 32-row kernel from spilling.
template <int LD>
__device__ __forceinline__ void load_b(uint32_t& b0, uint32_t& b1, const bf16_t* tile, int n0, int k0) {
  const int lane = threadIdx.x & 15, m = lane >> 3, r = lane & 7;
  const uint32_t addr = smem_addr(tile + (n0 + r) * LD + k0 + m * 8);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(addr));
}

// load_b through plain loads, which the compiler may schedule freely: the dK/dV kernel at its
// 168-register cap spills with ldmatrix.
template <int LD>
__device__ __forceinline__ void load_b_lds(uint32_t& b0, uint32_t& b1, const bf16_t* tile, int n0, int k0) {
  const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  b0 = *reinterpret_cast<const uint32_t*>(tile + (n0 + g) * LD + k0 + 2 * t);
  b1 = *reinterpret_cast<const uint32_t*>(tile + (n0 + g) * LD + k0 + 2 * t + 8);
}

// B operands (16 x 8 each) for columns [n0, n0 + 16), column n being row (n0 + n) of a
// row-major tile with k along that row: b[0], b[1] for n0..n0+7, b[2], b[3] for n0+8..n0+15.
// One ldmatrix.x4: lane l points at row l % 8 of block l / 8 (columns k0 + 8 for odd blocks,
// rows n0 + 8 for the upper two).
template <int LD>
__device__ __forceinline__ void load_b_x4(uint32_t (&b)[4], const bf16_t* tile, int n0, int k0) {
  const int lane = threadIdx.x & 31, m = lane >> 3, r = lane & 7;
  const uint32_t addr = smem_addr(tile + (n0 + (m >> 1) * 8 + r) * LD + k0 + (m & 1) * 8);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
               : "r"(addr));
}

// B operands for two adjacent 8-column chunks [n0, n0 + 16) of a 16 x 16 block whose k runs
// down the rows of a row-major tile (k = row0 .. row0 + 15): b[0], b[1] for columns n0..n0+7,
// b[2], b[3] for n0+8..n0+15. ldmatrix.trans hands each lane rows 2t, 2t+1 of column g.
template <int LD>
__device__ __forceinline__ void load_b_trans_x4(uint32_t (&b)[4], const bf16_t* tile, int row0, int n0) {
  const int lane = threadIdx.x & 31, m = lane >> 3, r = lane & 7;
  const uint32_t addr = smem_addr(tile + (row0 + (m & 1) * 8 + r) * LD + n0 + (m >> 1) * 8);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
               : "r"(addr));
}

// Rows [row0, row0 + R) of one head into a row-major tile (zeros past seq), 16 bytes at a time.
template <int D, int R = kTile>
__device__ void load_rows(bf16_t* tile, const bf16_t* src, int64_t b, int64_t row0, int64_t seq, int64_t heads,
                          int64_t head) {
  constexpr int kVec = D / 8;
  for (int idx = threadIdx.x; idx < R * kVec; idx += blockDim.x) {
    const int r = idx / kVec, c = (idx % kVec) * 8;
    const int64_t pos = row0 + r;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (pos < seq) v = *reinterpret_cast<const uint4*>(src + ((b * seq + pos) * heads + head) * D + c);
    *reinterpret_cast<uint4*>(tile + r * ld<D>() + c) = v;
  }
}

// 16 bytes from global to shared memory without passing through registers (cp.async), so the
// next tile loads while the current one computes; zeros when !valid (nothing is read then).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// load_rows, asynchronously: complete after cp_async_commit + cp_async_wait + __syncthreads.
template <int D, int R = kTile>
__device__ void load_rows_async(bf16_t* tile, const bf16_t* src, int64_t b, int64_t row0, int64_t seq, int64_t heads,
                                int64_t head) {
  constexpr int kVec = D / 8;
  for (int idx = threadIdx.x; idx < R * kVec; idx += blockDim.x) {
    const int r = idx / kVec, c = (idx % kVec) * 8;
    const int64_t pos = row0 + r;
    const bool valid = pos < seq;
    cp_async16(tile + r * ld<D>() + c, valid ? src + ((b * seq + pos) * heads + head) * D + c : src, valid);
  }
}

// One step of the K/V stream of the forward and dQ kernels: when there is a next key tile
// (`more`), starts its loads into the other buffer (freed by the last iteration's closing
// barrier); then waits until the current tile is in shared memory for every thread.
template <int D>
__device__ __forceinline__ void advance_kv(bool more, bf16_t* k_next, bf16_t* v_next, const bf16_t* k, const bf16_t* v,
                                           int64_t b, int64_t next_k0, int64_t seq, int64_t kv_heads, int64_t kvh) {
  if (more) {
    load_rows_async<D>(k_next, k, b, next_k0, seq, kv_heads, kvh);
    load_rows_async<D>(v_next, v, b, next_k0, seq, kv_heads, kvh);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// Shared memory: the tiles that stream through a kernel are double-buffered.
template <int D>
constexpr size_t tile_bytes() { return kTile * ld<D>() * sizeof(bf16_t); }
template <int D, int M>
constexpr size_t forward_smem() { return (M + 4) * tile_bytes<D>(); }  // Q (M tiles), 2 x (K, V)
template <int D>
constexpr size_t dkdv_smem() { return 6 * tile_bytes<D>() + 4 * kTile * sizeof(float); }  // K, V, 2 x (Q, dO, lse, delta)
template <int D, int M>
constexpr size_t dq_smem() { return (2 * M + 4) * tile_bytes<D>(); }  // Q, dO (M tiles each), 2 x (K, V)

// Query rows per warp in the forward and dQ kernels: M groups of 16. M = 2 (head_dim <= 64)
// makes every K and V fragment a warp reads from shared memory feed two mma rows, at twice the
// registers (forward 230, dQ 255 at head_dim 64: half the blocks per SM); head_dim 128 keeps
// M = 1, where registers run out. (A 16-row layout at head_dim <= 64 measured slower on an H200
// and was removed, 2026-12.)
//
// dK/dV at head_dim <= 64 takes 32 keys per warp: each Q and dO fragment read from shared memory
// feeds two mma rows, a third less shared-memory traffic per mma than 16 keys per warp (ncu put
// the 16-key kernel's L1/shared pipe at 66% on an H200), at 2 blocks per SM instead of 3; it took
// the 1B backward from 22.0 to 21.0 ms (H200, 2026-11-26). head_dim 128 keeps 16 keys per warp.
constexpr int kWideKeys = 2 * kTile;  // keys per block of the 32-keys-per-warp kernel
template <int D>
constexpr size_t dkdv_wide_smem() {  // K, V (128 rows each), 2 x (Q, dO, lse, delta)
  return 2 * kWideKeys * ld<D>() * sizeof(bf16_t) + 4 * tile_bytes<D>() + 4 * kTile * sizeof(float);
}

// Blocks per multiprocessor each kernel is compiled for (__launch_bounds__' second argument caps
// registers at 65,536 / (128 x blocks)). Resident warps hide the latency of each warp's chain of
// mma -> softmax -> mma. The 16-key dK/dV and 16-row kernels now run at head_dim 128 only, where
// these values pin what the compiler chose unasked (with no minimum it kept them near 165); their
// head_dim <= 64 values (a third dK/dV block, a fourth dQ block, no spills) are what was measured
// before the 32-wide kernels became the rule there.
template <int D>
constexpr int dkdv_min_blocks() { return D <= 64 ? 3 : 2; }
template <int D, int M>
constexpr int rows_min_blocks() { return M == 1 ? (D <= 64 ? 4 : 3) : 2; }

// grid (heads, batch, query blocks of 64 M rows): the block is the slowest index and runs
// backwards, so the blocks with the most key tiles (the last queries) start first and short
// ones fill the tail.
template <int D, int M>
__global__ void __launch_bounds__(kThreads, (rows_min_blocks<D, M>())) forward_kernel(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                                           bf16_t* o, float* lse, AttentionDims dims) {
  constexpr int kRows = kTile * M, kTileElems = kTile * ld<D>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* qs = reinterpret_cast<bf16_t*>(smem_raw);
  // Buffer i's key and value tiles (i = 0, 1), after the M query tiles.
  auto kbuf = [&](int64_t i) { return qs + (M + 2 * (i & 1)) * kTileElems; };
  auto vbuf = [&](int64_t i) { return qs + (M + 1 + 2 * (i & 1)) * kTileElems; };
  const int64_t qt = gridDim.z - 1 - blockIdx.z, h = blockIdx.x, b = blockIdx.y, seq = dims.seq;
  const int64_t kvh = h / (dims.heads / dims.kv_heads), q0 = qt * kRows;
  const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  const int64_t row0 = q0 + warp * 16 * M;  // this warp's rows: row0 + 16 m + g (+ 8)
  const int64_t kt_end = ((q0 + kRows < seq ? q0 + kRows : seq) - 1) / kTile;  // the key tile of the block's last valid row
  const float scale_log2 = dims.scale * kLog2e;
  load_rows_async<D, kTile>(kbuf(0), k, b, 0, seq, dims.kv_heads, kvh);  // key tile 0 flies while Q loads
  load_rows_async<D, kTile>(vbuf(0), v, b, 0, seq, dims.kv_heads, kvh);
  cp_async_commit();
  load_rows<D, kRows>(qs, q, b, q0, seq, dims.heads, h);
  __syncthreads();
  uint32_t qf[M][D / 16][4];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) load_a<ld<D>()>(qf[m][kc], qs, warp * 16 * M + m * 16, kc * 16);
  float acc[M][D / 8][4];
  float m_a[M], m_b[M], l_a[M], l_b[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) acc[m][nd][0] = acc[m][nd][1] = acc[m][nd][2] = acc[m][nd][3] = 0.0f;
    m_a[m] = m_b[m] = -INFINITY;
    l_a[m] = l_b[m] = 0.0f;
  }
  for (int64_t kt = 0; kt <= kt_end; ++kt) {
    const int64_t k0 = kt * kTile;
    const bf16_t* ks = kbuf(kt);
    const bf16_t* vs = vbuf(kt);
    advance_kv<D>(kt < kt_end, kbuf(kt + 1), vbuf(kt + 1), k, v, b, k0 + kTile, seq, dims.kv_heads, kvh);
    // A tile whose keys all follow this warp's rows changes nothing: the warp skips it (it
    // still takes part in the loads and barriers). Tile 0 is never skipped, so every row's
    // running maximum is finite from the first tile on.
    if (k0 <= row0 + 16 * M - 1) {
      float s[M][kTile / 8][4];
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
        for (int m = 0; m < M; ++m) s[m][j][0] = s[m][j][1] = s[m][j][2] = s[m][j][3] = 0.0f;
#pragma unroll
      for (int j = 0; j < kTile / 8; j += 2)
#pragma unroll
        for (int kc = 0; kc < D / 16; ++kc) {
          uint32_t kb[4];
          load_b_x4<ld<D>()>(kb, ks, j * 8, kc * 16);
#pragma unroll
          for (int m = 0; m < M; ++m) {
            mma16816(s[m][j], qf[m][kc], kb[0], kb[1]);
            mma16816(s[m][j + 1], qf[m][kc], kb[2], kb[3]);
          }
        }
      // Masks only where a key may follow one of the warp's rows, or lie past seq. Scores stay
      // unscaled (scale > 0 keeps their order); the scale goes into each exponent's FFMA.
      if (k0 + kTile - 1 > row0 || k0 + kTile > seq) {
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
          for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int64_t key = k0 + j * 8 + 2 * t + (e & 1), row = row0 + m * 16 + g + (e < 2 ? 0 : 8);
              if (!(key <= row && key < seq)) s[m][j][e] = -INFINITY;
            }
      }
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
        for (int j = 0; j < kTile / 8; ++j) {
          mx_a = fmaxf(mx_a, fmaxf(s[m][j][0], s[m][j][1]));
          mx_b = fmaxf(mx_b, fmaxf(s[m][j][2], s[m][j][3]));
        }
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
        // Running maxima m_a, m_b are in log2 units (scores x scale x log2 e).
        const float mn_a = fmaxf(m_a[m], mx_a * scale_log2), mn_b = fmaxf(m_b[m], mx_b * scale_log2);
        const float alpha_a = fast_exp2(m_a[m] - mn_a), alpha_b = fast_exp2(m_b[m] - mn_b);
        m_a[m] = mn_a;
        m_b[m] = mn_b;
        float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
        for (int j = 0; j < kTile / 8; ++j) {
          s[m][j][0] = fast_exp2(fmaf(s[m][j][0], scale_log2, -mn_a));
          s[m][j][1] = fast_exp2(fmaf(s[m][j][1], scale_log2, -mn_a));
          s[m][j][2] = fast_exp2(fmaf(s[m][j][2], scale_log2, -mn_b));
          s[m][j][3] = fast_exp2(fmaf(s[m][j][3], scale_log2, -mn_b));
          sum_a += s[m][j][0] + s[m][j][1];
          sum_b += s[m][j][2] + s[m][j][3];
        }
        l_a[m] = l_a[m] * alpha_a + sum_a;  // per-thread partial sums; the quad adds them at the end
        l_b[m] = l_b[m] * alpha_b + sum_b;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
          acc[m][nd][0] *= alpha_a;
          acc[m][nd][1] *= alpha_a;
          acc[m][nd][2] *= alpha_b;
          acc[m][nd][3] *= alpha_b;
        }
      }
#pragma unroll
      for (int kc = 0; kc < kTile / 16; ++kc) {
        uint32_t pa[M][4];
#pragma unroll
        for (int m = 0; m < M; ++m) {
          pa[m][0] = pack(s[m][2 * kc][0], s[m][2 * kc][1]);
          pa[m][1] = pack(s[m][2 * kc][2], s[m][2 * kc][3]);
          pa[m][2] = pack(s[m][2 * kc + 1][0], s[m][2 * kc + 1][1]);
          pa[m][3] = pack(s[m][2 * kc + 1][2], s[m][2 * kc + 1][3]);
        }
#pragma unroll
        for (int nd = 0; nd < D / 8; nd += 2) {
          uint32_t vb[4];
          load_b_trans_x4<ld<D>()>(vb, vs, kc * 16, nd * 8);
#pragma unroll
          for (int m = 0; m < M; ++m) {
            mma16816(acc[m][nd], pa[m], vb[0], vb[1]);
            mma16816(acc[m][nd + 1], pa[m], vb[2], vb[3]);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float la = l_a[m], lb = l_b[m];
    la += __shfl_xor_sync(0xffffffffu, la, 1);
    la += __shfl_xor_sync(0xffffffffu, la, 2);
    lb += __shfl_xor_sync(0xffffffffu, lb, 1);
    lb += __shfl_xor_sync(0xffffffffu, lb, 2);
    const float inv_a = 1.0f / la, inv_b = 1.0f / lb;
    const int64_t row_a = row0 + m * 16 + g, row_b = row_a + 8;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      const int col = nd * 8 + 2 * t;
      if (row_a < seq)
        *reinterpret_cast<uint32_t*>(o + ((b * seq + row_a) * dims.heads + h) * D + col) =
            pack(acc[m][nd][0] * inv_a, acc[m][nd][1] * inv_a);
      if (row_b < seq)
        *reinterpret_cast<uint32_t*>(o + ((b * seq + row_b) * dims.heads + h) * D + col) =
            pack(acc[m][nd][2] * inv_b, acc[m][nd][3] * inv_b);
    }
    if (t == 0) {
      if (row_a < seq) lse[(b * dims.heads + h) * seq + row_a] = (m_a[m] + log2f(la)) * kLn2;
      if (row_b < seq) lse[(b * dims.heads + h) * seq + row_b] = (m_b[m] + log2f(lb)) * kLn2;
    }
  }
}

// grid (kv heads, batch, key tiles): dK, dV of one key tile over the group's query heads and
// the query tiles at or after it, in a fixed order. Key tile 0 has the most query tiles: the
// tile is the slowest grid index, so the long blocks start first.
template <int D>
__global__ void __launch_bounds__(kThreads, dkdv_min_blocks<D>()) dkdv_kernel(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                                        const float* lse, const bf16_t* dout, const float* delta,
                                                        bf16_t* dk, bf16_t* dv, AttentionDims dims) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* ks = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* vs = ks + kTile * ld<D>();
  constexpr int kTileElems = kTile * ld<D>();
  float* stats = reinterpret_cast<float*>(vs + 5 * kTileElems);
  // Buffer i's (i = 0, 1) query and dO tiles, after K and V, and its row statistics.
  auto qbuf = [&](int64_t i) { return vs + (1 + 2 * (i & 1)) * kTileElems; };
  auto dobuf = [&](int64_t i) { return vs + (2 + 2 * (i & 1)) * kTileElems; };
  auto lse_buf = [&](int64_t i) { return stats + 2 * kTile * (i & 1); };
  auto delta_buf = [&](int64_t i) { return stats + kTile + 2 * kTile * (i & 1); };
  const int64_t kt = blockIdx.z, kvh = blockIdx.x, b = blockIdx.y, seq = dims.seq;
  const int64_t group = dims.heads / dims.kv_heads, k0 = kt * kTile, q_tiles = (seq + kTile - 1) / kTile;
  const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  const int64_t key_a = k0 + warp * 16 + g, key_b = key_a + 8;
  const float scale_log2 = dims.scale * kLog2e;
  // The (head, query tile) pairs this key tile meets, in order; pair i + 1's Q, dO and row
  // statistics load (into the other buffer) while pair i computes.
  const int64_t per_head = q_tiles - kt, pairs = group * per_head;
  // Starts pair i's loads: Q and dO by cp.async; the row statistics (threads < kTile) into
  // registers, stored by stash() later so their latency hides behind the current pair's work.
  float next_lse = 0.0f, next_delta = 0.0f;
  auto issue = [&](int64_t i) {
    const int64_t h = kvh * group + i / per_head, q0 = (kt + i % per_head) * kTile;
    load_rows_async<D>(qbuf(i), q, b, q0, seq, dims.heads, h);
    load_rows_async<D>(dobuf(i), dout, b, q0, seq, dims.heads, h);
    cp_async_commit();
    if (threadIdx.x < kTile) {
      const int64_t pos = q0 + threadIdx.x;
      next_lse = pos < seq ? lse[(b * dims.heads + h) * seq + pos] * kLog2e : 0.0f;
      next_delta = pos < seq ? delta[(b * dims.heads + h) * seq + pos] : 0.0f;
    }
  };
  // Pair i's statistics into its buffer: that buffer's last readers (pair i - 2) are past a
  // barrier, and its next readers (pair i) come after one.
  auto stash = [&](int64_t i) {
    if (threadIdx.x < kTile) {
      lse_buf(i)[threadIdx.x] = next_lse;
      delta_buf(i)[threadIdx.x] = next_delta;
    }
  };
  issue(0);
  stash(0);
  load_rows<D>(ks, k, b, k0, seq, dims.kv_heads, kvh);
  load_rows<D>(vs, v, b, k0, seq, dims.kv_heads, kvh);
  float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
  for (int nd = 0; nd < D / 8; ++nd)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[nd][e] = dv_acc[nd][e] = 0.0f;
  for (int64_t i = 0; i < pairs; ++i) {
    {
      const int64_t qt = kt + i % per_head, q0 = qt * kTile;
      const bf16_t* qs = qbuf(i);
      const bf16_t* dos = dobuf(i);
      const float* lse_s = lse_buf(i);
      const float* delta_s = delta_buf(i);
      if (i + 1 < pairs) {
        issue(i + 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x 64 queries.
      float st[kTile / 8][4], dpt[kTile / 8][4];
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0.0f;
#pragma unroll
      for (int kc = 0; kc < D / 16; ++kc) {
        uint32_t ka[4], va[4];
        load_a<ld<D>()>(ka, ks, warp * 16, kc * 16);
        load_a<ld<D>()>(va, vs, warp * 16, kc * 16);
#pragma unroll
        for (int j = 0; j < kTile / 8; ++j) {
          uint32_t b0, b1;
          load_b_lds<ld<D>()>(b0, b1, qs, j * 8, kc * 16);
          mma16816(st[j], ka, b0, b1);
          load_b_lds<ld<D>()>(b0, b1, dos, j * 8, kc * 16);
          mma16816(dpt[j], va, b0, b1);
        }
      }
      // P^T and dS^T = P^T * (dP^T - delta), in place. Masks: the diagonal tile (causality)
      // and a partial last query tile (queries past seq must add nothing to dK, dV).
      if (qt == kt || q0 + kTile > seq) {
#pragma unroll
        for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int ql = j * 8 + 2 * t + (e & 1);
            const int64_t query = q0 + ql, key = e < 2 ? key_a : key_b;
            const float p = (key <= query && query < seq) ? fast_exp2(st[j][e] * scale_log2 - lse_s[ql]) : 0.0f;
            st[j][e] = p;
            dpt[j][e] = p * (dpt[j][e] - delta_s[ql]);
          }
      } else {
#pragma unroll
        for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int ql = j * 8 + 2 * t + (e & 1);
            const float p = fast_exp2(st[j][e] * scale_log2 - lse_s[ql]);
            st[j][e] = p;
            dpt[j][e] = p * (dpt[j][e] - delta_s[ql]);
          }
      }
      // dV += P^T dO and dK += dS^T Q.
#pragma unroll
      for (int kc = 0; kc < kTile / 16; ++kc) {
        const uint32_t pa[4] = {pack(st[2 * kc][0], st[2 * kc][1]), pack(st[2 * kc][2], st[2 * kc][3]),
                                pack(st[2 * kc + 1][0], st[2 * kc + 1][1]), pack(st[2 * kc + 1][2], st[2 * kc + 1][3])};
        const uint32_t da[4] = {pack(dpt[2 * kc][0], dpt[2 * kc][1]), pack(dpt[2 * kc][2], dpt[2 * kc][3]),
                                pack(dpt[2 * kc + 1][0], dpt[2 * kc + 1][1]),
                                pack(dpt[2 * kc + 1][2], dpt[2 * kc + 1][3])};
#pragma unroll
        for (int nd = 0; nd < D / 8; nd += 2) {
          uint32_t ob[4], qb[4];
          load_b_trans_x4<ld<D>()>(ob, dos, kc * 16, nd * 8);
          mma16816(dv_acc[nd], pa, ob[0], ob[1]);
          mma16816(dv_acc[nd + 1], pa, ob[2], ob[3]);
          load_b_trans_x4<ld<D>()>(qb, qs, kc * 16, nd * 8);
          mma16816(dk_acc[nd], da, qb[0], qb[1]);
          mma16816(dk_acc[nd + 1], da, qb[2], qb[3]);
        }
      }
      if (i + 1 < pairs) stash(i + 1);
      __syncthreads();  // every warp is done with this buffer before it is refilled
    }
  }
#pragma unroll
  for (int nd = 0; nd < D / 8; ++nd) {
    const int col = nd * 8 + 2 * t;
    if (key_a < seq) {
      const int64_t base = ((b * seq + key_a) * dims.kv_heads + kvh) * D + col;
      *reinterpret_cast<uint32_t*>(dk + base) = pack(dk_acc[nd][0] * dims.scale, dk_acc[nd][1] * dims.scale);
      *reinterpret_cast<uint32_t*>(dv + base) = pack(dv_acc[nd][0], dv_acc[nd][1]);
    }
    if (key_b < seq) {
      const int64_t base = ((b * seq + key_b) * dims.kv_heads + kvh) * D + col;
      *reinterpret_cast<uint32_t*>(dk + base) = pack(dk_acc[nd][2] * dims.scale, dk_acc[nd][3] * dims.scale);
      *reinterpret_cast<uint32_t*>(dv + base) = pack(dv_acc[nd][2], dv_acc[nd][3]);
    }
  }
}

// dK/dV as dkdv_kernel, for a 128-key block: each warp owns 32 keys (two m16 groups km) and
// takes each 64-query tile in two halves of 32 queries, so S^T and dP^T of a half (32 x 32 per
// warp) fit in registers beside the 32 x head_dim dK and dV accumulators.
template <int D>
__global__ void __launch_bounds__(kThreads, 2) dkdv_wide_kernel(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                                               const float* lse, const bf16_t* dout,
                                                               const float* delta, bf16_t* dk, bf16_t* dv,
                                                               AttentionDims dims) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kTileElems = kTile * ld<D>();
  bf16_t* ks = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* vs = ks + kWideKeys * ld<D>();
  bf16_t* tiles = vs + kWideKeys * ld<D>();
  float* stats = reinterpret_cast<float*>(tiles + 4 * kTileElems);
  auto qbuf = [&](int64_t i) { return tiles + 2 * (i & 1) * kTileElems; };
  auto dobuf = [&](int64_t i) { return tiles + (1 + 2 * (i & 1)) * kTileElems; };
  auto lse_buf = [&](int64_t i) { return stats + 2 * kTile * (i & 1); };
  auto delta_buf = [&](int64_t i) { return stats + kTile + 2 * kTile * (i & 1); };
  const int64_t kvh = blockIdx.x, b = blockIdx.y, seq = dims.seq, k0 = blockIdx.z * int64_t{kWideKeys};
  const int64_t group = dims.heads / dims.kv_heads, q_tiles = (seq + kTile - 1) / kTile, qt0 = k0 / kTile;
  const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  const int64_t kw = k0 + warp * 32;  // this warp's keys: kw + 16 km + g (+ 8)
  const float scale_log2 = dims.scale * kLog2e;
  const int64_t per_head = q_tiles - qt0, pairs = group * per_head;
  float next_lse = 0.0f, next_delta = 0.0f;
  auto issue = [&](int64_t i) {
    const int64_t h = kvh * group + i / per_head, q0 = (qt0 + i % per_head) * kTile;
    load_rows_async<D>(qbuf(i), q, b, q0, seq, dims.heads, h);
    load_rows_async<D>(dobuf(i), dout, b, q0, seq, dims.heads, h);
    cp_async_commit();
    if (threadIdx.x < kTile) {
      const int64_t pos = q0 + threadIdx.x;
      next_lse = pos < seq ? lse[(b * dims.heads + h) * seq + pos] * kLog2e : 0.0f;
      next_delta = pos < seq ? delta[(b * dims.heads + h) * seq + pos] : 0.0f;
    }
  };
  auto stash = [&](int64_t i) {
    if (threadIdx.x < kTile) {
      lse_buf(i)[threadIdx.x] = next_lse;
      delta_buf(i)[threadIdx.x] = next_delta;
    }
  };
  issue(0);
  stash(0);
  load_rows<D, kWideKeys>(ks, k, b, k0, seq, dims.kv_heads, kvh);
  load_rows<D, kWideKeys>(vs, v, b, k0, seq, dims.kv_heads, kvh);
  float dk_acc[2][D / 8][4], dv_acc[2][D / 8][4];
#pragma unroll
  for (int km = 0; km < 2; ++km)
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk_acc[km][nd][e] = dv_acc[km][nd][e] = 0.0f;
  for (int64_t i = 0; i < pairs; ++i) {
    const int64_t q0 = (qt0 + i % per_head) * kTile;
    const bf16_t* qs = qbuf(i);
    const bf16_t* dos = dobuf(i);
    const float* lse_s = lse_buf(i);
    const float* delta_s = delta_buf(i);
    if (i + 1 < pairs) {
      issue(i + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
#pragma unroll 1
    for (int half = 0; half < 2; ++half) {
      const int64_t hq0 = q0 + 32 * half;  // the half's first query
      // Every key of this warp follows every query of the half. (Also skipping halves past seq,
      // which come out zero, costs a register spill at head_dim 64.)
      if (kw > hq0 + 31) continue;
      // S^T = K Q^T and dP^T = V dO^T: this warp's 32 keys x the half's 32 queries.
      float st[2][4][4], dpt[2][4][4];
#pragma unroll
      for (int km = 0; km < 2; ++km)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) st[km][j][e] = dpt[km][j][e] = 0.0f;
      // One product at a time, so only one operand's two A fragments are live (registers).
#pragma unroll
      for (int product = 0; product < 2; ++product) {
        const bf16_t* a_tile = product == 0 ? ks : vs;
        const bf16_t* b_tile = product == 0 ? qs : dos;
        float(&acc)[2][4][4] = product == 0 ? st : dpt;
#pragma unroll
        for (int kc = 0; kc < D / 16; ++kc) {
          uint32_t a[2][4];
          load_a<ld<D>()>(a[0], a_tile, warp * 32, kc * 16);
          load_a<ld<D>()>(a[1], a_tile, warp * 32 + 16, kc * 16);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            uint32_t b0, b1;
            load_b_lds<ld<D>()>(b0, b1, b_tile, 32 * half + j * 8, kc * 16);
            mma16816(acc[0][j], a[0], b0, b1);
            mma16816(acc[1][j], a[1], b0, b1);
          }
        }
      }
      // P^T and dS^T = P^T * (dP^T - delta), in place; masks where a key may follow a query of
      // the half (causality) or the half runs past seq.
      if (kw + 31 > hq0 || hq0 + 32 > seq) {
#pragma unroll
        for (int km = 0; km < 2; ++km)
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int ql = 32 * half + j * 8 + 2 * t + (e & 1);
              const int64_t query = q0 + ql, key = kw + km * 16 + g + (e < 2 ? 0 : 8);
              const float p = (key <= query && query < seq) ? fast_exp2(st[km][j][e] * scale_log2 - lse_s[ql]) : 0.0f;
              st[km][j][e] = p;
              dpt[km][j][e] = p * (dpt[km][j][e] - delta_s[ql]);
            }
      } else {
#pragma unroll
        for (int km = 0; km < 2; ++km)
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int ql = 32 * half + j * 8 + 2 * t + (e & 1);
              const float p = fast_exp2(st[km][j][e] * scale_log2 - lse_s[ql]);
              st[km][j][e] = p;
              dpt[km][j][e] = p * (dpt[km][j][e] - delta_s[ql]);
            }
      }
      // dV += P^T dO and dK += dS^T Q over the half's queries (two k16 chunks).
#pragma unroll
      for (int kc = 0; kc < 2; ++kc) {
        uint32_t pa[2][4], da[2][4];
#pragma unroll
        for (int km = 0; km < 2; ++km) {
          pa[km][0] = pack(st[km][2 * kc][0], st[km][2 * kc][1]);
          pa[km][1] = pack(st[km][2 * kc][2], st[km][2 * kc][3]);
          pa[km][2] = pack(st[km][2 * kc + 1][0], st[km][2 * kc + 1][1]);
          pa[km][3] = pack(st[km][2 * kc + 1][2], st[km][2 * kc + 1][3]);
          da[km][0] = pack(dpt[km][2 * kc][0], dpt[km][2 * kc][1]);
          da[km][1] = pack(dpt[km][2 * kc][2], dpt[km][2 * kc][3]);
          da[km][2] = pack(dpt[km][2 * kc + 1][0], dpt[km][2 * kc + 1][1]);
          da[km][3] = pack(dpt[km][2 * kc + 1][2], dpt[km][2 * kc + 1][3]);
        }
#pragma unroll
        for (int nd = 0; nd < D / 8; nd += 2) {
          uint32_t ob[4], qb[4];
          load_b_trans_x4<ld<D>()>(ob, dos, 32 * half + kc * 16, nd * 8);
#pragma unroll
          for (int km = 0; km < 2; ++km) {
            mma16816(dv_acc[km][nd], pa[km], ob[0], ob[1]);
            mma16816(dv_acc[km][nd + 1], pa[km], ob[2], ob[3]);
          }
          load_b_trans_x4<ld<D>()>(qb, qs, 32 * half + kc * 16, nd * 8);
#pragma unroll
          for (int km = 0; km < 2; ++km) {
            mma16816(dk_acc[km][nd], da[km], qb[0], qb[1]);
            mma16816(dk_acc[km][nd + 1], da[km], qb[2], qb[3]);
          }
        }
      }
    }
    if (i + 1 < pairs) stash(i + 1);
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }
#pragma unroll
  for (int km = 0; km < 2; ++km) {
    const int64_t key_a = kw + km * 16 + g, key_b = key_a + 8;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      const int col = nd * 8 + 2 * t;
      if (key_a < seq) {
        const int64_t base = ((b * seq + key_a) * dims.kv_heads + kvh) * D + col;
        *reinterpret_cast<uint32_t*>(dk + base) = pack(dk_acc[km][nd][0] * dims.scale, dk_acc[km][nd][1] * dims.scale);
        *reinterpret_cast<uint32_t*>(dv + base) = pack(dv_acc[km][nd][0], dv_acc[km][nd][1]);
      }
      if (key_b < seq) {
        const int64_t base = ((b * seq + key_b) * dims.kv_heads + kvh) * D + col;
        *reinterpret_cast<uint32_t*>(dk + base) = pack(dk_acc[km][nd][2] * dims.scale, dk_acc[km][nd][3] * dims.scale);
        *reinterpret_cast<uint32_t*>(dv + base) = pack(dv_acc[km][nd][2], dv_acc[km][nd][3]);
      }
    }
  }
}

// grid (heads, batch, query blocks of 64 M rows), the block slowest and backwards (longest
// blocks first): dQ of one query block over the key tiles at or before its rows.
template <int D, int M>
__global__ void __launch_bounds__(kThreads, (rows_min_blocks<D, M>())) dq_kernel(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                                      const float* lse, const bf16_t* dout, const float* delta,
                                                      bf16_t* dq, AttentionDims dims) {
  constexpr int kRows = kTile * M, kTileElems = kTile * ld<D>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* qs = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* dos = qs + M * kTileElems;
  // Buffer i's key and value tiles (i = 0, 1), after the query and dO rows.
  auto kbuf = [&](int64_t i) { return qs + (2 * M + 2 * (i & 1)) * kTileElems; };
  auto vbuf = [&](int64_t i) { return qs + (2 * M + 1 + 2 * (i & 1)) * kTileElems; };
  const int64_t qt = gridDim.z - 1 - blockIdx.z, h = blockIdx.x, b = blockIdx.y, seq = dims.seq;
  const int64_t kvh = h / (dims.heads / dims.kv_heads), q0 = qt * kRows;
  const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  const int64_t row0 = q0 + warp * 16 * M;  // this warp's rows: row0 + 16 m + g (+ 8)
  const int64_t kt_end = ((q0 + kRows < seq ? q0 + kRows : seq) - 1) / kTile;
  const float scale_log2 = dims.scale * kLog2e;
  const int64_t stat = (b * dims.heads + h) * seq;
  float lse_a[M], lse_b[M], delta_a[M], delta_b[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const int64_t row_a = row0 + m * 16 + g, row_b = row_a + 8;
    lse_a[m] = row_a < seq ? lse[stat + row_a] * kLog2e : 0.0f;
    lse_b[m] = row_b < seq ? lse[stat + row_b] * kLog2e : 0.0f;
    delta_a[m] = row_a < seq ? delta[stat + row_a] : 0.0f;
    delta_b[m] = row_b < seq ? delta[stat + row_b] : 0.0f;
  }
  load_rows_async<D, kTile>(kbuf(0), k, b, 0, seq, dims.kv_heads, kvh);  // key tile 0 flies while Q, dO load
  load_rows_async<D, kTile>(vbuf(0), v, b, 0, seq, dims.kv_heads, kvh);
  cp_async_commit();
  load_rows<D, kRows>(qs, q, b, q0, seq, dims.heads, h);
  load_rows<D, kRows>(dos, dout, b, q0, seq, dims.heads, h);
  float dq_acc[M][D / 8][4];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) dq_acc[m][nd][0] = dq_acc[m][nd][1] = dq_acc[m][nd][2] = dq_acc[m][nd][3] = 0.0f;
  for (int64_t kt = 0; kt <= kt_end; ++kt) {
    const int64_t k0 = kt * kTile;
    const bf16_t* ks = kbuf(kt);
    const bf16_t* vs = vbuf(kt);
    advance_kv<D>(kt < kt_end, kbuf(kt + 1), vbuf(kt + 1), k, v, b, k0 + kTile, seq, dims.kv_heads, kvh);
    if (k0 <= row0 + 16 * M - 1) {  // else every key follows this warp's rows: nothing to add
      float s[M][kTile / 8][4], dp[M][kTile / 8][4];
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[m][j][e] = dp[m][j][e] = 0.0f;
#pragma unroll
      for (int kc = 0; kc < D / 16; ++kc) {
        uint32_t qa[M][4], ga[M][4];
#pragma unroll
        for (int m = 0; m < M; ++m) {
          load_a<ld<D>()>(qa[m], qs, warp * 16 * M + m * 16, kc * 16);
          load_a<ld<D>()>(ga[m], dos, warp * 16 * M + m * 16, kc * 16);
        }
#pragma unroll
        for (int j = 0; j < kTile / 8; ++j) {
          uint32_t b0, b1;
          load_b<ld<D>()>(b0, b1, ks, j * 8, kc * 16);
#pragma unroll
          for (int m = 0; m < M; ++m) mma16816(s[m][j], qa[m], b0, b1);
          load_b<ld<D>()>(b0, b1, vs, j * 8, kc * 16);
#pragma unroll
          for (int m = 0; m < M; ++m) mma16816(dp[m][j], ga[m], b0, b1);
        }
      }
      // Masks only where a key may follow one of the warp's rows, or lie past seq (rows past
      // seq compute finite values from zero-filled inputs and are never stored).
      if (k0 + kTile - 1 > row0 || k0 + kTile > seq) {
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
          for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int64_t key = k0 + j * 8 + 2 * t + (e & 1), row = row0 + m * 16 + g + (e < 2 ? 0 : 8);
              const float row_lse = e < 2 ? lse_a[m] : lse_b[m], row_delta = e < 2 ? delta_a[m] : delta_b[m];
              const float p = (key <= row && row < seq) ? fast_exp2(s[m][j][e] * scale_log2 - row_lse) : 0.0f;
              dp[m][j][e] = p * (dp[m][j][e] - row_delta);
            }
      } else {
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
          for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float p = fast_exp2(s[m][j][e] * scale_log2 - (e < 2 ? lse_a[m] : lse_b[m]));
              dp[m][j][e] = p * (dp[m][j][e] - (e < 2 ? delta_a[m] : delta_b[m]));
            }
      }
#pragma unroll
      for (int kc = 0; kc < kTile / 16; ++kc) {
        uint32_t da[M][4];
#pragma unroll
        for (int m = 0; m < M; ++m) {
          da[m][0] = pack(dp[m][2 * kc][0], dp[m][2 * kc][1]);
          da[m][1] = pack(dp[m][2 * kc][2], dp[m][2 * kc][3]);
          da[m][2] = pack(dp[m][2 * kc + 1][0], dp[m][2 * kc + 1][1]);
          da[m][3] = pack(dp[m][2 * kc + 1][2], dp[m][2 * kc + 1][3]);
        }
#pragma unroll
        for (int nd = 0; nd < D / 8; nd += 2) {
          uint32_t kb[4];
          load_b_trans_x4<ld<D>()>(kb, ks, kc * 16, nd * 8);
#pragma unroll
          for (int m = 0; m < M; ++m) {
            mma16816(dq_acc[m][nd], da[m], kb[0], kb[1]);
            mma16816(dq_acc[m][nd + 1], da[m], kb[2], kb[3]);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const int64_t row_a = row0 + m * 16 + g, row_b = row_a + 8;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      const int col = nd * 8 + 2 * t;
      if (row_a < seq)
        *reinterpret_cast<uint32_t*>(dq + ((b * seq + row_a) * dims.heads + h) * D + col) =
            pack(dq_acc[m][nd][0] * dims.scale, dq_acc[m][nd][1] * dims.scale);
      if (row_b < seq)
        *reinterpret_cast<uint32_t*>(dq + ((b * seq + row_b) * dims.heads + h) * D + col) =
            pack(dq_acc[m][nd][2] * dims.scale, dq_acc[m][nd][3] * dims.scale);
    }
  }
}

// Grids put batch in y and the tile in z (65,535 each at most).
void check_grid(const AttentionShape& s) {
  TITAN_CHECK(s.batch <= 65535 && (s.seq + kTile - 1) / kTile <= 65535, "attention: batch ", s.batch, " and seq ",
              s.seq, " exceed the kernels' grid (65,535 sequences, 4,194,240 positions)");
}

template <int D, int M>
void launch_forward(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const AttentionShape& s,
                    cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(s.heads), static_cast<unsigned>(s.batch),
                  static_cast<unsigned>((s.seq + kTile * M - 1) / (kTile * M)));
  allow_smem_once<forward_kernel<D, M>>(forward_smem<D, M>());
  forward_kernel<D, M><<<grid, kThreads, forward_smem<D, M>(), stream>>>(as_bf16(q), as_bf16(k), as_bf16(v),
                                                                         as_bf16(o), lse, dims_of(s));
  TITAN_CUDA_CHECK_LAUNCH();
}

template <int D, int M>
void launch_dq(const bf16* q, const bf16* k, const bf16* v, const float* lse, const bf16* dout, bf16* dq,
               const float* delta, const AttentionShape& s, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((s.seq + kTile * M - 1) / (kTile * M));
  allow_smem_once<dq_kernel<D, M>>(dq_smem<D, M>());
  dq_kernel<D, M><<<dim3(static_cast<unsigned>(s.heads), static_cast<unsigned>(s.batch), blocks), kThreads,
                    dq_smem<D, M>(), stream>>>(as_bf16(q), as_bf16(k), as_bf16(v), lse, as_bf16(dout), delta,
                                               as_bf16(dq), dims_of(s));
  TITAN_CUDA_CHECK_LAUNCH();
}

template <int D>
void forward_for(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const AttentionShape& s,
                 cudaStream_t stream) {
  check_grid(s);
  if constexpr (D <= 64) return launch_forward<D, 2>(q, k, v, o, lse, s, stream);
  else launch_forward<D, 1>(q, k, v, o, lse, s, stream);
}

template <int D>
void backward_for(const bf16* q, const bf16* k, const bf16* v, const float* lse, const bf16* dout, bf16* dq, bf16* dk,
                  bf16* dv, const float* delta, const AttentionShape& s, cudaStream_t stream) {
  check_grid(s);
  if constexpr (D <= 64) {
    const unsigned blocks = static_cast<unsigned>((s.seq + kWideKeys - 1) / kWideKeys);
    allow_smem_once<dkdv_wide_kernel<D>>(dkdv_wide_smem<D>());
    dkdv_wide_kernel<D><<<dim3(static_cast<unsigned>(s.kv_heads), static_cast<unsigned>(s.batch), blocks), kThreads,
                          dkdv_wide_smem<D>(), stream>>>(as_bf16(q), as_bf16(k), as_bf16(v), lse, as_bf16(dout),
                                                         delta, as_bf16(dk), as_bf16(dv), dims_of(s));
    TITAN_CUDA_CHECK_LAUNCH();
    launch_dq<D, 2>(q, k, v, lse, dout, dq, delta, s, stream);
  } else {
    const unsigned tiles = static_cast<unsigned>((s.seq + kTile - 1) / kTile);
    allow_smem_once<dkdv_kernel<D>>(dkdv_smem<D>());
    dkdv_kernel<D><<<dim3(static_cast<unsigned>(s.kv_heads), static_cast<unsigned>(s.batch), tiles), kThreads,
                     dkdv_smem<D>(), stream>>>(as_bf16(q), as_bf16(k), as_bf16(v), lse, as_bf16(dout), delta,
                                               as_bf16(dk), as_bf16(dv), dims_of(s));
    TITAN_CUDA_CHECK_LAUNCH();
    launch_dq<D, 1>(q, k, v, lse, dout, dq, delta, s, stream);
  }
}
}  // namespace

void attention_forward_tc(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const AttentionShape& s,
                          cudaStream_t stream) {
  switch (s.head_dim) {
    case 16: return forward_for<16>(q, k, v, o, lse, s, stream);
    case 32: return forward_for<32>(q, k, v, o, lse, s, stream);
    case 64: return forward_for<64>(q, k, v, o, lse, s, stream);
    default: return forward_for<128>(q, k, v, o, lse, s, stream);
  }
}

void attention_backward_tc(const bf16* q, const bf16* k, const bf16* v, const float* lse, const bf16* dout, bf16* dq,
                           bf16* dk, bf16* dv, const float* delta, const AttentionShape& s, cudaStream_t stream) {
  switch (s.head_dim) {
    case 16: return backward_for<16>(q, k, v, lse, dout, dq, dk, dv, delta, s, stream);
    case 32: return backward_for<32>(q, k, v, lse, dout, dq, dk, dv, delta, s, stream);
    case 64: return backward_for<64>(q, k, v, lse, dout, dq, dk, dv, delta, s, stream);
    default: return backward_for<128>(q, k, v, lse, dout, dq, dk, dv, delta, s, stream);
  }
}

}  // namespace titan::cuda

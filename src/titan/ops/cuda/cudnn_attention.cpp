#include "titan/ops/cuda/cudnn_attention.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "titan/core/error.h"
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cudnn_graph.h"

namespace titan::cuda {

using cudnn::Graph;

std::unique_ptr<CudnnAttention> open_cudnn_attention(AttentionLibrary impl, cudaStream_t stream, DeviceAllocator& alloc,
                                                     std::string* why_not) {
  if (impl == AttentionLibrary::titan) return nullptr;
  if (impl == AttentionLibrary::cudnn) return std::make_unique<CudnnAttention>(stream, alloc);
  try {
    return std::make_unique<CudnnAttention>(stream, alloc, true);
  } catch (const std::exception& e) {  // a missing library, an old one, or no device to open it on
    if (why_not) *why_not = e.what();
    return nullptr;
  }
}

// One shape's graph, the uids its execution binds, and the workspace its plan asked for.
struct CudnnAttention::Plan {
  Graph graph;
  AttentionUids id;
  float scale = 0;  // the softmax scale, bound by address: it must outlive any captured launch
  DeviceBuffer scratch, workspace;  // scratch: the backward's dq_accum, then softmax_sum
  size_t softmax_sum_offset = 0;
};

namespace {
cudnnHandle_t as_handle(void* h) { return static_cast<cudnnHandle_t>(h); }

// Logical [batch, heads, seq, head_dim] views of titan's [batch, seq, heads, head_dim] rows.
Graph::TensorSpec bshd(const AttentionShape& s, int64_t heads) {
  return {{s.batch, heads, s.seq, s.head_dim},
          {s.seq * heads * s.head_dim, s.head_dim, heads * s.head_dim, 1},
          CUDNN_DATA_BFLOAT16};
}
// The same rows seen as [batch, heads, head_dim, seq]: K transposed for Q K^T.
Graph::TensorSpec bshd_transposed(const AttentionShape& s, int64_t heads) {
  return {{s.batch, heads, s.head_dim, s.seq},
          {s.seq * heads * s.head_dim, s.head_dim, 1, heads * s.head_dim},
          CUDNN_DATA_BFLOAT16};
}
// lse / cuDNN's softmax stats: [batch, heads, seq, 1], packed.
Graph::TensorSpec row_stats(const AttentionShape& s, bool is_virtual) {
  return {{s.batch, s.heads, s.seq, 1}, {s.heads * s.seq, s.seq, 1, 1}, CUDNN_DATA_FLOAT, is_virtual};
}
Graph::TensorSpec scores(const AttentionShape& s, cudnnDataType_t type) {
  const std::vector<int64_t> dims{s.batch, s.heads, s.seq, s.seq};
  return {dims, Graph::packed(dims), type, true};
}
Graph::TensorSpec host_scalar() { return {{1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, false, true}; }

// P^T / dS^T: [batch, heads, keys, queries] views of packed [batch, heads, queries, keys] scores.
Graph::TensorSpec scores_transposed(const AttentionShape& s, cudnnDataType_t type) {
  return {{s.batch, s.heads, s.seq, s.seq}, {s.heads * s.seq * s.seq, s.seq * s.seq, 1, s.seq}, type, true};
}
// Per-query-head dK / dV before the sum over each key head's group (GQA).
Graph::TensorSpec per_query_head(const AttentionShape& s) {
  const std::vector<int64_t> dims{s.batch, s.heads, s.seq, s.head_dim};
  return {dims, Graph::packed(dims), CUDNN_DATA_BFLOAT16, true};
}
float softmax_scale(const AttentionShape& s) { return 1.0f / std::sqrt(static_cast<float>(s.head_dim)); }
// Masked scores; exp of it is exactly 0. (cuDNN's frontend uses this value before 9.10, -inf after.)
constexpr float kMasked = std::numeric_limits<float>::lowest();
constexpr float kOne = 1.0f;

size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// Keeps scores where query >= key (top-left causal); the rest become `masked`.
int64_t causal_mask(Graph& g, const AttentionShape& s, int64_t scores_in, int64_t masked) {
  const int64_t row = g.tensor(scores(s, CUDNN_DATA_INT32)), col = g.tensor(scores(s, CUDNN_DATA_INT32));
  g.pointwise({.mode = CUDNN_POINTWISE_GEN_INDEX, .x = scores_in, .y = row, .axis = 2});
  g.pointwise({.mode = CUDNN_POINTWISE_GEN_INDEX, .x = scores_in, .y = col, .axis = 3});
  const int64_t keep = g.tensor(scores(s, CUDNN_DATA_BOOLEAN));
  g.pointwise({.mode = CUDNN_POINTWISE_CMP_GE, .x = row, .y = keep, .b = col, .precision = CUDNN_DATA_BOOLEAN});
  const int64_t out = g.tensor(scores(s, CUDNN_DATA_FLOAT));
  g.pointwise({.mode = CUDNN_POINTWISE_BINARY_SELECT, .x = scores_in, .y = out, .b = masked, .t = keep});
  return out;
}

// y = op(x, b) into a new virtual tensor shaped like `like`.
int64_t binary(Graph& g, cudnnPointwiseMode_t mode, int64_t x, int64_t b, const Graph::TensorSpec& like) {
  const int64_t y = g.tensor(like);
  g.pointwise({.mode = mode, .x = x, .y = y, .b = b});
  return y;
}
int64_t unary(Graph& g, cudnnPointwiseMode_t mode, int64_t x, const Graph::TensorSpec& like) {
  const int64_t y = g.tensor(like);
  g.pointwise({.mode = mode, .x = x, .y = y});
  return y;
}
// out = a @ b for K/V's heads: under GQA formed per query head, then summed over each group.
void key_head_gradient(Graph& g, const AttentionShape& s, int64_t a, int64_t b, int64_t out) {
  if (s.heads == s.kv_heads) return g.matmul(a, b, out);
  const int64_t per_head = g.tensor(per_query_head(s));
  g.matmul(a, b, per_head);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, per_head, out);
}
}  // namespace

CudnnAttention::CudnnAttention(cudaStream_t stream, DeviceAllocator& alloc, bool fall_back)
    : stream_(stream), alloc_(alloc), fall_back_(fall_back) {
  const size_t version = version_ = cudnn::api().get_version();
  // Before 9.6 the caller had to clear the dQ accumulator before every backward (titan clears
  // it once); cuDNN's frontend refuses bf16 attention on 9.10.0 and 9.10.1 (backend bugs).
  if (version < 90600 || version == 91000 || version == 91001)
    throw UserError(concat("cuDNN attention: the loaded cuDNN is ", version,
                           "; cuDNN attention needs 9.6 or newer, and not 9.10.0 or 9.10.1"));
  cudnnHandle_t h = nullptr;
  cudnn::check(cudnn::api().create(&h), "cudnnCreate");
  if (const cudnnStatus_t st = cudnn::api().set_stream(h, stream_); st != CUDNN_STATUS_SUCCESS) {
    cudnn::api().destroy(h);
    cudnn::check(st, "cudnnSetStream");
  }
  handle_ = h;
}

CudnnAttention::~CudnnAttention() {
  forward_.clear();
  backward_.clear();
  if (handle_) cudnn::api().destroy(as_handle(handle_));
}

int64_t CudnnAttention::plans_in_use() const {
  int64_t n = 0;
  for (const Plans* plans : {&forward_, &backward_})
    for (const auto& [key, plan] : *plans) n += plan ? 1 : 0;
  return n;
}

bool CudnnAttention::handles(const AttentionShape& s) {
  return cudnn_attention_takes(s.seq, s.heads, s.kv_heads, s.head_dim);
}

// The graph cuDNN's frontend builds for causal training SDPA (its fused flash-attention engines
// match this pattern): S = Q K^T * scale, causal mask, softmax with its log-sum-exp saved as
// stats, O = P V. GQA is the matmul's broadcast of K and V over each group of query heads.
AttentionUids describe_attention_forward(Graph& g, const AttentionShape& s) {
  AttentionUids u;
  u.q = g.tensor(bshd(s, s.heads));
  u.k = g.tensor(bshd_transposed(s, s.kv_heads));
  u.v = g.tensor(bshd(s, s.kv_heads));
  u.o = g.tensor(bshd(s, s.heads));
  u.stats = g.tensor(row_stats(s, false));
  u.scale = g.tensor(host_scalar());
  u.neg_inf = g.tensor(host_scalar());
  const auto f32 = scores(s, CUDNN_DATA_FLOAT);
  const int64_t raw = g.tensor(f32);
  g.matmul(u.q, u.k, raw);
  const int64_t scaled = binary(g, CUDNN_POINTWISE_MUL, raw, u.scale, f32);
  const int64_t masked = causal_mask(g, s, scaled, u.neg_inf);
  const int64_t max = g.tensor(row_stats(s, true));
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, masked, max);
  const int64_t shifted = binary(g, CUDNN_POINTWISE_SUB, masked, max, f32);
  const int64_t e = unary(g, CUDNN_POINTWISE_EXP, shifted, f32);
  const int64_t sum = g.tensor(row_stats(s, true));
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, sum);
  const int64_t log_sum = unary(g, CUDNN_POINTWISE_LOG, sum, row_stats(s, true));
  g.pointwise({.mode = CUDNN_POINTWISE_ADD, .x = max, .y = u.stats, .b = log_sum});
  const int64_t probs = binary(g, CUDNN_POINTWISE_DIV, e, sum, scores(s, CUDNN_DATA_BFLOAT16));  // bmm2 wants bf16
  g.matmul(probs, u.v, u.o);
  return u;
}

// The frontend's backward graph: rowsum(dO * O) into an fp32 tensor, the probabilities rebuilt
// from the saved stats, dV = P^T dO, dS = P * (dO V^T - rowsum) * scale, dK = dS^T Q,
// dQ = dS K through an fp32 accumulator. Under GQA dK/dV are formed per query head and summed
// over each group.
AttentionUids describe_attention_backward(Graph& g, const AttentionShape& s) {
  AttentionUids u;
  u.q = g.tensor(bshd(s, s.heads));
  u.k = g.tensor(bshd_transposed(s, s.kv_heads));
  u.v = g.tensor(bshd_transposed(s, s.kv_heads));  // V is only used as V^T
  u.o = g.tensor(bshd(s, s.heads));
  u.dout = g.tensor(bshd(s, s.heads));
  u.stats = g.tensor(row_stats(s, false));
  u.dq = g.tensor(bshd(s, s.heads));
  u.dk = g.tensor(bshd(s, s.kv_heads));
  u.dv = g.tensor(bshd(s, s.kv_heads));
  u.scale = g.tensor(host_scalar());
  u.neg_inf = g.tensor(host_scalar());
  u.one = g.tensor(host_scalar());

  // rowsum(dO * O), kept in fp32 memory titan provides.
  const int64_t prod = g.tensor({{s.batch, s.heads, s.seq, s.head_dim},
                                 {s.heads * s.seq * s.head_dim, s.seq * s.head_dim, s.heads * s.head_dim, 1},
                                 CUDNN_DATA_FLOAT,
                                 true});
  g.pointwise({.mode = CUDNN_POINTWISE_MUL, .x = u.dout, .y = prod, .b = u.o});
  const int64_t rowsum = g.tensor(row_stats(s, true));
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, prod, rowsum);
  u.softmax_sum = g.tensor(row_stats(s, false));
  g.pointwise({.mode = CUDNN_POINTWISE_MUL, .x = rowsum, .y = u.softmax_sum, .b = u.one});

  const auto f32 = scores(s, CUDNN_DATA_FLOAT);
  const int64_t raw = g.tensor(f32);
  g.matmul(u.q, u.k, raw);
  const int64_t scaled = binary(g, CUDNN_POINTWISE_MUL, raw, u.scale, f32);
  const int64_t shifted = binary(g, CUDNN_POINTWISE_SUB, scaled, u.stats, f32);
  const int64_t masked = causal_mask(g, s, shifted, u.neg_inf);
  const int64_t probs = unary(g, CUDNN_POINTWISE_EXP, masked, f32);
  const int64_t probs_t = g.tensor(scores_transposed(s, CUDNN_DATA_BFLOAT16));
  g.reshape(probs, probs_t);
  key_head_gradient(g, s, probs_t, u.dout, u.dv);
  const int64_t dp = g.tensor(f32);
  g.matmul(u.dout, u.v, dp);
  const int64_t centred = binary(g, CUDNN_POINTWISE_SUB, dp, u.softmax_sum, f32);
  const int64_t weighted = binary(g, CUDNN_POINTWISE_MUL, centred, probs, f32);
  const int64_t ds = binary(g, CUDNN_POINTWISE_MUL, weighted, u.scale, f32);
  const int64_t ds_t = g.tensor(scores_transposed(s, CUDNN_DATA_BFLOAT16));
  g.reshape(ds, ds_t);
  key_head_gradient(g, s, ds_t, u.q, u.dk);
  // K back in its own layout; the frontend types this view fp32 and the engines expect that.
  Graph::TensorSpec k_view = bshd(s, s.kv_heads);
  k_view.type = CUDNN_DATA_FLOAT;
  k_view.is_virtual = true;
  const int64_t k = g.tensor(k_view);
  g.reshape(u.k, k);
  const std::vector<int64_t> dq_dims{s.batch, s.heads, s.seq, s.head_dim};
  u.dq_accum = g.tensor({dq_dims, Graph::packed(dq_dims), CUDNN_DATA_FLOAT});
  g.matmul(ds, k, u.dq_accum);
  g.pointwise({.mode = CUDNN_POINTWISE_IDENTITY, .x = u.dq_accum, .y = u.dq});
  return u;
}

CudnnAttention::Plan* CudnnAttention::plan(Plans& plans, const AttentionShape& s, bool backward) {
  const Key key{s.batch, s.seq, s.heads, s.kv_heads, s.head_dim};
  if (auto it = plans.find(key); it != plans.end()) return it->second.get();
  auto p = std::make_unique<Plan>();
  p->scale = softmax_scale(s);
  try {
    p->id = backward ? describe_attention_backward(p->graph, s) : describe_attention_forward(p->graph, s);
    p->graph.build(as_handle(handle_), backward ? "attention backward" : "attention forward");
  } catch (const std::exception& e) {  // cuDNN refused an op or the graph, or has no engine for it
    if (!fall_back_) throw;
    std::fprintf(stderr, "warning: cuDNN attention %s, batch %lld seq %lld heads %lld/%lld head_dim %lld: %s; "
                 "titan's kernels run it\n", backward ? "backward" : "forward", static_cast<long long>(s.batch),
                 static_cast<long long>(s.seq), static_cast<long long>(s.heads), static_cast<long long>(s.kv_heads),
                 static_cast<long long>(s.head_dim), e.what());
    p.reset();
  }
  if (p) allocate(*p, s, backward);  // out of memory is the run's error, not a reason to fall back
  return (plans[key] = std::move(p)).get();
}

void CudnnAttention::allocate(Plan& p, const AttentionShape& s, bool backward) {
  if (backward) {
    const size_t accum_bytes = cudnn_dq_accumulator_bytes(s.batch, s.seq, s.heads, s.head_dim);
    p.softmax_sum_offset = align16(accum_bytes);
    p.scratch = DeviceBuffer(alloc_, cudnn_attention_scratch_bytes(s.batch, s.seq, s.heads, s.head_dim));
    // cuDNN 9.6+ keeps the accumulator clean itself (the frontend stopped clearing it); a zero
    // start costs one memset per shape and keeps a first run right either way.
    TITAN_CUDA_CHECK(cudaMemsetAsync(p.scratch.as<void>(), 0, accum_bytes, stream_));
  }
  if (p.graph.workspace_bytes() > 0) p.workspace = DeviceBuffer(alloc_, static_cast<size_t>(p.graph.workspace_bytes()));
}

bool CudnnAttention::forward(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse,
                             const AttentionShape& s) {
  const Plan* p = handles(s) ? plan(forward_, s, false) : nullptr;
  if (!p) return false;
  const AttentionUids& u = p->id;
  p->graph.execute(as_handle(handle_),
                   {{u.q, q}, {u.k, k}, {u.v, v}, {u.o, o}, {u.stats, lse}, {u.scale, &p->scale}, {u.neg_inf, &kMasked}},
                   p->workspace.as<void>());
  return true;
}

bool CudnnAttention::backward(const bf16* q, const bf16* k, const bf16* v, const bf16* o, const float* lse,
                              const bf16* dout, bf16* dq, bf16* dk, bf16* dv, const AttentionShape& s) {
  const Plan* p = handles(s) ? plan(backward_, s, true) : nullptr;
  if (!p) return false;
  const AttentionUids& u = p->id;
  p->graph.execute(as_handle(handle_),
                   {{u.q, q},
                    {u.k, k},
                    {u.v, v},
                    {u.o, o},
                    {u.stats, lse},
                    {u.dout, dout},
                    {u.dq, dq},
                    {u.dk, dk},
                    {u.dv, dv},
                    {u.dq_accum, p->scratch.as<char>()},
                    {u.softmax_sum, p->scratch.as<char>() + p->softmax_sum_offset},
                    {u.scale, &p->scale},
                    {u.neg_inf, &kMasked},
                    {u.one, &kOne}},
                   p->workspace.as<void>());
  return true;
}

}  // namespace titan::cuda

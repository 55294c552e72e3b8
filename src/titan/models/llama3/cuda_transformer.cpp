#include "titan/models/llama3/cuda_transformer.h"

#include <algorithm>
#include <exception>

#include "titan/core/dtype.h"
#include "titan/models/llama3/layout.h"
#include "titan/ops/cuda/cuda_check.h"

namespace titan::llama3 {

using cuda::bf16;
using cuda::Phase;
using cuda::DeviceBuffer;

namespace {
constexpr int64_t kAlign = 64;                            // elements: keeps every weight 128-byte aligned

template <typename T>
T* ptr(const DeviceBuffer& b) { return b.as<T>(); }
}  // namespace

namespace {
int64_t aligned(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// One NCCL group per unit, closed even when a call in it throws.
class CollectiveGroup {
 public:
  explicit CollectiveGroup(cuda::DeviceCollectives& c) : c_(c) { c_.group_start(); }
  ~CollectiveGroup() noexcept(false) {
    if (std::uncaught_exceptions() > 0) {
      try {
        c_.group_end();
      } catch (...) {
      }
      return;
    }
    c_.group_end();
  }
  CollectiveGroup(const CollectiveGroup&) = delete;
  CollectiveGroup& operator=(const CollectiveGroup&) = delete;

 private:
  cuda::DeviceCollectives& c_;
};
}  // namespace

CudaTransformer::CudaTransformer(const ModelArgs& args, const std::deque<Parameter>& params,
                                 cuda::DeviceCollectives* fsdp, ReshardPolicy policy, AttentionLibrary attention)
    : args_(args), fsdp_(fsdp), policy_(policy) {
  TITAN_CHECK(cuda::attention_supported(args.head_dim()), "head_dim ", args.head_dim());
  TITAN_CUDA_CHECK(cudaGetDevice(&device_));
  TITAN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  double* pinned = nullptr;
  TITAN_CUDA_CHECK(cudaMallocHost(&pinned, 2 * sizeof(double)));
  host_sums_.reset(pinned);
  cudaEvent_t ready = nullptr;
  TITAN_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  sums_ready_.reset(ready);
  gemm_ = std::make_unique<cuda::Gemm>(stream_);
  cudnn_attention_ = cuda::open_cudnn_attention(attention, stream_, alloc_, &cudnn_unused_);
  const ModelLayout layout(args);  // the host parameters are in its order
  TITAN_CHECK(params.size() == layout.size(), "unexpected parameter count ", params.size(), ", the layout has ",
              layout.size());
  const int world = fsdp ? fsdp->size() : 1, rank = fsdp ? fsdp->rank() : 0;
  unit_params_.resize(static_cast<size_t>(args.n_layers) + 1);
  for (size_t i = 0; i < params.size(); ++i) {
    const Parameter& p = params[i];
    TITAN_CHECK(p.name == layout[i].name, "parameter ", i, " is ", p.name, ", the layout has ", layout[i].name);
    TITAN_CHECK(p.world == world && p.rank == rank, p.name, " is a shard of rank ", p.rank, " of ", p.world,
                "; the CUDA model runs rank ", rank, " of ", world);
    const int64_t rows = p.global_shape[0], row_elems = p.row_elems();
    offset_.push_back(total_);
    numel_.push_back(p.numel());
    out_.push_back(rows);
    in_.push_back(p.global_shape.size() > 1 ? p.global_shape[1] : 1);
    local_.push_back(p.master.numel());
    shard_.push_back(fsdp ? (rows + world - 1) / world * row_elems : p.numel());  // NCCL gathers equal shards
    total_ += aligned(shard_.back());
    const size_t unit = static_cast<size_t>(layout[i].unit);
    unit_of_.push_back(unit);
    unit_params_[unit].push_back(i);
  }
  unit_offset_.resize(params.size());
  reduced_offset_.resize(params.size());
  for (const auto& unit : unit_params_) {  // gathered layout: each parameter's world x shard, aligned
    int64_t elems = 0, reduced = 0;
    for (size_t i : unit) {
      unit_offset_[i] = elems;
      reduced_offset_[i] = reduced;
      elems += aligned(world * shard_[i]);
      reduced += aligned(shard_[i]);
    }
    unit_elems_.push_back(elems);
    if (fsdp && static_cast<size_t>(reduced) * sizeof(float) > reduced_.bytes())
      reduced_ = DeviceBuffer(alloc_, static_cast<size_t>(reduced) * sizeof(float));
  }
  // The gradients the fused step adds into (embedding rows, norm weights), merged into ranges of
  // the flat buffer; the GEMM-written ones need no clearing (fused_step overwrites them).
  for (size_t i = 0; i < params.size(); ++i) {
    if (!layout[i].summed_gradient) continue;
    const int64_t begin = offset_[i], end = i + 1 < params.size() ? offset_[i + 1] : total_;
    if (!accumulated_grads_.empty() && accumulated_grads_.back().second == begin) accumulated_grads_.back().second = end;
    else accumulated_grads_.push_back({begin, end});
  }
  gathered_.resize(unit_params_.size());
  unit_grads_.resize(unit_params_.size());
  awaiting_.assign(unit_params_.size(), false);
  if (fsdp) {
    TITAN_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_, cudaStreamNonBlocking));
    TITAN_CUDA_CHECK(cudaEventCreateWithFlags(&compute_mark_, cudaEventDisableTiming));
    TITAN_CUDA_CHECK(cudaEventCreateWithFlags(&comm_mark_, cudaEventDisableTiming));
    for (size_t u = 0; u < unit_params_.size(); ++u) {
      gathered_event_.push_back(nullptr);
      reduced_event_.push_back(nullptr);
      TITAN_CUDA_CHECK(cudaEventCreateWithFlags(&gathered_event_.back(), cudaEventDisableTiming));
      TITAN_CUDA_CHECK(cudaEventCreateWithFlags(&reduced_event_.back(), cudaEventDisableTiming));
    }
  }
  embedding_ = layout.root_index(Role::tok_embeddings);
  for (int64_t l = 0; l < args.n_layers; ++l) {
    auto b = [&](Role r) { return layout.block_index(l, r); };
    layers_.push_back({b(Role::wq), b(Role::wk), b(Role::wv), b(Role::wo), b(Role::w1), b(Role::w2), b(Role::w3),
                       b(Role::attention_norm), b(Role::ffn_norm)});
  }
  norm_ = layout.root_index(Role::norm);
  output_ = layout.root_index(Role::output);
  const size_t f32 = static_cast<size_t>(total_) * sizeof(float);
  master_ = DeviceBuffer(alloc_, f32);
  grad_ = DeviceBuffer(alloc_, f32);
  exp_avg_ = DeviceBuffer(alloc_, f32);
  exp_avg_sq_ = DeviceBuffer(alloc_, f32);
  weights_ = DeviceBuffer(alloc_, static_cast<size_t>(total_) * sizeof(bf16));
  for (auto* b : {&master_, &grad_, &exp_avg_, &exp_avg_sq_, &weights_})
    TITAN_CUDA_CHECK(cudaMemsetAsync(b->as<void>(), 0, b->bytes(), stream_));  // alignment gaps stay zero
  reduce_scratch_ = DeviceBuffer(alloc_, cuda::reduce_scratch_doubles() * sizeof(double));
  sums_ = DeviceBuffer(alloc_, 2 * sizeof(double));
  step_factors_ = DeviceBuffer(alloc_, sizeof(cuda::AdamWStep));
  upload(params);
}

CudaTransformer::~CudaTransformer() {
  drop_graph();
  if (comm_) {
    try {  // with the collectives' deadline: a peer that died must not hang this rank here
      compute_after_comm();
      fsdp_->synchronize(stream_);
    } catch (...) {
    }
    cudaStreamDestroy(comm_);
  }
  for (cudaEvent_t e : gathered_event_) cudaEventDestroy(e);
  for (cudaEvent_t e : reduced_event_) cudaEventDestroy(e);
  if (compute_mark_) cudaEventDestroy(compute_mark_);
  if (comm_mark_) cudaEventDestroy(comm_mark_);
  if (stream_) {
    cudaStreamSynchronize(stream_);
    cudnn_attention_.reset();  // its handle is bound to stream_
    cudaStreamDestroy(stream_);
  }
}

std::string CudaTransformer::attention_description() const {
  if (!cudnn_attention_)
    return cudnn_unused_.empty() ? "titan's attention kernels"
                                 : concat("titan's attention kernels (TITAN_ATTENTION_IMPL=auto, cuDNN unusable here: ",
                                          cudnn_unused_, ")");
  return concat("cuDNN ", cudnn_attention_->version(),
                " fused attention (head_dim 64/128, seq a multiple of 128; titan's kernels otherwise)");
}

bf16* CudaTransformer::w(size_t i) const {
  if (!fsdp_) return ptr<bf16>(weights_) + offset_[i];
  const DeviceBuffer& g = gathered_[unit_of_[i]];
  TITAN_CHECK(g.bytes() > 0 && !awaiting_[unit_of_[i]], "FSDP: weight ", i, " used while its unit ", unit_of_[i],
              " is not gathered, or its gather was not waited for");
  return ptr<bf16>(g) + unit_offset_[i];
}

float* CudaTransformer::dw(size_t i) const {
  if (!fsdp_) return ptr<float>(grad_) + offset_[i];
  const DeviceBuffer& g = unit_grads_[unit_of_[i]];
  TITAN_CHECK(g.bytes() > 0, "FSDP: gradient ", i, " used outside its unit's backward");
  return ptr<float>(g) + unit_offset_[i];
}

void CudaTransformer::track_unsharded(size_t bytes, bool allocated) {
  unsharded_ = allocated ? unsharded_ + bytes : unsharded_ - bytes;
  peak_unsharded_ = std::max(peak_unsharded_, unsharded_);
}

// The comm stream waits for everything queued on the compute stream so far: the weights it
// sends are final and any buffer it is about to fill is no longer read.
void CudaTransformer::comm_after_compute() {
  TITAN_CUDA_CHECK(cudaEventRecord(compute_mark_, stream_));
  TITAN_CUDA_CHECK(cudaStreamWaitEvent(comm_, compute_mark_, 0));
}

void CudaTransformer::compute_after_comm() {
  if (!comm_) return;
  at(Phase::communication);
  TITAN_CUDA_CHECK(cudaEventRecord(comm_mark_, comm_));
  TITAN_CUDA_CHECK(cudaStreamWaitEvent(stream_, comm_mark_, 0));
}

void CudaTransformer::gather(size_t u) {
  if (!fsdp_ || gathered_[u].bytes() > 0) return;
  gathered_[u] = DeviceBuffer(alloc_, static_cast<size_t>(unit_elems_[u]) * sizeof(bf16));
  track_unsharded(gathered_[u].bytes(), true);
  comm_after_compute();
  {
    CollectiveGroup group(*fsdp_);
    for (size_t i : unit_params_[u]) {
      fsdp_->all_gather_bf16(ptr<bf16>(weights_) + offset_[i], ptr<bf16>(gathered_[u]) + unit_offset_[i], shard_[i], comm_);
      comm_bytes_ += 2.0 * static_cast<double>((fsdp_->size() - 1) * shard_[i]);
    }
  }
  TITAN_CUDA_CHECK(cudaEventRecord(gathered_event_[u], comm_));
  awaiting_[u] = true;
}

void CudaTransformer::use(size_t u) {
  if (!fsdp_) return;
  gather(u);  // unless prefetched
  if (!awaiting_[u]) return;
  at(Phase::communication);  // until the next op's mark: time the compute stream waits for this gather
  TITAN_CUDA_CHECK(cudaStreamWaitEvent(stream_, gathered_event_[u], 0));
  awaiting_[u] = false;
}

void CudaTransformer::reshard(size_t u) {
  if (!fsdp_ || gathered_[u].bytes() == 0) return;
  use(u);  // a gather still in flight must land before its buffer can be handed out again
  track_unsharded(gathered_[u].bytes(), false);
  gathered_[u] = DeviceBuffer();  // back to the cache; later users on either stream are ordered after this point
}

void CudaTransformer::begin_unit_grads(size_t u) {
  if (!fsdp_) return;
  TITAN_CHECK(unit_grads_[u].bytes() == 0, "FSDP: unit ", u, " entered backward twice");
  unit_grads_[u] = DeviceBuffer(alloc_, static_cast<size_t>(unit_elems_[u]) * sizeof(float));
  track_unsharded(unit_grads_[u].bytes(), true);
  TITAN_CUDA_CHECK(cudaMemsetAsync(unit_grads_[u].as<void>(), 0, unit_grads_[u].bytes(), stream_));  // padding too
}

void CudaTransformer::reduce_unit_grads(size_t u) {
  if (!fsdp_) return;
  TITAN_CHECK(unit_grads_[u].bytes() > 0, "FSDP: unit ", u, " left a backward it did not enter");
  retire_reduced();  // the previous unit's reduce-scatter has had this unit's backward to run
  comm_after_compute();
  {
    CollectiveGroup group(*fsdp_);
    for (size_t i : unit_params_[u]) {
      fsdp_->reduce_scatter_f32(ptr<float>(unit_grads_[u]) + unit_offset_[i], ptr<float>(reduced_) + reduced_offset_[i],
                                shard_[i], comm_);
      comm_bytes_ += 4.0 * static_cast<double>((fsdp_->size() - 1) * shard_[i]);
    }
  }
  for (size_t i : unit_params_[u])
    cuda::accumulate_f32(ptr<float>(grad_) + offset_[i], ptr<float>(reduced_) + reduced_offset_[i], shard_[i], comm_);
  TITAN_CUDA_CHECK(cudaEventRecord(reduced_event_[u], comm_));
  reducing_.push_back(u);
  reshard(u);
}

// The compute stream waits for the reduce-scatters issued so far (and their additions into
// grad_); then their whole-gradient buffers can be handed out again.
void CudaTransformer::retire_reduced() {
  if (!reducing_.empty()) at(Phase::communication);
  for (size_t v : reducing_) {
    TITAN_CUDA_CHECK(cudaStreamWaitEvent(stream_, reduced_event_[v], 0));
    track_unsharded(unit_grads_[v].bytes(), false);
    unit_grads_[v] = DeviceBuffer();
  }
  reducing_.clear();
}

void CudaTransformer::synchronize() {
  if (!fsdp_) return TITAN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  compute_after_comm();  // nothing on comm_ is left unwaited
  fsdp_->synchronize(stream_);  // collectives in flight: wait with a deadline
}

double CudaTransformer::take_comm_bytes() {
  const double b = comm_bytes_;
  comm_bytes_ = 0;
  return b;
}

void CudaTransformer::release_units() {
  compute_after_comm();  // whatever comm_ still does to these buffers comes first
  reducing_.clear();
  for (size_t u = 0; u < gathered_.size(); ++u) {
    awaiting_[u] = false;
    if (unit_grads_[u].bytes() > 0) {
      track_unsharded(unit_grads_[u].bytes(), false);
      unit_grads_[u] = DeviceBuffer();
    }
    reshard(u);
  }
}

void CudaTransformer::upload(const std::deque<Parameter>& params) {
  release_units();  // gathered copies of the old weights must not survive
  size_t i = 0;
  for (const auto& p : params) {
    const size_t bytes = static_cast<size_t>(local_[i]) * sizeof(float);  // shard padding stays zero
    TITAN_CUDA_CHECK(cudaMemcpyAsync(ptr<float>(master_) + offset_[i], p.master.f32(), bytes, cudaMemcpyHostToDevice, stream_));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(ptr<float>(exp_avg_) + offset_[i], p.exp_avg.f32(), bytes, cudaMemcpyHostToDevice, stream_));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(ptr<float>(exp_avg_sq_) + offset_[i], p.exp_avg_sq.f32(), bytes, cudaMemcpyHostToDevice, stream_));
    ++i;
  }
  cuda::cast_f32_to_bf16(ptr<float>(master_), ptr<bf16>(weights_), total_, stream_);
  synchronize();
}

void CudaTransformer::download(std::deque<Parameter>& params) {
  compute_after_comm();
  size_t i = 0;
  for (auto& p : params) {
    const size_t bytes = static_cast<size_t>(local_[i]) * sizeof(float);
    TITAN_CUDA_CHECK(cudaMemcpyAsync(p.master.f32(), ptr<float>(master_) + offset_[i], bytes, cudaMemcpyDeviceToHost, stream_));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(p.exp_avg.f32(), ptr<float>(exp_avg_) + offset_[i], bytes, cudaMemcpyDeviceToHost, stream_));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(p.exp_avg_sq.f32(), ptr<float>(exp_avg_sq_) + offset_[i], bytes, cudaMemcpyDeviceToHost, stream_));
    ++i;
  }
  synchronize();
}

void CudaTransformer::plan(BatchShape s) {
  if (s == planned_) return;
  TITAN_CHECK(s.batch > 0 && s.seq > 0, "empty batch shape");
  synchronize();
  drop_graph();  // it points into the buffers about to be replaced
  const int64_t n = s.rows(), d = args_.dim, hd = args_.head_dim(), qd = args_.n_heads * hd, kvd = args_.kv_dim(),
                f = args_.ffn_hidden(), vocab = args_.vocab_size;
  auto bf = [&](int64_t count) { return DeviceBuffer(alloc_, static_cast<size_t>(count) * sizeof(bf16)); };
  auto fp = [&](int64_t count) { return DeviceBuffer(alloc_, static_cast<size_t>(count) * sizeof(float)); };
  auto i32 = [&](int64_t count) { return DeviceBuffer(alloc_, static_cast<size_t>(count) * sizeof(int32_t)); };
  residual_.clear();
  saved_.clear();
  for (int64_t i = 0; i <= args_.n_layers; ++i) residual_.push_back(bf(n * d));
  for (int64_t i = 0; i < args_.n_layers; ++i)
    saved_.push_back({bf(n * d), bf(n * d), bf(n * d), bf(n * qd), bf(n * kvd), bf(n * kvd), bf(n * qd), bf(n * f),
                      bf(n * f), bf(n * f), fp(n), fp(n), fp(s.batch * args_.n_heads * s.seq)});
  final_out_ = bf(n * d);
  final_rstd_ = fp(n);
  d_hidden_ = bf(n * d);
  d_resid_ = bf(n * d);
  dxn_ = bf(n * d);
  proj_ = bf(n * d);
  d_att_ = bf(n * qd);
  dq_ = bf(n * qd);
  dk_ = bf(n * kvd);
  dv_ = bf(n * kvd);
  dg_ = bf(n * f);
  da1_ = bf(n * f);
  da3_ = bf(n * f);
  delta_ = fp(s.batch * args_.n_heads * s.seq);
  norm_partial_ = fp(cuda::rmsnorm_partial_floats(n, d));
  classifier_rows_ = classifier_rows(n, vocab, classifier_budget_);
  logits_ = bf(classifier_rows_ * vocab);
  row_loss_ = fp(n);
  tokens_ = i32(n);
  labels_ = i32(n);
  embed_ids_ = i32(n);
  embed_offsets_ = i32(n + 1);
  embed_positions_ = i32(n);
  const int64_t half = hd / 2;
  std::vector<float> cos(s.seq * half), sin(s.seq * half);
  cpu::rope_tables(cos.data(), sin.data(), s.seq, hd, args_.rope_theta, args_.rope_scaling);
  rope_cos_ = fp(s.seq * half);
  rope_sin_ = fp(s.seq * half);
  TITAN_CUDA_CHECK(cudaMemcpyAsync(rope_cos_.as<void>(), cos.data(), cos.size() * sizeof(float), cudaMemcpyHostToDevice, stream_));
  TITAN_CUDA_CHECK(cudaMemcpyAsync(rope_sin_.as<void>(), sin.data(), sin.size() * sizeof(float), cudaMemcpyHostToDevice, stream_));
  synchronize();  // the host tables go out of scope
  planned_ = s;
}

void CudaTransformer::zero_grad() {
  compute_after_comm();  // no reduce-scatter may still add into grad_
  TITAN_CUDA_CHECK(cudaMemsetAsync(grad_.as<void>(), 0, grad_.bytes(), stream_));
}

void CudaTransformer::upload_batch(const int32_t* tokens, const int32_t* labels, int64_t n, bool with_index) {
  for (int64_t i = 0; i < n; ++i)
    TITAN_CHECK(tokens[i] >= 0 && tokens[i] < args_.vocab_size, "token id ", tokens[i], " at position ", i,
                " is outside the vocabulary [0, ", args_.vocab_size, ")");
  // Synchronous copies: the host arrays may change as soon as we return.
  TITAN_CUDA_CHECK(cudaMemcpyAsync(tokens_.as<void>(), tokens, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  if (labels)
    TITAN_CUDA_CHECK(cudaMemcpyAsync(labels_.as<void>(), labels, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  if (with_index) {
    build_embedding_index(tokens, n, args_.vocab_size, true, embed_index_, embed_counts_);
    embed_unique_ = static_cast<int64_t>(embed_index_.ids.size());  // n: padded to a fixed launch size
    TITAN_CUDA_CHECK(cudaMemcpyAsync(embed_ids_.as<void>(), embed_index_.ids.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(embed_offsets_.as<void>(), embed_index_.offsets.data(), (n + 1) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(embed_positions_.as<void>(), embed_index_.positions.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  }
  synchronize();
}

void CudaTransformer::linear(const bf16* x, size_t weight, bf16* y, int64_t n) {
  gemm_->run(false, true, n, out_[weight], in_[weight], x, w(weight), y, cuda::OutType::bf16, 1.0f, 0.0f);
}

void CudaTransformer::linear_backward(const bf16* x, size_t weight, const bf16* dy, bf16* dx, int64_t n, float dx_beta) {
  const int64_t out = out_[weight], in = in_[weight];
  gemm_->run(false, false, n, in, out, dy, w(weight), dx, cuda::OutType::bf16, 1.0f, dx_beta);      // dx = dy W
  gemm_->run(true, false, out, in, n, dy, x, dw(weight), cuda::OutType::f32, 1.0f, grad_beta());  // dW (+)= dy^T x
}

void CudaTransformer::block_forward(size_t layer, BatchShape s) {
  const LayerWeights& lw = layers_[layer];
  LayerActivations& a = saved_[layer];
  const int64_t n = s.rows(), d = args_.dim, hd = args_.head_dim(), f = args_.ffn_hidden();
  const float eps = args_.norm_eps;
  const bf16* x = ptr<bf16>(residual_[layer]);
  bf16* out = ptr<bf16>(residual_[layer + 1]);
  at(Phase::norm_elementwise);
  cuda::rmsnorm_forward(x, w(lw.attention_norm), ptr<bf16>(a.xn), ptr<float>(a.rstd1), n, d, eps, stream_);
  at(Phase::gemm);
  linear(ptr<bf16>(a.xn), lw.wq, ptr<bf16>(a.q), n);
  linear(ptr<bf16>(a.xn), lw.wk, ptr<bf16>(a.k), n);
  linear(ptr<bf16>(a.xn), lw.wv, ptr<bf16>(a.v), n);
  at(Phase::norm_elementwise);
  cuda::rope(ptr<bf16>(a.q), ptr<float>(rope_cos_), ptr<float>(rope_sin_), s.batch, s.seq, args_.n_heads, hd, false, stream_);
  cuda::rope(ptr<bf16>(a.k), ptr<float>(rope_cos_), ptr<float>(rope_sin_), s.batch, s.seq, args_.n_kv_heads, hd, false, stream_);
  const cuda::AttentionShape as{s.batch, s.seq, args_.n_heads, args_.n_kv_heads, hd};
  at(Phase::attention_forward);
  if (!cudnn_attention_ ||
      !cudnn_attention_->forward(ptr<bf16>(a.q), ptr<bf16>(a.k), ptr<bf16>(a.v), ptr<bf16>(a.att), ptr<float>(a.lse), as))
    cuda::attention_forward(ptr<bf16>(a.q), ptr<bf16>(a.k), ptr<bf16>(a.v), ptr<bf16>(a.att), ptr<float>(a.lse), as,
                            stream_);
  at(Phase::gemm);
  linear(ptr<bf16>(a.att), lw.wo, ptr<bf16>(proj_), n);
  at(Phase::norm_elementwise);
  if (fused_) {
    cuda::add_rmsnorm_forward(x, ptr<bf16>(proj_), ptr<bf16>(a.h), w(lw.ffn_norm), ptr<bf16>(a.hn), ptr<float>(a.rstd2),
                              n, d, eps, stream_);
  } else {
    cuda::add(x, ptr<bf16>(proj_), ptr<bf16>(a.h), n * d, stream_);
    cuda::rmsnorm_forward(ptr<bf16>(a.h), w(lw.ffn_norm), ptr<bf16>(a.hn), ptr<float>(a.rstd2), n, d, eps, stream_);
  }
  at(Phase::gemm);
  linear(ptr<bf16>(a.hn), lw.w1, ptr<bf16>(a.a1), n);
  linear(ptr<bf16>(a.hn), lw.w3, ptr<bf16>(a.a3), n);
  at(Phase::norm_elementwise);
  cuda::swiglu_forward(ptr<bf16>(a.a1), ptr<bf16>(a.a3), ptr<bf16>(a.g), n * f, stream_);
  at(Phase::gemm);
  linear(ptr<bf16>(a.g), lw.w2, ptr<bf16>(proj_), n);
  at(Phase::norm_elementwise);
  cuda::add(ptr<bf16>(a.h), ptr<bf16>(proj_), out, n * d, stream_);
}

// On entry d_resid_ holds d(out); on return d(x).
void CudaTransformer::block_backward(size_t layer, BatchShape s) {
  const LayerWeights& lw = layers_[layer];
  const LayerActivations& a = saved_[layer];
  const int64_t n = s.rows(), d = args_.dim, hd = args_.head_dim(), f = args_.ffn_hidden();
  bf16* dr = ptr<bf16>(d_resid_);
  at(Phase::gemm);
  linear_backward(ptr<bf16>(a.g), lw.w2, dr, ptr<bf16>(dg_), n, 0.0f);
  at(Phase::norm_elementwise);
  cuda::swiglu_backward(ptr<bf16>(a.a1), ptr<bf16>(a.a3), ptr<bf16>(dg_), ptr<bf16>(da1_), ptr<bf16>(da3_), n * f, stream_);
  at(Phase::gemm);
  linear_backward(ptr<bf16>(a.hn), lw.w1, ptr<bf16>(da1_), ptr<bf16>(dxn_), n, 0.0f);
  linear_backward(ptr<bf16>(a.hn), lw.w3, ptr<bf16>(da3_), ptr<bf16>(dxn_), n, 1.0f);
  at(Phase::norm_elementwise);
  cuda::rmsnorm_backward(ptr<bf16>(a.h), w(lw.ffn_norm), ptr<float>(a.rstd2), ptr<bf16>(dxn_), dr, true,
                         dw(lw.ffn_norm), ptr<float>(norm_partial_), n, d, stream_);
  at(Phase::gemm);
  linear_backward(ptr<bf16>(a.att), lw.wo, dr, ptr<bf16>(d_att_), n, 0.0f);
  const cuda::AttentionShape as{s.batch, s.seq, args_.n_heads, args_.n_kv_heads, hd};
  at(Phase::attention_backward);
  if (!cudnn_attention_ ||
      !cudnn_attention_->backward(ptr<bf16>(a.q), ptr<bf16>(a.k), ptr<bf16>(a.v), ptr<bf16>(a.att), ptr<float>(a.lse),
                                  ptr<bf16>(d_att_), ptr<bf16>(dq_), ptr<bf16>(dk_), ptr<bf16>(dv_), as))
    cuda::attention_backward(ptr<bf16>(a.q), ptr<bf16>(a.k), ptr<bf16>(a.v), ptr<bf16>(a.att), ptr<float>(a.lse),
                             ptr<bf16>(d_att_), ptr<bf16>(dq_), ptr<bf16>(dk_), ptr<bf16>(dv_), ptr<float>(delta_), as,
                             stream_);
  at(Phase::norm_elementwise);
  cuda::rope(ptr<bf16>(dq_), ptr<float>(rope_cos_), ptr<float>(rope_sin_), s.batch, s.seq, args_.n_heads, hd, true, stream_);
  cuda::rope(ptr<bf16>(dk_), ptr<float>(rope_cos_), ptr<float>(rope_sin_), s.batch, s.seq, args_.n_kv_heads, hd, true, stream_);
  at(Phase::gemm);
  linear_backward(ptr<bf16>(a.xn), lw.wq, ptr<bf16>(dq_), ptr<bf16>(dxn_), n, 0.0f);
  linear_backward(ptr<bf16>(a.xn), lw.wk, ptr<bf16>(dk_), ptr<bf16>(dxn_), n, 1.0f);
  linear_backward(ptr<bf16>(a.xn), lw.wv, ptr<bf16>(dv_), ptr<bf16>(dxn_), n, 1.0f);
  at(Phase::norm_elementwise);
  cuda::rmsnorm_backward(ptr<bf16>(residual_[layer]), w(lw.attention_norm), ptr<float>(a.rstd1), ptr<bf16>(dxn_), dr,
                         true, dw(lw.attention_norm), ptr<float>(norm_partial_), n, d, stream_);
}

void CudaTransformer::forward_hidden(BatchShape s, Tracer* tracer, bool backward_follows) {
  const int64_t n = s.rows();
  use(0);
  if (!layers_.empty()) gather(1);  // the first block's weights arrive while the embedding runs
  {
    Tracer::Span span(tracer, "forward embedding");
    at(Phase::embedding);
    cuda::embedding_forward(ptr<int32_t>(tokens_), w(embedding_), ptr<bf16>(residual_[0]), n, args_.dim, stream_);
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    Tracer::Span span(tracer, "forward layers." + std::to_string(i));
    use(i + 1);
    const bool last = i + 1 == layers_.size();
    if (!last) gather(i + 2);  // the next block's weights arrive while this one computes
    block_forward(i, s);
    if (!backward_follows || (last ? policy_.reshard_last_block : policy_.reshard_blocks)) reshard(i + 1);
  }
  at(Phase::norm_elementwise);
  cuda::rmsnorm_forward(ptr<bf16>(residual_.back()), w(norm_), ptr<bf16>(final_out_), ptr<float>(final_rstd_), n,
                        args_.dim, args_.norm_eps, stream_);
}

void CudaTransformer::classifier(int64_t n, int32_t ignore_index, float grad_scale, bool with_grads) {
  const int64_t d = args_.dim, vocab = args_.vocab_size;
  at(Phase::classifier);
  for (int64_t r0 = 0; r0 < n; r0 += classifier_rows_) {
    const int64_t rows = std::min(classifier_rows_, n - r0);
    const bf16* h = ptr<bf16>(final_out_) + r0 * d;
    gemm_->run(false, true, rows, vocab, d, h, w(output_), logits_.as<void>(), cuda::OutType::bf16, 1.0f, 0.0f);
    cuda::cross_entropy_rows(ptr<bf16>(logits_), ptr<int32_t>(labels_) + r0, rows, vocab, ignore_index, grad_scale,
                             ptr<float>(row_loss_) + r0, with_grads, stream_);
    if (!with_grads) continue;
    gemm_->run(false, false, rows, d, vocab, ptr<bf16>(logits_), w(output_), ptr<bf16>(d_hidden_) + r0 * d,
               cuda::OutType::bf16, 1.0f, 0.0f);
    gemm_->run(true, false, vocab, d, rows, ptr<bf16>(logits_), h, dw(output_), cuda::OutType::f32, 1.0f,
               r0 == 0 ? grad_beta() : 1.0f);
  }
  cuda::sum_f32(ptr<float>(row_loss_), n, ptr<double>(sums_), ptr<double>(reduce_scratch_), stream_);
}

double CudaTransformer::read_loss_sum() {
  double loss_sum = 0;
  TITAN_CUDA_CHECK(cudaMemcpyAsync(&loss_sum, sums_.as<void>(), sizeof(double), cudaMemcpyDeviceToHost, stream_));
  synchronize();
  return loss_sum;
}

namespace {
int64_t counted(const int32_t* labels, int64_t n, int32_t ignore_index) {
  return std::count_if(labels, labels + n, [&](int32_t l) { return l != ignore_index; });
}
void check_labels(const int32_t* labels, int64_t n, int64_t vocab, int32_t ignore_index) {
  for (int64_t i = 0; i < n; ++i)
    TITAN_CHECK(labels[i] == ignore_index || (labels[i] >= 0 && labels[i] < vocab), "label ", labels[i],
                " at position ", i, " is outside the vocabulary [0, ", vocab, ")");
}
}  // namespace

// Every pass begins so: no unit left gathered by a pass that threw, the plan for this shape, the
// batch checked and on the device (with the embedding-gradient index when a backward follows).
void CudaTransformer::start_pass(const int32_t* tokens, const int32_t* labels, BatchShape s, int32_t ignore_index,
                                 bool with_index) {
  release_units();
  plan(s);
  if (labels) check_labels(labels, s.rows(), args_.vocab_size, ignore_index);
  upload_batch(tokens, labels, s.rows(), with_index);
}

cpu::ClassifierResult CudaTransformer::forward_backward(const int32_t* tokens, const int32_t* labels, BatchShape s,
                                                        float grad_scale, int32_t ignore_index, Tracer* tracer) {
  start_pass(tokens, labels, s, ignore_index, true);
  const int64_t n = s.rows();
  forward_hidden(s, tracer, true);
  cpu::ClassifierResult result;
  if (policy_.reshard_root && fsdp_) {  // "always": the root too is freed after forward, gathered again
    reshard(0);
    use(0);
  }
  if (fsdp_ && !layers_.empty()) gather(layers_.size());  // the last block, freed or not, arrives beside the classifier
  begin_unit_grads(0);  // the root's: the classifier writes the output projection's
  {
    Tracer::Span span(tracer, "loss (output projection + cross-entropy, forward and backward)");
    classifier(n, ignore_index, grad_scale, true);
    result.count = counted(labels, n, ignore_index);
  }
  Tracer::Span span(tracer, "backward (final norm, layers, embedding)");
  enqueue_backward(s);
  result.loss_sum = read_loss_sum();
  return result;
}

// From d_hidden_ (the classifier's gradient) to the parameter gradients.
void CudaTransformer::enqueue_backward(BatchShape s) {
  const int64_t n = s.rows();
  at(Phase::norm_elementwise);
  cuda::rmsnorm_backward(ptr<bf16>(residual_.back()), w(norm_), ptr<float>(final_rstd_), ptr<bf16>(d_hidden_),
                         ptr<bf16>(d_resid_), false, dw(norm_), ptr<float>(norm_partial_), n, args_.dim, stream_);
  for (size_t i = layers_.size(); i-- > 0;) {
    use(i + 1);
    if (i > 0) gather(i);  // the block below arrives while this one's backward runs
    begin_unit_grads(i + 1);
    block_backward(i, s);
    reduce_unit_grads(i + 1);
  }
  at(Phase::embedding);
  cuda::embedding_backward(ptr<int32_t>(embed_ids_), ptr<int32_t>(embed_offsets_), ptr<int32_t>(embed_positions_),
                           embed_unique_, ptr<bf16>(d_resid_), dw(embedding_), args_.dim, stream_);
  reduce_unit_grads(0);
  retire_reduced();  // grad_ complete, as the compute stream sees it
}

// One step up to the gradient norm, after the batch is on the device; no host synchronisation.
void CudaTransformer::enqueue_gradients(BatchShape s, float grad_scale, int32_t ignore_index) {
  TITAN_CHECK(!fsdp_, "the fused step (CUDA graphs) is not built for FSDP: use forward_backward and adamw");
  // One micro-batch: each weight's GEMM writes its gradient once (beta 0), so only the gradients
  // that are summed into are cleared, not the whole fp32 buffer (6 GB for 1B).
  for (const auto& [begin, end] : accumulated_grads_)
    TITAN_CUDA_CHECK(cudaMemsetAsync(ptr<float>(grad_) + begin, 0, static_cast<size_t>(end - begin) * sizeof(float), stream_));
  struct Overwrite {
    bool& flag;
    explicit Overwrite(bool& f) : flag(f) { flag = true; }
    ~Overwrite() { flag = false; }
  } overwrite(overwrite_grads_);
  forward_hidden(s, nullptr, true);
  classifier(s.rows(), ignore_index, grad_scale, true);
  enqueue_backward(s);
  at(Phase::optimizer);
  cuda::sum_squares_f32(ptr<float>(grad_), total_, ptr<double>(sums_) + 1, ptr<double>(reduce_scratch_), stream_);
}

// Clipping and AdamW, decided on the device from the loss and norm (skipped if not finite).
void CudaTransformer::enqueue_update(double max_norm) {
  at(Phase::optimizer);
  cuda::adamw_device_step(ptr<float>(master_), ptr<float>(grad_), ptr<float>(exp_avg_), ptr<float>(exp_avg_sq_),
                          ptr<bf16>(weights_), total_, step_factors_.as<cuda::AdamWStep>(), ptr<double>(sums_) + 1,
                          ptr<double>(sums_), max_norm, stream_);
}

void CudaTransformer::send_sums() {
  TITAN_CUDA_CHECK(cudaMemcpyAsync(host_sums_.get(), sums_.as<void>(), 2 * sizeof(double), cudaMemcpyDeviceToHost, stream_));
  TITAN_CUDA_CHECK(cudaEventRecord(sums_ready_.get(), stream_));
}

cudaGraphExec_t CudaTransformer::capture(const std::function<void()>& enqueue) {
  cudaGraph_t graph = nullptr;
  TITAN_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  try {
    enqueue();
  } catch (...) {
    cudaStreamEndCapture(stream_, &graph);
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  TITAN_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t st = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  TITAN_CUDA_CHECK(st);
  return exec;
}

void CudaTransformer::drop_graph() {
  for (cudaGraphExec_t* g : {&gradients_graph_, &update_graph_}) {
    if (*g) cudaGraphExecDestroy(*g);
    *g = nullptr;
  }
  graph_key_ = {};
}

CudaTransformer::StepResult CudaTransformer::fused_step(const int32_t* tokens, const int32_t* labels, BatchShape s,
                                                        float grad_scale, const cuda::AdamWStep& step, double max_norm,
                                                        bool use_graph, int32_t ignore_index) {
  start_pass(tokens, labels, s, ignore_index, true);
  const int64_t n = s.rows();
  TITAN_CUDA_CHECK(cudaMemcpyAsync(step_factors_.as<void>(), &step, sizeof step, cudaMemcpyHostToDevice, stream_));
  const GraphKey key{s, grad_scale, max_norm, ignore_index};
  if (use_graph && update_graph_ && graph_key_ == key) {
    TITAN_CUDA_CHECK(cudaGraphLaunch(gradients_graph_, stream_));
    send_sums();
    TITAN_CUDA_CHECK(cudaGraphLaunch(update_graph_, stream_));
    // Return while AdamW (about a tenth of the step) runs: the host checks and uploads the next
    // batch meanwhile, and all it enqueues on this stream (that upload, a checkpoint's
    // download) is ordered after the update.
    TITAN_CUDA_CHECK(cudaEventSynchronize(sums_ready_.get()));
    return {host_sums_.get()[0], counted(labels, n, ignore_index), host_sums_.get()[1]};
  }
  if (use_graph) drop_graph();
  enqueue_gradients(s, grad_scale, ignore_index);
  send_sums();
  enqueue_update(max_norm);
  if (!use_graph && phases_) phases_->finish_step();
  if (use_graph) {
    // The first step of a shape ran eagerly (cuBLASLt picked its algorithms, kernels loaded);
    // the same work is captured now, not run, for the next steps.
    cudaGraphExec_t gradients = capture([&] { enqueue_gradients(s, grad_scale, ignore_index); });
    try {
      update_graph_ = capture([&] { enqueue_update(max_norm); });
    } catch (...) {
      cudaGraphExecDestroy(gradients);
      throw;
    }
    gradients_graph_ = gradients;
    graph_key_ = key;
  }
  synchronize();
  return {host_sums_.get()[0], counted(labels, n, ignore_index), host_sums_.get()[1]};
}

cpu::ClassifierResult CudaTransformer::forward_loss(const int32_t* tokens, const int32_t* labels, BatchShape s,
                                                    int32_t ignore_index) {
  // Validation stays out of the per-step phase times.
  struct Pause {
    std::unique_ptr<cuda::PhaseTimer>& slot;
    std::unique_ptr<cuda::PhaseTimer> held;
    ~Pause() { slot = std::move(held); }
  } pause{phases_, std::move(phases_)};
  start_pass(tokens, labels, s, ignore_index, false);
  const int64_t n = s.rows();
  forward_hidden(s, nullptr, false);
  cpu::ClassifierResult result;
  classifier(n, ignore_index, 0.0f, false);
  reshard(0);
  result.loss_sum = read_loss_sum();
  result.count = counted(labels, n, ignore_index);
  return result;
}

void CudaTransformer::forward_logits(const int32_t* tokens, BatchShape s, float* logits) {
  start_pass(tokens, nullptr, s, -100, false);
  const int64_t n = s.rows(), vocab = args_.vocab_size;
  forward_hidden(s, nullptr, false);
  std::vector<bf16_bits> chunk(static_cast<size_t>(std::min(classifier_rows_, n) * vocab));
  for (int64_t r0 = 0; r0 < n; r0 += classifier_rows_) {
    const int64_t rows = std::min(classifier_rows_, n - r0);
    gemm_->run(false, true, rows, vocab, args_.dim, ptr<bf16>(final_out_) + r0 * args_.dim, w(output_),
               logits_.as<void>(), cuda::OutType::bf16, 1.0f, 0.0f);
    TITAN_CUDA_CHECK(cudaMemcpyAsync(chunk.data(), logits_.as<void>(), rows * vocab * sizeof(bf16_bits),
                                     cudaMemcpyDeviceToHost, stream_));
    synchronize();
    std::transform(chunk.begin(), chunk.begin() + rows * vocab, logits + r0 * vocab, bf16_to_f32);
  }
  reshard(0);
}

double CudaTransformer::grad_sq_sum() {
  compute_after_comm();
  at(Phase::optimizer);
  cuda::sum_squares_f32(ptr<float>(grad_), total_, ptr<double>(sums_) + 1, ptr<double>(reduce_scratch_), stream_);
  double out = 0;
  TITAN_CUDA_CHECK(cudaMemcpyAsync(&out, ptr<double>(sums_) + 1, sizeof(double), cudaMemcpyDeviceToHost, stream_));
  synchronize();
  return out;
}

void CudaTransformer::adamw(const cuda::AdamWStep& step) {
  compute_after_comm();  // no gather may still read the weights it rewrites
  at(Phase::optimizer);
  cuda::adamw(ptr<float>(master_), ptr<float>(grad_), ptr<float>(exp_avg_), ptr<float>(exp_avg_sq_), ptr<bf16>(weights_),
              total_, step, stream_);
  if (phases_) phases_->finish_step();
}

void CudaTransformer::enable_phase_timing() {
  if (!phases_) phases_ = std::make_unique<cuda::PhaseTimer>(stream_);
}

std::vector<float> CudaTransformer::gradient(size_t param_index) {
  compute_after_comm();
  std::vector<float> out(local_.at(param_index));  // the flat gradient (shard) buffer: after a backward
  TITAN_CUDA_CHECK(cudaMemcpyAsync(out.data(), ptr<float>(grad_) + offset_[param_index], out.size() * sizeof(float),
                                   cudaMemcpyDeviceToHost, stream_));
  synchronize();
  return out;
}

}  // namespace titan::llama3

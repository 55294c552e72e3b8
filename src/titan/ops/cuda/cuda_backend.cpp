#include "titan/ops/cuda/cuda_backend.h"

#include <algorithm>

#include "titan/core/error.h"
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/cuda/float8_kernels.h"
#include "titan/ops/cuda/host_plan.h"

namespace titan::cuda {

namespace {
const bf16* b(const void* p) { return static_cast<const bf16*>(p); }
bf16* b(void* p) { return static_cast<bf16*>(p); }
AttentionShape shape(const AttentionDims& s) { return {s.batch, s.seq, s.heads, s.kv_heads, s.head_dim}; }
}  // namespace

CudaBackend::CudaBackend(AttentionLibrary attention, bool fused) : live_(std::make_shared<size_t>(0)), fused_(fused) {
  TITAN_CUDA_CHECK(cudaGetDevice(&device_));
  TITAN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  gemm_ = std::make_unique<Gemm>(stream_);
  cudnn_ = open_cudnn_attention(attention, stream_, alloc_, &cudnn_unused_);
}

CudaBackend::~CudaBackend() {
  if (!stream_) return;
  cudaStreamSynchronize(stream_);
  cudnn_.reset();  // its handle is bound to stream_
  gemm_.reset();
  phases_.reset();
  cudaStreamDestroy(stream_);
}

std::string CudaBackend::description() const {
  const std::string attention =
      cudnn_ ? concat("cuDNN ", cudnn_->version(),
                      " fused attention (head_dim 64/128, seq a multiple of 128; titan's kernels otherwise)")
      : cudnn_unused_.empty() ? std::string("titan's attention kernels")
                              : concat("titan's attention kernels (TITAN_ATTENTION_IMPL=auto, cuDNN unusable here: ",
                                       cudnn_unused_, ")");
  return concat("cuda:", device_, " (", device_name(device_), "), bfloat16 compute, ",
                fused_ ? "fused residual+RMSNorm" : "one op per kernel", ", ", attention);
}

Buffer CudaBackend::allocate(size_t bytes) {
  auto holder = std::make_shared<DeviceBuffer>(alloc_, std::max<size_t>(bytes, 1));
  TITAN_CUDA_CHECK(cudaMemsetAsync(holder->as<void>(), 0, holder->bytes(), stream_));
  *live_ += bytes;
  std::shared_ptr<size_t> live = live_;
  void* p = holder->as<void>();
  // The DeviceBuffer goes back to the cache with the last handle; work queued later on this
  // stream is ordered after any use of it, so the cache may hand it out again at once.
  return Buffer(std::shared_ptr<void>(p, [holder, live, bytes](void*) mutable {
                  *live -= bytes;
                  holder.reset();
                }),
                bytes);
}

size_t CudaBackend::live_bytes() const { return *live_ + scratch_bytes_; }

DeviceBuffer CudaBackend::scratch(size_t bytes) {
  scratch_bytes_ += bytes;
  return DeviceBuffer(alloc_, bytes);
}

void CudaBackend::prepare(const PassDims& p) {
  if (p == prepared_ && scratch_bytes_ > 0) return;
  synchronize();  // the old scratch may still be read
  std::vector<DeviceBuffer*> slots = {&delta_,     &norm_partial_,  &logits_,     &row_loss_,
                                      &reduce_scratch_, &sums_,    &tokens_,     &labels_,
                                      &embed_ids_, &embed_offsets_, &embed_positions_};
  const std::vector<DeviceBuffer*> float8 = {&fp8_input_, &fp8_grad_, &fp8_grad_t_, &fp8_weight_, &fp8_scales_};
  const std::vector<DeviceBuffer*> tp = {&tp_first_, &tp_second_};
  for (DeviceBuffer* d : slots) d->reset();
  for (DeviceBuffer* d : float8) d->reset();
  for (DeviceBuffer* d : tp) d->reset();
  if (p.float8) slots.insert(slots.end(), float8.begin(), float8.end());
  if (p.tp_degree > 1) slots.insert(slots.end(), tp.begin(), tp.end());
  scratch_bytes_ = 0;
  const std::vector<ScratchBuffer> plan = backend_scratch(p, budget_);
  TITAN_CHECK(plan.size() == slots.size(), "the CUDA scratch plan names ", plan.size(), " buffers, expected ",
              slots.size());
  for (size_t i = 0; i < plan.size(); ++i) *slots[i] = scratch(plan[i].bytes);
  classifier_rows_ = classifier_rows(p.shape.rows(), p.vocab, budget_);
  gathered_rows_ = p.tp_degree > 1 && !p.loss_parallel ? gathered_logits_rows(p, budget_) : 0;
  prepared_ = p;
}

void CudaBackend::upload_f32(float* dst, const float* src, int64_t count) {
  TITAN_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(count) * sizeof(float), cudaMemcpyHostToDevice, stream_));
  synchronize();  // the host values may go out of scope
}

void CudaBackend::load_batch(const int32_t* tokens, const int32_t* labels, int64_t n, int64_t vocab,
                             int32_t ignore_index, bool backward_follows) {
  TITAN_CHECK(n == prepared_.shape.rows(), "a batch of ", n, " rows, prepared for ", prepared_.shape.rows());
  for (int64_t i = 0; i < n; ++i)
    TITAN_CHECK(tokens[i] >= 0 && tokens[i] < vocab, "token id ", tokens[i], " at position ", i,
                " is outside the vocabulary [0, ", vocab, ")");
  if (labels)
    for (int64_t i = 0; i < n; ++i)
      TITAN_CHECK(labels[i] == ignore_index || (labels[i] >= 0 && labels[i] < vocab), "label ", labels[i], " at position ",
                  i, " is outside the vocabulary [0, ", vocab, ")");
  const size_t bytes = static_cast<size_t>(n) * sizeof(int32_t);
  TITAN_CUDA_CHECK(cudaMemcpyAsync(tokens_.as<void>(), tokens, bytes, cudaMemcpyHostToDevice, stream_));
  if (labels) TITAN_CUDA_CHECK(cudaMemcpyAsync(labels_.as<void>(), labels, bytes, cudaMemcpyHostToDevice, stream_));
  if (backward_follows) {
    build_embedding_index(tokens, n, vocab, true, embed_index_, embed_counts_);
    embed_groups_ = static_cast<int64_t>(embed_index_.ids.size());  // n: padded to a fixed launch size
    TITAN_CUDA_CHECK(cudaMemcpyAsync(embed_ids_.as<void>(), embed_index_.ids.data(), bytes, cudaMemcpyHostToDevice, stream_));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(embed_offsets_.as<void>(), embed_index_.offsets.data(), bytes + sizeof(int32_t),
                                     cudaMemcpyHostToDevice, stream_));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(embed_positions_.as<void>(), embed_index_.positions.data(), bytes,
                                     cudaMemcpyHostToDevice, stream_));
  }
  synchronize();  // the host arrays may change as soon as we return
}

void CudaBackend::embedding_forward(const void* w, void* out, int64_t n, int64_t d, int64_t vocab_begin,
                                    int64_t vocab) {
  mark(Phase::embedding);
  cuda::embedding_forward(tokens_.as<int32_t>(), b(w), b(out), n, d, stream_, vocab_begin, vocab);
}

void CudaBackend::embedding_backward(const void* dout, float* dw, int64_t /*n*/, int64_t d, int64_t vocab_begin,
                                     int64_t vocab) {
  mark(Phase::embedding);
  cuda::embedding_backward(embed_ids_.as<int32_t>(), embed_offsets_.as<int32_t>(), embed_positions_.as<int32_t>(),
                           embed_groups_, b(dout), dw, d, stream_, vocab_begin, vocab);
}

void CudaBackend::set_float8_recipe(const float8::Recipe& recipe) { float8_ = recipe; }

// The scale scratch holds two operands' amax, scale and 1/scale, `longest` floats each.
Gemm::Float8Operand CudaBackend::cast_float8(const void* src, const float* src_f32, int64_t rows, int64_t cols,
                                             const float8::Cast& cast, float8::Axis axis, int slot, uint8_t* out,
                                             uint8_t* out_t, bool transposed_scales) {
  const ScaleSpan span = scale_span(cast, axis);
  const int64_t count = scale_count(span, rows, cols), longest = static_cast<int64_t>(fp8_scales_.bytes() / (4 * 6));
  TITAN_CHECK(count <= longest, "float8 scales for ", count, " rows, the scratch holds ", longest);
  float* base = fp8_scales_.as<float>() + static_cast<int64_t>(slot) * 3 * longest;
  float *amax = base, *scale = base + longest, *inv_scale = base + 2 * longest;
  if (src_f32) float8_amax(src_f32, rows, cols, span, amax, stream_);
  else float8_amax(b(src), rows, cols, span, amax, stream_);
  float8_scales(amax, count, cast.format, float8_->power_of_2_scales, scale, inv_scale, stream_);
  if (src_f32) float8_cast(src_f32, rows, cols, scale, span, cast.format, out, out_t, stream_);
  else float8_cast(b(src), rows, cols, scale, span, cast.format, out, out_t, stream_);
  // The GEMM's operand is `out` (scales per its rows) or `out_t` (scales per its rows = the
  // source's columns): per-row either way when the span runs along the operand's rows.
  const bool per_row = span == (transposed_scales ? ScaleSpan::columns : ScaleSpan::rows);
  TITAN_CHECK(span == ScaleSpan::tensor || per_row, "a float8 scale along the GEMM's contraction");
  return {out_t && transposed_scales ? out_t : out, cast.format, inv_scale, per_row};
}

// cuBLASLt scales both operands by scalars or both by vectors: a tensorwise operand facing a
// per-row one (rowwise_with_gw_hp's dX) gets its one factor repeated over its `rows`, into its
// slot's scale region (the cast that read it is queued before). torchao repeats it likewise.
void CudaBackend::match_scale_modes(Gemm::Float8Operand& a, int64_t a_rows, Gemm::Float8Operand& b, int64_t b_rows) {
  if (a.per_row == b.per_row) return;
  const int64_t longest = static_cast<int64_t>(fp8_scales_.bytes() / (4 * 6));
  Gemm::Float8Operand& scalar = a.per_row ? b : a;
  const int64_t rows = a.per_row ? b_rows : a_rows;
  TITAN_CHECK(rows <= longest, "float8 scales for ", rows, " rows, the scratch holds ", longest);
  float* repeated = const_cast<float*>(scalar.inv_scale) - longest;  // the slot's `scale` region
  float8_repeat_scale(scalar.inv_scale, repeated, rows, stream_);
  scalar.inv_scale = repeated;
  scalar.per_row = true;
}

// A weight the FP8 all-gather delivered as e4m3 [out, in] with its tensorwise scale: the
// forward's operand as it is; for dX (rows > 0) turned K-major into the weight scratch. The
// bytes equal what cast_float8 makes of the fp32 master with the same scale (the store's is
// the whole tensor's amax), so the GEMMs see the same operands as without the gather.
Gemm::Float8Operand CudaBackend::gathered_float8_weight(const LinearWeight& lw, int64_t rows, int64_t cols) {
  TITAN_CHECK(lw.float8_inv_scale, "a weight gathered in float8 without its 1/scale on the device");
  // The store casts as tensorwise's weight casts (no power-of-two rounding); the dX GEMM's other
  // operand must be tensorwise too (cuBLASLt takes no scalar/vector mix, and match_scale_modes
  // writes into the backend's own scale slots only).
  TITAN_CHECK(float8_->weight.scaling == float8::Scaling::tensorwise &&
                  float8_->weight_for_grad_input.scaling == float8::Scaling::tensorwise &&
                  float8_->grad_output.scaling == float8::Scaling::tensorwise && !float8_->power_of_2_scales &&
                  float8_->weight.format == float8::Format::e4m3 && float8_->weight_for_grad_input.format == float8::Format::e4m3,
              "weights gathered in e4m3 under a recipe that is not tensorwise");
  const auto* bytes = static_cast<const uint8_t*>(lw.w);
  if (rows == 0) return {bytes, float8::Format::e4m3, lw.float8_inv_scale, false};
  float8_transpose(bytes, rows, cols, fp8_weight_.as<uint8_t>(), stream_);
  return {fp8_weight_.as<uint8_t>(), float8::Format::e4m3, lw.float8_inv_scale, false};
}

// torchao's float8 linear on the GPU (docs/float8.md): each operand cast with its recipe's
// scales into float8 scratch, K-major, and cuBLASLt's scaled FP8 GEMM. The weight is cast from
// its fp32 master where the store holds one (the bf16 copy otherwise: under FSDP).
void CudaBackend::linear_forward(const void* x, const LinearWeight& lw, void* y, int64_t n, int64_t in, int64_t out,
                                 LinearPrecision precision) {
  mark(Phase::gemm);
  const void* w = lw.w;
  const float* w_master = lw.master;
  TITAN_CHECK(!lw.float8_scale || precision == LinearPrecision::float8, "a weight gathered in e4m3 for a bf16 linear");
  if (precision != LinearPrecision::float8) return gemm_->run(false, true, n, out, in, b(x), b(w), y, OutType::bf16, 1.0f, 0.0f);
  TITAN_CHECK(float8_, "a float8 linear before the backend has a float8 recipe");
  using float8::Axis;
  const auto xq = cast_float8(x, nullptr, n, in, float8_->input, Axis::rows, 0, fp8_input_.as<uint8_t>(), nullptr, false);
  const auto wq = lw.float8_scale ? gathered_float8_weight(lw)
                                  : cast_float8(w, w_master, out, in, float8_->weight, Axis::rows, 1,
                                                fp8_weight_.as<uint8_t>(), nullptr, false);
  gemm_->run_float8(out, n, in, wq, xq, y, OutType::bf16, 0.0f, true);  // y [n, out] = x W^T
}

void CudaBackend::linear_backward(const void* x, const LinearWeight& lw, const void* dy, void* dx, float* dw, int64_t n,
                                  int64_t in, int64_t out, float dx_beta, LinearPrecision precision) {
  mark(Phase::gemm);
  const void* w = lw.w;
  const float* w_master = lw.master;
  TITAN_CHECK(!lw.float8_scale || precision == LinearPrecision::float8, "a weight gathered in e4m3 for a bf16 linear");
  if (precision == LinearPrecision::float8) {
    TITAN_CHECK(float8_, "a float8 linear before the backend has a float8 recipe");
    using float8::Axis;
    const float8::Recipe& r = *float8_;
    // dX [n, in] = dY W: dY per row (K = out), W per column, as W^T [in, out].
    auto dyq = cast_float8(dy, nullptr, n, out, r.grad_output, Axis::rows, 0, fp8_grad_.as<uint8_t>(), nullptr, false);
    auto wtq = lw.float8_scale ? gathered_float8_weight(lw, out, in)
                               : cast_float8(w, w_master, out, in, r.weight_for_grad_input, Axis::columns, 1, nullptr,
                                             fp8_weight_.as<uint8_t>(), true);
    match_scale_modes(wtq, in, dyq, n);
    gemm_->run_float8(in, n, out, wtq, dyq, dx, OutType::bf16, dx_beta, false);
    if (r.grad_output_for_grad_weight.scaling == float8::Scaling::disabled) {  // rowwise_with_gw_hp: dW in bf16
      gemm_->run(true, false, out, in, n, b(dy), b(x), dw, OutType::f32, 1.0f, grad_beta());
      return;
    }
    // dW [out, in] += dY^T X: both per column (K = n), as X^T [in, n] and dY^T [out, n].
    const auto xtq = cast_float8(x, nullptr, n, in, r.input_for_grad_weight, Axis::columns, 0, nullptr,
                                 fp8_input_.as<uint8_t>(), true);
    const auto dytq = cast_float8(dy, nullptr, n, out, r.grad_output_for_grad_weight, Axis::columns, 1, nullptr,
                                  fp8_grad_t_.as<uint8_t>(), true);
    gemm_->run_float8(in, out, n, xtq, dytq, dw, OutType::f32, grad_beta(), false);
    return;
  }
  gemm_->run(false, false, n, in, out, b(dy), b(w), dx, OutType::bf16, 1.0f, dx_beta);     // dx = dy W
  gemm_->run(true, false, out, in, n, b(dy), b(x), dw, OutType::f32, 1.0f, grad_beta());  // dW (+)= dy^T x
}

void CudaBackend::rmsnorm_forward(const void* x, const void* w, void* y, float* rstd, int64_t n, int64_t d, float eps) {
  mark(Phase::norm_elementwise);
  cuda::rmsnorm_forward(b(x), b(w), b(y), rstd, n, d, eps, stream_);
}

void CudaBackend::add_rmsnorm_forward(const void* x, const void* r, void* h, const void* w, void* y, float* rstd,
                                      int64_t n, int64_t d, float eps) {
  mark(Phase::norm_elementwise);
  if (fused_) return cuda::add_rmsnorm_forward(b(x), b(r), b(h), b(w), b(y), rstd, n, d, eps, stream_);
  cuda::add(b(x), b(r), b(h), n * d, stream_);
  cuda::rmsnorm_forward(b(h), b(w), b(y), rstd, n, d, eps, stream_);
}

void CudaBackend::rmsnorm_backward(const void* x, const void* w, const float* rstd, const void* dy, void* dx,
                                   bool accumulate, float* dw, int64_t n, int64_t d) {
  mark(Phase::norm_elementwise);
  cuda::rmsnorm_backward(b(x), b(w), rstd, b(dy), b(dx), accumulate, dw, norm_partial_.as<float>(), n, d, stream_);
}

void CudaBackend::rope(void* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads,
                       int64_t head_dim, bool inverse) {
  mark(Phase::norm_elementwise);
  cuda::rope(b(x), cos, sin, batch, seq, heads, head_dim, inverse, stream_);
}

void CudaBackend::attention_forward(const void* q, const void* k, const void* v, void* o, float* lse,
                                    const AttentionDims& s) {
  mark(Phase::attention_forward);
  if (cudnn_ && cudnn_->forward(b(q), b(k), b(v), b(o), lse, shape(s))) return;
  cuda::attention_forward(b(q), b(k), b(v), b(o), lse, shape(s), stream_);
}

void CudaBackend::attention_backward(const void* q, const void* k, const void* v, const void* o, const float* lse,
                                     const void* dout, void* dq, void* dk, void* dv, const AttentionDims& s) {
  mark(Phase::attention_backward);
  if (cudnn_ && cudnn_->backward(b(q), b(k), b(v), b(o), lse, b(dout), b(dq), b(dk), b(dv), shape(s))) return;
  cuda::attention_backward(b(q), b(k), b(v), b(o), lse, b(dout), b(dq), b(dk), b(dv), delta_.as<float>(), shape(s),
                           stream_);
}

void CudaBackend::attention_decode(const void*, const void*, const void*, void*, int64_t, int64_t, int64_t, int64_t) {
  throw UserError("KV-cache decoding (titan generate) runs on the CPU backend; the CUDA backend has no decode kernel");
}

void CudaBackend::swiglu_forward(const void* a, const void* b_, void* g, int64_t count) {
  mark(Phase::norm_elementwise);
  cuda::swiglu_forward(b(a), b(b_), b(g), count, stream_);
}

void CudaBackend::swiglu_backward(const void* a, const void* b_, const void* dg, void* da, void* db, int64_t count) {
  mark(Phase::norm_elementwise);
  cuda::swiglu_backward(b(a), b(b_), b(dg), b(da), b(db), count, stream_);
}

void CudaBackend::add(const void* a, const void* b_, void* y, int64_t count) {
  mark(Phase::norm_elementwise);
  cuda::add(b(a), b(b_), b(y), count, stream_);
}

void CudaBackend::copy(void* dst, const void* src, int64_t count) {
  TITAN_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(count) * sizeof(bf16), cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::classifier(const void* h, const void* w, void* dh, float* dw, int64_t n, int64_t d, int64_t vocab,
                             int32_t ignore_index, float grad_scale) {
  mark(Phase::classifier);
  const bool with_grads = dh != nullptr;
  for (int64_t r0 = 0; r0 < n; r0 += classifier_rows_) {
    const int64_t rows = std::min(classifier_rows_, n - r0);
    const bf16* hr = b(h) + r0 * d;
    gemm_->run(false, true, rows, vocab, d, hr, b(w), logits_.as<void>(), OutType::bf16, 1.0f, 0.0f);
    cuda::cross_entropy_rows(logits_.as<bf16>(), labels_.as<int32_t>() + r0, rows, vocab, ignore_index, grad_scale,
                             row_loss_.as<float>() + r0, with_grads, stream_);
    if (!with_grads) continue;
    gemm_->run(false, false, rows, d, vocab, logits_.as<bf16>(), b(w), b(dh) + r0 * d, OutType::bf16, 1.0f, 0.0f);
    gemm_->run(true, false, vocab, d, rows, logits_.as<bf16>(), hr, dw, OutType::f32, 1.0f, r0 == 0 ? grad_beta() : 1.0f);
  }
  sum_f32(row_loss_.as<float>(), n, sums_.as<double>(), reduce_scratch_.as<double>(), stream_);
}

// Loss parallel, as the CPU's (ops/cpu/classifier.cpp): pass 1 takes each row's statistics over
// this rank's slice of the vocabulary, one all-gather of them gives every row's whole
// log-sum-exp, and pass 2 recomputes the slice's logits into their gradient. The logits are
// computed twice and never leave the rank.
void CudaBackend::classifier_vocab_shard(const void* h, const void* w, void* dh, float* dw, int64_t n, int64_t d,
                                         int64_t vocab, int64_t vocab_begin, int64_t vocab_total, int32_t ignore_index,
                                         float grad_scale, VocabShards& shards, bool loss_parallel) {
  mark(Phase::classifier);
  const int degree = shards.degree();
  TITAN_CHECK(vocab * degree == vocab_total, "vocabulary slices of ", vocab, " over ", degree,
              " ranks for a vocabulary of ", vocab_total);
  TITAN_CHECK(prepared_.tp_degree == degree && prepared_.loss_parallel == loss_parallel && n == prepared_.shape.rows(),
              "the classifier over ", degree, " vocabulary slices (loss parallel ", loss_parallel,
              ") before prepare() for them");
  if (!loss_parallel)
    return classifier_gathered_logits(h, w, dh, dw, n, d, vocab, vocab_begin, ignore_index, grad_scale, shards);
  double* mine = tp_first_.as<double>();
  double* all = mine + 2 * n;
  float* lse = tp_second_.as<float>();
  const int32_t* labels = labels_.as<int32_t>();
  for (int64_t r0 = 0; r0 < n; r0 += classifier_rows_) {
    const int64_t rows = std::min(classifier_rows_, n - r0);
    gemm_->run(false, true, rows, vocab, d, b(h) + r0 * d, b(w), logits_.as<void>(), OutType::bf16, 1.0f, 0.0f);
    vocab_slice_stats(logits_.as<bf16>(), labels + r0, rows, vocab, vocab_begin, mine + 2 * r0, stream_);
  }
  shards.gather_stats(mine, all, 2 * n);
  combine_vocab_stats(all, labels, n, degree, ignore_index, lse, row_loss_.as<float>(), stream_);
  sum_f32(row_loss_.as<float>(), n, sums_.as<double>(), reduce_scratch_.as<double>(), stream_);
  if (!dh) return;
  for (int64_t r0 = 0; r0 < n; r0 += classifier_rows_) {
    const int64_t rows = std::min(classifier_rows_, n - r0);
    const bf16* hr = b(h) + r0 * d;
    gemm_->run(false, true, rows, vocab, d, hr, b(w), logits_.as<void>(), OutType::bf16, 1.0f, 0.0f);
    vocab_slice_gradient(logits_.as<bf16>(), labels + r0, lse + r0, rows, vocab, vocab_begin, ignore_index, grad_scale,
                         stream_);
    gemm_->run(false, false, rows, d, vocab, logits_.as<bf16>(), b(w), b(dh) + r0 * d, OutType::bf16, 1.0f, 0.0f);
    gemm_->run(true, false, vocab, d, rows, logits_.as<bf16>(), hr, dw, OutType::f32, 1.0f, r0 == 0 ? grad_beta() : 1.0f);
  }
}

// Without loss parallel (torchtitan's disable_loss_parallel): each group's logits gathered from
// every rank (rank-major), laid out row-major over the whole vocabulary (global id k * vocab + j
// is rank k's column j), the one-rank cross-entropy over them, and this rank's columns of the
// gradient copied back for the slice's backward GEMMs.
void CudaBackend::classifier_gathered_logits(const void* h, const void* w, void* dh, float* dw, int64_t n, int64_t d,
                                             int64_t vocab, int64_t vocab_begin, int32_t ignore_index,
                                             float grad_scale, VocabShards& shards) {
  const int degree = shards.degree();
  const int64_t total = vocab * degree, rank = vocab_begin / vocab;
  const size_t slice_pitch = static_cast<size_t>(vocab) * sizeof(bf16), whole_pitch = static_cast<size_t>(total) * sizeof(bf16);
  bf16* gathered = tp_first_.as<bf16>();
  bf16* whole = tp_second_.as<bf16>();
  for (int64_t r0 = 0; r0 < n; r0 += gathered_rows_) {
    const int64_t rows = std::min(gathered_rows_, n - r0), block = rows * vocab;
    const bf16* hr = b(h) + r0 * d;
    gemm_->run(false, true, rows, vocab, d, hr, b(w), logits_.as<void>(), OutType::bf16, 1.0f, 0.0f);
    shards.gather_logits(logits_.as<void>(), gathered, block);
    for (int k = 0; k < degree; ++k)
      TITAN_CUDA_CHECK(cudaMemcpy2DAsync(whole + k * vocab, whole_pitch, gathered + k * block, slice_pitch, slice_pitch,
                                         static_cast<size_t>(rows), cudaMemcpyDeviceToDevice, stream_));
    cuda::cross_entropy_rows(whole, labels_.as<int32_t>() + r0, rows, total, ignore_index, grad_scale,
                             row_loss_.as<float>() + r0, dh != nullptr, stream_);
    if (!dh) continue;
    TITAN_CUDA_CHECK(cudaMemcpy2DAsync(logits_.as<bf16>(), slice_pitch, whole + rank * vocab, whole_pitch, slice_pitch,
                                       static_cast<size_t>(rows), cudaMemcpyDeviceToDevice, stream_));
    gemm_->run(false, false, rows, d, vocab, logits_.as<bf16>(), b(w), b(dh) + r0 * d, OutType::bf16, 1.0f, 0.0f);
    gemm_->run(true, false, vocab, d, rows, logits_.as<bf16>(), hr, dw, OutType::f32, 1.0f, r0 == 0 ? grad_beta() : 1.0f);
  }
  sum_f32(row_loss_.as<float>(), n, sums_.as<double>(), reduce_scratch_.as<double>(), stream_);
}

double CudaBackend::loss_sum() {
  double out = 0;
  TITAN_CUDA_CHECK(cudaMemcpyAsync(&out, sums_.as<void>(), sizeof(double), cudaMemcpyDeviceToHost, stream_));
  synchronize();
  return out;
}

void CudaBackend::logits(const void* h, const void* w, float* host_logits, int64_t n, int64_t d, int64_t vocab) {
  std::vector<bf16_bits> chunk(static_cast<size_t>(std::min(classifier_rows_, n) * vocab));
  for (int64_t r0 = 0; r0 < n; r0 += classifier_rows_) {
    const int64_t rows = std::min(classifier_rows_, n - r0);
    gemm_->run(false, true, rows, vocab, d, b(h) + r0 * d, b(w), logits_.as<void>(), OutType::bf16, 1.0f, 0.0f);
    TITAN_CUDA_CHECK(cudaMemcpyAsync(chunk.data(), logits_.as<void>(), static_cast<size_t>(rows * vocab) * sizeof(bf16),
                                     cudaMemcpyDeviceToHost, stream_));
    synchronize();
    std::transform(chunk.begin(), chunk.begin() + rows * vocab, host_logits + r0 * vocab, bf16_to_f32);
  }
}

void CudaBackend::synchronize() { TITAN_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void CudaBackend::enable_phase_timing() {
  if (!phases_) phases_ = std::make_unique<PhaseTimer>(stream_);
}

}  // namespace titan::cuda

#include "titan/ops/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "titan/core/error.h"
#include "titan/ops/cpu/blas_kernels.h"

namespace titan::cpu {

namespace {
const float* f(const void* p) { return static_cast<const float*>(p); }
float* f(void* p) { return static_cast<float*>(p); }
}  // namespace

CpuBackend::CpuBackend() : live_(std::make_shared<size_t>(0)) {}

std::string CpuBackend::description() const {
  return concat("cpu, float32, ", omp_get_max_threads(), " threads, ", blas_kernels_description());
}

Buffer CpuBackend::allocate(size_t bytes) {
  constexpr size_t kAlign = 64;  // cache lines, and AVX-512 loads
  const size_t rounded = (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded);
  if (!p) throw UserError(concat("out of host memory allocating ", bytes, " bytes of activations"));
  std::memset(p, 0, rounded);
  *live_ += bytes;
  std::shared_ptr<size_t> live = live_;
  return Buffer(std::shared_ptr<void>(p, [live, bytes](void* q) {
                  std::free(q);
                  *live -= bytes;
                }),
                bytes);
}

size_t CpuBackend::live_bytes() const { return *live_; }

namespace {
// A float8 linear's dequantised copies: x and W in forward; dY with W, then dY with x, in
// backward. n * in + n * out + in * out floats cover each, for the largest linear.
int64_t float8_scratch_floats(const PassDims& p) {
  if (!p.float8) return 0;
  const int64_t n = p.shape.rows(), d = p.dim, widest = std::max(p.heads * p.head_dim, p.ffn_hidden);
  return n * d + n * widest + d * widest;
}
}  // namespace

double cpu_backend_scratch_bytes(const PassDims& p) {
  const int64_t n = p.shape.rows();
  return 4.0 * double(classifier_scratch_floats(n, p.vocab)) + 4.0 * double(n * p.dim) +
         4.0 * double(float8_scratch_floats(p));
}

void CpuBackend::prepare(const PassDims& p) {
  if (p.shape == prepared_.shape && p.dim == prepared_.dim && p.vocab == prepared_.vocab &&
      p.float8 == prepared_.float8 && !dnorm_.empty())
    return;
  const int64_t n = p.shape.rows();
  classifier_scratch_ = Buffer();
  dnorm_ = Buffer();
  float8_scratch_ = Buffer();
  if (const int64_t floats = float8_scratch_floats(p); floats > 0)
    float8_scratch_ = allocate(sizeof(float) * static_cast<size_t>(floats));
  classifier_scratch_ = allocate(sizeof(float) * static_cast<size_t>(classifier_scratch_floats(n, p.vocab)));
  dnorm_ = allocate(sizeof(float) * static_cast<size_t>(n * p.dim));
  prepared_ = p;
}

void CpuBackend::upload_f32(float* dst, const float* src, int64_t count) {
  std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
}

void CpuBackend::load_batch(const int32_t* tokens, const int32_t* labels, int64_t n, int64_t vocab,
                            int32_t /*ignore_index*/, bool /*backward_follows*/) {
  tokens_.assign(tokens, tokens + n);  // the ops check the ids against the vocabulary
  vocab_ = vocab;
  if (labels) labels_.assign(labels, labels + n);
  else labels_.clear();
}

void CpuBackend::embedding_forward(const void* w, void* out, int64_t n, int64_t d, int64_t vocab_begin, int64_t vocab) {
  TITAN_CHECK(static_cast<int64_t>(tokens_.size()) == n, "embedding of ", n, " rows, the batch has ", tokens_.size());
  if (vocab_begin == 0 && vocab == vocab_) {
    cpu::embedding_forward(tokens_.data(), f(w), f(out), n, vocab, d);
    return;
  }
  for (int64_t i = 0; i < n; ++i)  // a slice: the ids are still checked against the whole vocabulary
    TITAN_CHECK(tokens_[i] >= 0 && tokens_[i] < vocab_, "token id ", tokens_[i], " at position ", i,
                " is outside the vocabulary [0, ", vocab_, ")");
  cpu::embedding_forward_slice(tokens_.data(), f(w), f(out), n, d, vocab_begin, vocab);
}

void CpuBackend::embedding_backward(const void* dout, float* dw, int64_t n, int64_t d, int64_t vocab_begin,
                                    int64_t vocab) {
  if (vocab_begin == 0 && vocab == vocab_) cpu::embedding_backward(tokens_.data(), f(dout), dw, n, d);
  else cpu::embedding_backward_slice(tokens_.data(), f(dout), dw, n, d, vocab_begin, vocab);
}

float* CpuBackend::float8_operands(int64_t floats) {
  TITAN_CHECK(float8_, "a float8 linear before the backend has a float8 recipe");
  // Outside a planned pass (a one-row decode, a test) the scratch grows to what the call needs.
  if (float8_scratch_.bytes() < sizeof(float) * static_cast<size_t>(floats))
    float8_scratch_ = allocate(sizeof(float) * static_cast<size_t>(floats));
  return float8_scratch_.as<float>();
}

// Float8 emulated as torchao emulates it: each operand quantised with its recipe's cast and
// dequantised in float32, then the float32 GEMM.
// The weight as the GEMM takes it: w.w is fp32 on the CPU (the master, or FSDP's gathered copy
// of it); cast with `cast` into `scratch`, unless FSDP gathered it already cast (FP8 all-gather:
// e4m3 with one scale for the tensor, the only recipe it runs under).
const float* CpuBackend::float8_weight(const LinearWeight& w, int64_t out, int64_t in, const float8::Cast& cast,
                                       float8::Axis axis, float* scratch) {
  if (w.float8_scale) {
    TITAN_CHECK(cast.scaling == float8::Scaling::tensorwise && cast.format == float8::Format::e4m3,
                "a weight gathered in float8 under a recipe that casts it otherwise");
    return f(w.w);
  }
  float8::quantize_dequantize(f(w.w), scratch, out, in, cast, axis, float8_->power_of_2_scales);
  return scratch;
}

void CpuBackend::linear_forward(const void* x, const LinearWeight& w, void* y, int64_t n, int64_t in, int64_t out,
                                LinearPrecision precision) {
  if (precision != LinearPrecision::float8) return cpu::linear_forward(f(x), f(w.w), f(y), n, in, out);
  using float8::Axis;
  float* xq = float8_operands(n * in + out * in);
  float8::quantize_dequantize(f(x), xq, n, in, float8_->input, Axis::rows, float8_->power_of_2_scales);
  const float* wq = float8_weight(w, out, in, float8_->weight, Axis::rows, xq + n * in);
  cpu::linear_forward(xq, wq, f(y), n, in, out);
}

void CpuBackend::linear_backward(const void* x, const LinearWeight& w, const void* dy, void* dx, float* dw, int64_t n,
                                 int64_t in, int64_t out, float dx_beta, LinearPrecision precision) {
  if (precision != LinearPrecision::float8)
    return cpu::linear_backward(f(x), f(w.w), f(dy), f(dx), dw, n, in, out, dx_beta);
  using float8::Axis;
  const bool pow2 = float8_->power_of_2_scales;
  float* dyq = float8_operands(n * in + n * out + in * out);
  float* wq = dyq + n * out;
  float* xq = wq + out * in;
  // dX = dY @ W: both scaled along `out`, the contraction (dY per row, W per column).
  float8::quantize_dequantize(f(dy), dyq, n, out, float8_->grad_output, Axis::rows, pow2);
  const float* wgq = float8_weight(w, out, in, float8_->weight_for_grad_input, Axis::columns, wq);
  cpu::linear_backward(nullptr, wgq, dyq, f(dx), nullptr, n, in, out, dx_beta);  // dx only
  // dW += dY^T @ X: both scaled along n (per column).
  float8::quantize_dequantize(f(dy), dyq, n, out, float8_->grad_output_for_grad_weight, Axis::columns, pow2);
  float8::quantize_dequantize(f(x), xq, n, in, float8_->input_for_grad_weight, Axis::columns, pow2);
  cpu::linear_backward(xq, nullptr, dyq, nullptr, dw, n, in, out, 0.0f);  // dw only
}

void CpuBackend::rmsnorm_forward(const void* x, const void* w, void* y, float* rstd, int64_t n, int64_t d, float eps) {
  cpu::rmsnorm_forward(f(x), f(w), f(y), rstd, n, d, eps);
}

void CpuBackend::add_rmsnorm_forward(const void* x, const void* r, void* h, const void* w, void* y, float* rstd,
                                     int64_t n, int64_t d, float eps) {
  add(x, r, h, n * d);
  cpu::rmsnorm_forward(f(h), f(w), f(y), rstd, n, d, eps);
}

void CpuBackend::rmsnorm_backward(const void* x, const void* w, const float* rstd, const void* dy, void* dx,
                                  bool accumulate, float* dw, int64_t n, int64_t d) {
  if (!accumulate) return cpu::rmsnorm_backward(f(x), f(w), rstd, f(dy), f(dx), dw, n, d);
  // Written apart, then added: the same two roundings on every machine (a fused += could be
  // contracted into an FMA).
  TITAN_CHECK(dnorm_.bytes() >= static_cast<size_t>(n * d) * sizeof(float), "rmsnorm backward before prepare()");
  cpu::rmsnorm_backward(f(x), f(w), rstd, f(dy), dnorm_.as<float>(), dw, n, d);
  cpu::add_inplace(f(dx), dnorm_.as<float>(), n * d);
}

void CpuBackend::rope(void* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads,
                      int64_t head_dim, bool inverse) {
  if (inverse) cpu::rope_backward(f(x), cos, sin, batch, seq, heads, head_dim);
  else cpu::rope_forward(f(x), cos, sin, batch, seq, heads, head_dim);
}

void CpuBackend::attention_forward(const void* q, const void* k, const void* v, void* o, float* lse,
                                   const AttentionDims& s) {
  cpu::attention_forward(f(q), f(k), f(v), f(o), lse, {s.batch, s.seq, s.heads, s.kv_heads, s.head_dim});
}

void CpuBackend::attention_backward(const void* q, const void* k, const void* v, const void* o, const float* lse,
                                    const void* dout, void* dq, void* dk, void* dv, const AttentionDims& s) {
  cpu::attention_backward(f(q), f(k), f(v), f(o), lse, f(dout), f(dq), f(dk), f(dv),
                          {s.batch, s.seq, s.heads, s.kv_heads, s.head_dim});
}

void CpuBackend::attention_decode(const void* q, const void* k_cache, const void* v_cache, void* o, int64_t positions,
                                  int64_t heads, int64_t kv_heads, int64_t head_dim) {
  cpu::attention_decode(f(q), f(k_cache), f(v_cache), f(o), positions, heads, kv_heads, head_dim);
}

void CpuBackend::swiglu_forward(const void* a, const void* b, void* g, int64_t count) {
  cpu::swiglu_forward(f(a), f(b), f(g), count);
}

void CpuBackend::swiglu_backward(const void* a, const void* b, const void* dg, void* da, void* db, int64_t count) {
  cpu::swiglu_backward(f(a), f(b), f(dg), f(da), f(db), count);
}

void CpuBackend::add(const void* a, const void* b, void* y, int64_t count) {
  const float *pa = f(a), *pb = f(b);
  float* py = f(y);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) py[i] = pa[i] + pb[i];
}

void CpuBackend::copy(void* dst, const void* src, int64_t count) {
  std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
}

void CpuBackend::classifier(const void* h, const void* w, void* dh, float* dw, int64_t n, int64_t d, int64_t vocab,
                            int32_t ignore_index, float grad_scale) {
  TITAN_CHECK(static_cast<int64_t>(labels_.size()) == n, "classifier of ", n, " rows, the batch has ", labels_.size(),
              " labels");
  TITAN_CHECK(!classifier_scratch_.empty(), "classifier before prepare()");
  last_ = cpu::classifier_forward_backward(f(h), f(w), labels_.data(), n, d, vocab, ignore_index, grad_scale,
                                           dh ? f(dh) : nullptr, dh ? dw : nullptr, classifier_scratch_.as<float>());
}

void CpuBackend::classifier_vocab_shard(const void* h, const void* w, void* dh, float* dw, int64_t n, int64_t d,
                                        int64_t vocab, int64_t vocab_begin, int64_t vocab_total, int32_t ignore_index,
                                        float grad_scale, VocabShards& shards, bool loss_parallel) {
  TITAN_CHECK(static_cast<int64_t>(labels_.size()) == n, "classifier of ", n, " rows, the batch has ", labels_.size(),
              " labels");
  TITAN_CHECK(!classifier_scratch_.empty(), "classifier before prepare()");
  last_ = cpu::classifier_vocab_shard(f(h), f(w), labels_.data(), n, d, vocab, vocab_begin, vocab_total, ignore_index,
                                      grad_scale, dh ? f(dh) : nullptr, dh ? dw : nullptr,
                                      classifier_scratch_.as<float>(), shards, !loss_parallel);
}

void CpuBackend::logits(const void* h, const void* w, float* host_logits, int64_t n, int64_t d, int64_t vocab) {
  cpu::linear_forward(f(h), f(w), host_logits, n, d, vocab);
}

}  // namespace titan::cpu

// The CPU backend: fp32 everywhere, the reference every other backend is tested against.
// Each op is one call into ops/ops.h (OpenMP + OpenBLAS, fixed reduction orders).
#pragma once
#include <memory>
#include <optional>
#include <vector>

#include "titan/ops/backend.h"
#include "titan/ops/ops.h"

namespace titan::cpu {

class CpuBackend final : public Backend {
 public:
  CpuBackend();
  std::string description() const override;
  DType compute_dtype() const override { return DType::f32; }
  Buffer allocate(size_t bytes) override;
  size_t live_bytes() const override;
  void prepare(const PassDims& dims) override;
  void upload_f32(float* dst, const float* src, int64_t count) override;

  void load_batch(const int32_t* tokens, const int32_t* labels, int64_t n, int64_t vocab, int32_t ignore_index, bool backward_follows) override;
  void embedding_forward(const void* w, void* out, int64_t n, int64_t d, int64_t vocab_begin, int64_t vocab) override;
  void embedding_backward(const void* dout, float* dw, int64_t n, int64_t d, int64_t vocab_begin, int64_t vocab) override;
  void set_float8_recipe(const float8::Recipe& recipe) override { float8_ = recipe; }
  void linear_forward(const void* x, const LinearWeight& w, void* y, int64_t n, int64_t in, int64_t out,
                      LinearPrecision precision) override;
  void linear_backward(const void* x, const LinearWeight& w, const void* dy, void* dx, float* dw, int64_t n, int64_t in,
                       int64_t out, float dx_beta, LinearPrecision precision) override;
  void rmsnorm_forward(const void* x, const void* w, void* y, float* rstd, int64_t n, int64_t d, float eps) override;
  void add_rmsnorm_forward(const void* x, const void* r, void* h, const void* w, void* y, float* rstd, int64_t n,
                           int64_t d, float eps) override;
  void rmsnorm_backward(const void* x, const void* w, const float* rstd, const void* dy, void* dx, bool accumulate,
                        float* dw, int64_t n, int64_t d) override;
  void rope(void* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
            bool inverse) override;
  void attention_forward(const void* q, const void* k, const void* v, void* o, float* lse,
                         const AttentionDims& s) override;
  void attention_backward(const void* q, const void* k, const void* v, const void* o, const float* lse,
                          const void* dout, void* dq, void* dk, void* dv, const AttentionDims& s) override;
  void attention_decode(const void* q, const void* k_cache, const void* v_cache, void* o, int64_t positions,
                        int64_t heads, int64_t kv_heads, int64_t head_dim) override;
  void swiglu_forward(const void* a, const void* b, void* g, int64_t count) override;
  void swiglu_backward(const void* a, const void* b, const void* dg, void* da, void* db, int64_t count) override;
  void add(const void* a, const void* b, void* y, int64_t count) override;
  void copy(void* dst, const void* src, int64_t count) override;
  void classifier(const void* h, const void* w, void* dh, float* dw, int64_t n, int64_t d, int64_t vocab,
                  int32_t ignore_index, float grad_scale) override;
  void classifier_vocab_shard(const void* h, const void* w, void* dh, float* dw, int64_t n, int64_t d, int64_t vocab,
                              int64_t vocab_begin, int64_t vocab_total, int32_t ignore_index, float grad_scale,
                              VocabShards& shards, bool loss_parallel) override;
  double loss_sum() override { return last_.loss_sum; }
  void logits(const void* h, const void* w, float* host_logits, int64_t n, int64_t d, int64_t vocab) override;

 private:
  std::shared_ptr<size_t> live_;  // bytes of allocate()'s buffers still alive
  PassDims prepared_{};
  Buffer classifier_scratch_;  // one chunk of fp32 logits
  Buffer dnorm_;               // RMSNorm's input gradient before it joins the residual stream
  std::vector<int32_t> tokens_, labels_;
  int64_t vocab_ = 0;  // the whole vocabulary the batch's ids were checked against
  // float8 emulation: the recipe, and room for the dequantised operands of the largest linear.
  std::optional<float8::Recipe> float8_;
  Buffer float8_scratch_;
  float* float8_operands(int64_t floats);
  const float* float8_weight(const LinearWeight& w, int64_t out, int64_t in, const float8::Cast& cast, float8::Axis axis,
                             float* scratch);
  ClassifierResult last_;
};

// Bytes CpuBackend::prepare keeps for passes of these dimensions (float8 emulation included).
double cpu_backend_scratch_bytes(const PassDims& dims);

}  // namespace titan::cpu

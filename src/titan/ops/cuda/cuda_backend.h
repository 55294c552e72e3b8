// The CUDA backend: the ops of ops/backend.h on one device, queued on one stream, in bf16
// mixed precision (bf16 activations and compute weights, fp32 statistics, fp32 weight
// gradients), through titan's kernels (ops/cuda/cuda_ops.h), cuBLASLt and, where asked,
// cuDNN's attention. Nothing synchronises unless its comment says so. Every kernel is tested
// against the CPU backend (tests/gpu).
#pragma once
#include <cuda_runtime.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "titan/ops/attention_library.h"
#include "titan/ops/backend.h"
#include "titan/ops/classifier_plan.h"
#include "titan/ops/cuda/allocator.h"
#include "titan/ops/cuda/cudnn_attention.h"
#include "titan/ops/cuda/gemm.h"
#include "titan/ops/cuda/phase_timer.h"
#include "titan/ops/embedding_index.h"

namespace titan::cuda {

class CudaBackend final : public Backend {
 public:
  // On the current device. `fused`: the residual add fused into the next RMSNorm (training.compile).
  explicit CudaBackend(AttentionLibrary attention = AttentionLibrary::titan, bool fused = true);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string description() const override;
  DType compute_dtype() const override { return DType::bf16; }
  Buffer allocate(size_t bytes) override;
  size_t live_bytes() const override;
  void prepare(const PassDims& dims) override;
  void upload_f32(float* dst, const float* src, int64_t count) override;  // synchronises

  void load_batch(const int32_t* tokens, const int32_t* labels, int64_t n, int64_t vocab, int32_t ignore_index,
                  bool backward_follows) override;  // synchronises
  void embedding_forward(const void* w, void* out, int64_t n, int64_t d, int64_t vocab_begin, int64_t vocab) override;
  void embedding_backward(const void* dout, float* dw, int64_t n, int64_t d, int64_t vocab_begin, int64_t vocab) override;
  void set_float8_recipe(const float8::Recipe& recipe) override;
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
  double loss_sum() override;  // synchronises
  void logits(const void* h, const void* w, float* host_logits, int64_t n, int64_t d, int64_t vocab) override;

  // For the executor (train/): the stream, the loss sum and squared gradient norm on the
  // device (sums()[0], sums()[1]), the reduction scratch, and whether weight-gradient GEMMs
  // write (the fused step: every weight's gradient is written once) or add.
  cudaStream_t stream() const { return stream_; }
  DeviceAllocator& allocator() { return alloc_; }
  double* sums() const { return sums_.as<double>(); }
  double* reduce_scratch() const { return reduce_scratch_.as<double>(); }
  void set_overwrite_grads(bool overwrite) { overwrite_grads_ = overwrite; }
  void synchronize();
  // Device time per phase from events around every op; the executor closes each step.
  void enable_phase_timing();
  PhaseTimer* phase_timer() { return phases_.get(); }
  const PhaseTimer* phase_timer() const { return phases_.get(); }
  // Passes outside the timed steps (validation) leave the phase times alone.
  void pause_phase_timing(bool paused) { phases_paused_ = paused; }
  void mark(Phase p) {
    if (phases_ && !phases_paused_) phases_->mark(p);
  }
  const AllocatorStats& memory_stats() const { return alloc_.stats(); }
  const cuda::CudnnAttention* cudnn_attention() const { return cudnn_.get(); }

 private:
  float grad_beta() const { return overwrite_grads_ ? 0.0f : 1.0f; }
  DeviceBuffer scratch(size_t bytes);
  // One float8 operand of rows x cols (bf16, or the fp32 master where given): amax, scales and
  // the cast into `out` and/or its transpose, scales in slot 0 or 1 of the scale scratch.
  Gemm::Float8Operand cast_float8(const void* src, const float* src_f32, int64_t rows, int64_t cols,
                                  const float8::Cast& cast, float8::Axis axis, int slot, uint8_t* out, uint8_t* out_t,
                                  bool transposed_scales);
  void match_scale_modes(Gemm::Float8Operand& a, int64_t a_rows, Gemm::Float8Operand& b, int64_t b_rows);
  Gemm::Float8Operand gathered_float8_weight(const LinearWeight& lw, int64_t rows = 0, int64_t cols = 0);
  void classifier_gathered_logits(const void* h, const void* w, void* dh, float* dw, int64_t n, int64_t d, int64_t vocab,
                                  int64_t vocab_begin, int32_t ignore_index, float grad_scale, VocabShards& shards);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  DeviceAllocator alloc_;
  std::shared_ptr<size_t> live_;
  std::unique_ptr<Gemm> gemm_;
  std::unique_ptr<CudnnAttention> cudnn_;
  std::string cudnn_unused_;
  bool fused_ = true, overwrite_grads_ = false, phases_paused_ = false;
  std::unique_ptr<PhaseTimer> phases_;
  ClassifierBudget budget_;
  PassDims prepared_{};
  int64_t classifier_rows_ = 0, gathered_rows_ = 0;
  size_t scratch_bytes_ = 0;
  DeviceBuffer delta_, norm_partial_, logits_, row_loss_, reduce_scratch_, sums_;
  DeviceBuffer tokens_, labels_, embed_ids_, embed_offsets_, embed_positions_;
  std::optional<float8::Recipe> float8_;
  DeviceBuffer fp8_input_, fp8_grad_, fp8_grad_t_, fp8_weight_, fp8_scales_;
  // Tensor parallel's classifier: the row statistics and log-sum-exp (loss parallel), or the
  // gathered and the rearranged logits (without it).
  DeviceBuffer tp_first_, tp_second_;
  EmbeddingIndex embed_index_;
  std::vector<int32_t> embed_counts_;
  int64_t embed_groups_ = 0;
};

}  // namespace titan::cuda

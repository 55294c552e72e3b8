// The Llama 3 transformer on one CUDA device in bf16 mixed precision (torchtitan's FSDP
// policy: bf16 compute weights and activations, fp32 master weights, gradients and AdamW
// moments). The host Transformer stays the owner of parameters for init and checkpoints;
// this class mirrors them on the device in flat buffers (one fp32 buffer each for weights,
// gradients and the two moments, one bf16 buffer of compute weights) and plans every
// activation once per batch shape, so nothing is allocated inside a step.
#pragma once
#include <cuda_runtime.h>

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "titan/core/parameter.h"
#include "titan/core/reshard_policy.h"
#include "titan/core/trace.h"
#include "titan/ops/classifier_plan.h"
#include "titan/models/llama3/model_args.h"
#include "titan/models/llama3/activation_plan.h"
#include "titan/ops/cuda/allocator.h"
#include "titan/ops/cuda/collectives.h"
#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/cuda/cudnn_attention.h"
#include "titan/ops/cuda/gemm.h"
#include "titan/ops/cuda/phase_timer.h"
#include "titan/ops/embedding_index.h"
#include "titan/ops/ops.h"

namespace titan::llama3 {

class CudaTransformer {
 public:
  // Parameters in the host Transformer's order (tok_embeddings, layers..., norm, output).
  // With `fsdp` the host parameters are shards of fsdp->rank() of fsdp->size() and so are the
  // device's fp32 state and bf16 weights (each padded to ceil(rows / size) rows); a unit's
  // whole bf16 weights (the root: embedding, norm, output; or one block) are all-gathered
  // before it runs and freed after (after forward as `policy` says, and after backward), and
  // its fp32 gradients live from its backward until the next unit's backward has run beside
  // its reduce-scatter, whose result is added into the gradient shards. Steps run eagerly (no CUDA graph); waits go through
  // fsdp->synchronize, so a dead peer ends the rank after the timeout.
  // `attention`: titan's kernels (the default: no atomics, so reruns are bit-identical), or
  // cuDNN's for the shapes it takes (AttentionLibrary in ops/attention_library.h).
  CudaTransformer(const ModelArgs& args, const std::deque<Parameter>& params,
                  cuda::DeviceCollectives* fsdp = nullptr, ReshardPolicy policy = {},
                  AttentionLibrary attention = AttentionLibrary::titan);
  ~CudaTransformer();
  CudaTransformer(const CudaTransformer&) = delete;
  CudaTransformer& operator=(const CudaTransformer&) = delete;

  // Host master weights and AdamW moments to the device (and the bf16 copy), and back.
  void upload(const std::deque<Parameter>& params);
  void download(std::deque<Parameter>& params);

  void plan(BatchShape s);
  void zero_grad();
  // As Transformer::forward_backward; tokens and labels are host arrays of s.rows().
  cpu::ClassifierResult forward_backward(const int32_t* tokens, const int32_t* labels, BatchShape s,
                                         float grad_scale, int32_t ignore_index = -100, Tracer* tracer = nullptr);
  cpu::ClassifierResult forward_loss(const int32_t* tokens, const int32_t* labels, BatchShape s,
                                     int32_t ignore_index = -100);
  // Forward to logits [rows, vocab] on the host (tests; computed in bf16 as in training).
  void forward_logits(const int32_t* tokens, BatchShape s, float* logits);
  // Sum of squares of all gradients (synchronises).
  double grad_sq_sum();
  void adamw(const cuda::AdamWStep& step);

  // Smaller classifier chunks than the default (tests: several chunks on a small batch); the
  // next pass plans its buffers anew.
  void set_classifier_budget(ClassifierBudget b) {
    classifier_budget_ = b;
    planned_ = {};
  }
  // training.compile: the residual add fused into the next RMSNorm (else one op per kernel).
  void set_fused_kernels(bool fused) { fused_ = fused; }
  struct StepResult {
    double loss_sum = 0;
    int64_t count = 0;
    double grad_sq_sum = 0;
  };
  // One whole optimizer step: zero grads, forward, loss, backward, grad norm, clipping to
  // max_norm (0 = none) and AdamW with `step`'s factors, skipped on the device when the loss or
  // the norm is not finite. With use_graph the step is captured as a CUDA graph on the first
  // call for a batch shape (that call runs eagerly) and replayed afterwards; a replay returns as
  // soon as the loss and norm are known, with AdamW still running on the model's stream (all
  // later work of this model, uploads and downloads included, is ordered after it).
  StepResult fused_step(const int32_t* tokens, const int32_t* labels, BatchShape s, float grad_scale,
                        const cuda::AdamWStep& step, double max_norm, bool use_graph, int32_t ignore_index = -100);
  // Copies of the fp32 gradient of one parameter (this rank's rows under FSDP; tests).
  std::vector<float> gradient(size_t param_index);
  bool sharded() const { return fsdp_ != nullptr; }
  // Which attention runs (TITAN_ATTENTION_IMPL), for the run's device line.
  std::string attention_description() const;
  // cuDNN's attention when TITAN_ATTENTION_IMPL brought it in (null otherwise; tests).
  const cuda::CudnnAttention* cudnn_attention() const { return cudnn_attention_.get(); }
  // Bytes of gathered weights and whole gradients held at most at once (FSDP).
  size_t peak_unsharded_bytes() const { return peak_unsharded_; }
  // Bytes this rank's collectives moved since the last call, counted as a ring moves them:
  // (size - 1) shards per all-gather or reduce-scatter.
  double take_comm_bytes();

  const cuda::AllocatorStats& memory_stats() const { return alloc_.stats(); }
  // Device time per phase from events around every op (costs a little launch time); the
  // totals cover the steps since enabling, each step closed by adamw().
  void enable_phase_timing();
  const cuda::PhaseTimer* phase_timer() const { return phases_.get(); }
  void synchronize();

 private:
  struct LayerWeights {
    size_t wq, wk, wv, wo, w1, w2, w3, attention_norm, ffn_norm;  // parameter indices
  };
  struct LayerActivations {
    cuda::DeviceBuffer xn, h, hn, q, k, v, att, a1, a3, g;  // bf16
    cuda::DeviceBuffer rstd1, rstd2, lse;                   // fp32
  };
  cuda::bf16* w(size_t i) const;   // bf16 compute weight of parameter i
  float* dw(size_t i) const;       // fp32 gradient of parameter i
  void upload_batch(const int32_t* tokens, const int32_t* labels, int64_t n, bool with_index);
  void start_pass(const int32_t* tokens, const int32_t* labels, BatchShape s, int32_t ignore_index, bool with_index);
  // The fused step in two parts, so the host can take the loss and grad norm between them.
  void enqueue_gradients(BatchShape s, float grad_scale, int32_t ignore_index);  // zero grads .. grad norm
  void enqueue_update(double max_norm);                                           // clipping + AdamW
  void send_sums();  // loss and squared grad norm to host_sums_, then sums_ready_
  cudaGraphExec_t capture(const std::function<void()>& enqueue);
  void enqueue_backward(BatchShape s);
  void drop_graph();
  void forward_hidden(BatchShape s, Tracer* tracer, bool backward_follows);
  // FSDP's steps for unit u (0 = root, 1 + l = layers.l); no-ops without FSDP. Collectives run
  // on comm_, so gathering the next unit overlaps this one's compute: gather() issues, use()
  // makes the compute stream wait for it; a reduce-scatter overlaps the next unit's backward,
  // and its gradient buffer is freed (retire_reduced) only once the compute stream has waited
  // for it. Memory: the root and two blocks gathered, two blocks' whole gradients.
  void gather(size_t u);
  void use(size_t u);
  void reshard(size_t u);
  void begin_unit_grads(size_t u);
  void reduce_unit_grads(size_t u);
  void retire_reduced();
  void comm_after_compute();
  void compute_after_comm();
  void track_unsharded(size_t bytes, bool allocated);
  // Frees every unit's gathered weights and gradients (a step that threw left some behind).
  void release_units();
  void block_forward(size_t layer, BatchShape s);
  void block_backward(size_t layer, BatchShape s);
  // Output projection + cross-entropy over groups of rows (classifier_plan.h; with grads also
  // d_hidden_ and dW); the loss sum is left on the device for read_loss_sum.
  void classifier(int64_t n, int32_t ignore_index, float grad_scale, bool with_grads);
  double read_loss_sum();  // waits for the step's work
  void at(cuda::Phase p) {
    if (phases_) phases_->mark(p);
  }
  // beta of the weight-gradient GEMMs: 0 inside the fused step (the first and only write), else
  // 1 (gradients accumulate over micro-batches from zero_grad's zeros).
  float grad_beta() const { return overwrite_grads_ ? 0.0f : 1.0f; }
  void linear(const cuda::bf16* x, size_t weight, cuda::bf16* y, int64_t n);
  void linear_backward(const cuda::bf16* x, size_t weight, const cuda::bf16* dy, cuda::bf16* dx, int64_t n,
                       float dx_beta);

  ModelArgs args_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cuda::DeviceAllocator alloc_;
  std::unique_ptr<cuda::Gemm> gemm_;
  std::unique_ptr<cuda::CudnnAttention> cudnn_attention_;  // only under TITAN_ATTENTION_IMPL=cudnn or auto
  std::string cudnn_unused_;  // auto, without cuDNN: why
  // Per parameter: offset in the flat (shard) buffers, whole size, rows, cols, this rank's
  // elements, padded shard elements; its unit and offset in that unit's gathered buffer.
  std::vector<int64_t> offset_, numel_, out_, in_, local_, shard_, unit_offset_;
  std::vector<size_t> unit_of_;
  int64_t total_ = 0;
  std::vector<std::pair<int64_t, int64_t>> accumulated_grads_;  // [begin, end) of grad_ the fused step clears
  bool overwrite_grads_ = false;                                // inside enqueue_gradients
  cuda::DeviceCollectives* fsdp_ = nullptr;
  ReshardPolicy policy_;
  double comm_bytes_ = 0;
  std::vector<std::vector<size_t>> unit_params_;
  std::vector<int64_t> unit_elems_;
  std::vector<cuda::DeviceBuffer> gathered_, unit_grads_;  // per unit, only while needed
  cudaStream_t comm_ = nullptr;                            // FSDP's collectives
  cudaEvent_t compute_mark_ = nullptr, comm_mark_ = nullptr;
  std::vector<cudaEvent_t> gathered_event_, reduced_event_;  // per unit
  std::vector<bool> awaiting_;                             // gathered on comm_, not yet waited for by stream_
  std::vector<size_t> reducing_;                           // units whose reduce-scatter may still read their grads
  cuda::DeviceBuffer reduced_;  // one unit's reduce-scatter results
  std::vector<int64_t> reduced_offset_;  // per parameter, within reduced_
  size_t unsharded_ = 0, peak_unsharded_ = 0;
  cuda::DeviceBuffer master_, grad_, exp_avg_, exp_avg_sq_, weights_;
  std::vector<LayerWeights> layers_;
  size_t embedding_ = 0, norm_ = 0, output_ = 0;

  BatchShape planned_{};
  ClassifierBudget classifier_budget_;
  int64_t classifier_rows_ = 0;
  std::vector<cuda::DeviceBuffer> residual_;
  std::vector<LayerActivations> saved_;
  cuda::DeviceBuffer final_out_, final_rstd_, d_hidden_, d_resid_, dxn_, proj_, d_att_, dq_, dk_, dv_, dg_, da1_, da3_;
  cuda::DeviceBuffer delta_, norm_partial_, logits_, row_loss_, reduce_scratch_, sums_;  // logits_: bf16, then their gradient
  cuda::DeviceBuffer tokens_, labels_, embed_ids_, embed_offsets_, embed_positions_, rope_cos_, rope_sin_;
  int64_t embed_unique_ = 0;
  EmbeddingIndex embed_index_;
  std::vector<int32_t> embed_counts_;
  std::unique_ptr<cuda::PhaseTimer> phases_;
  bool fused_ = true;
  cuda::DeviceBuffer step_factors_;  // AdamWStep on the device, written before each graph launch
  struct GraphKey {  // what a captured step bakes in besides pointers
    BatchShape shape;
    float grad_scale = 0;
    double max_norm = 0;
    int32_t ignore_index = 0;
    bool operator==(const GraphKey&) const = default;
  };
  cudaGraphExec_t gradients_graph_ = nullptr, update_graph_ = nullptr;
  GraphKey graph_key_{};
  // The fused step's loss and squared grad norm, copied to pinned memory between the two parts;
  // sums_ready_ marks their arrival, so a replayed step returns while AdamW finishes it.
  struct PinnedFree {
    void operator()(double* p) const { cudaFreeHost(p); }
  };
  struct EventDestroy {
    void operator()(cudaEvent_t e) const { cudaEventDestroy(e); }
  };
  std::unique_ptr<double, PinnedFree> host_sums_;
  std::unique_ptr<CUevent_st, EventDestroy> sums_ready_;
};

}  // namespace titan::llama3

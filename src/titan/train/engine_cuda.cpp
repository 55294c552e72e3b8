// The CUDA engine: the model on one GPU in bf16 mixed precision.
#include <cmath>
#include <cstdio>

#include "titan/metrics/flops.h"
#include "titan/models/llama3/cuda_transformer.h"
#include "titan/ops/cuda/cuda_check.h"
#include "titan/parallel/launch_env.h"
#include "titan/train/engine.h"

namespace titan::train {

namespace {
class CudaEngine final : public Engine {
 public:
  CudaEngine(llama3::Transformer& model, optim::AdamW& optimizer, int device, bool compile, bool phase_times,
             cuda::DeviceCollectives* fsdp, ReshardPolicy policy, AttentionLibrary attention)
      : host_(model), optimizer_(optimizer), device_(device), compile_(compile), phase_times_(phase_times) {
    TITAN_CUDA_CHECK(cudaSetDevice(device_));
    model_ = std::make_unique<llama3::CudaTransformer>(model.args(), model.parameters(), fsdp, policy, attention);
    model_->set_fused_kernels(compile_);
  }
  std::string description() const override {
    return concat("cuda:", device_, " (", cuda::device_name(device_),
                  "), bfloat16 compute, float32 master weights, gradients and optimizer state, ",
                  compile_ ? (phase_times_ ? "compile: fused kernels (no CUDA graph while profiling.phase_times is on)"
                              : model_->sharded() ? "compile: fused kernels (no CUDA graph under FSDP yet)"
                                                  : "compile: fused kernels + CUDA graphs of the step")
                           : "one op per kernel",
                  ", ", model_->attention_description(), model_->sharded() ? ", FSDP over NCCL" : "");
  }
  bool fused_step(const int32_t* tokens, const int32_t* labels, llama3::BatchShape s, float grad_scale, double lr,
                  double max_norm, StepOutcome& out) override {
    if (!compile_ || model_->sharded()) return false;
    const optim::AdamWFactors f = optimizer_.advance(lr);
    llama3::CudaTransformer::StepResult r;
    try {
      r = model_->fused_step(tokens, labels, s, grad_scale,
                             {f.decay, f.beta1, f.beta2, f.eps, f.step_size, f.bias_correction2_sqrt, 1.0f}, max_norm,
                             !phase_times_);
    } catch (...) {
      // Only validation of the batch runs before the first update; a failed capture after the
      // eager step leaves a count one short, and the run ends with the error anyway.
      optimizer_.set_steps_taken(optimizer_.steps_taken() - 1);
      throw;
    }
    out = {r.loss_sum, r.count, std::sqrt(r.grad_sq_sum)};
    if (!std::isfinite(r.loss_sum) || !std::isfinite(out.grad_norm))
      optimizer_.set_steps_taken(optimizer_.steps_taken() - 1);  // the device skipped the update
    if (++updates_ == 2 && phase_times_) model_->enable_phase_timing();
    return true;
  }
  bool on_cpu() const override { return false; }
  double peak_flops() const override { return metrics::peak_bf16_flops(cuda::device_name(device_)); }
  void zero_grad() override { model_->zero_grad(); }
  cpu::ClassifierResult forward_backward(const int32_t* tokens, const int32_t* labels, llama3::BatchShape s,
                                         float grad_scale, Tracer* tracer) override {
    return model_->forward_backward(tokens, labels, s, grad_scale, -100, tracer);
  }
  cpu::ClassifierResult forward_loss(const int32_t* tokens, const int32_t* labels, llama3::BatchShape s) override {
    return model_->forward_loss(tokens, labels, s);
  }
  double grad_sq_sum() override { return model_->grad_sq_sum(); }
  void update(double grad_norm, double max_norm, double lr) override {
    const optim::AdamWFactors f = optimizer_.advance(lr);
    // torch's clip_grad_norm_ rule, as optim::clip_grads applies it on the CPU.
    const float coef = max_norm > 0 && grad_norm > max_norm ? static_cast<float>(max_norm / (grad_norm + 1e-6)) : 1.0f;
    model_->adamw({f.decay, f.beta1, f.beta2, f.eps, f.step_size, f.bias_correction2_sqrt, coef});
    // Phase timing starts after two steps, so one-time work (cuBLASLt plans, module loads) stays out.
    if (++updates_ == 2 && phase_times_) model_->enable_phase_timing();
  }
  std::string phase_report() const override { return format_phase_report(model_->phase_timer()); }
  double take_comm_bytes() override { return model_->take_comm_bytes(); }
  size_t peak_unsharded_bytes() const override { return model_->peak_unsharded_bytes(); }
  void to_host() override { model_->download(host_.parameters()); }
  void from_host() override { model_->upload(host_.parameters()); }
  metrics::MemorySample memory() const override { return device_memory_sample(model_->memory_stats()); }

 private:
  llama3::Transformer& host_;
  optim::AdamW& optimizer_;
  int device_;
  bool compile_, phase_times_;
  int64_t updates_ = 0;
  std::unique_ptr<llama3::CudaTransformer> model_;
};
}  // namespace

std::string format_phase_report(const cuda::PhaseTimer* t) {
  if (!t || t->steps() == 0) return "";
  const double steps = static_cast<double>(t->steps()), span = t->span_ms() / steps;
  std::string out = concat("gpu phases (device events, mean of ", t->steps(), " steps after the first two): ", span,
                           " ms per step from first to last op\n");
  for (size_t i = 0; i < t->totals_ms().size(); ++i) {
    const double ms = t->totals_ms()[i] / steps;
    char line[160];
    std::snprintf(line, sizeof line, "  %-36s %9.3f ms  %5.1f%%\n", cuda::phase_name(static_cast<cuda::Phase>(i)), ms,
                  100.0 * ms / span);
    out += line;
  }
  return out;
}

metrics::MemorySample device_memory_sample(const cuda::AllocatorStats& st) {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  metrics::MemorySample m;
  m.active_gib = static_cast<double>(st.peak_active) / kGiB;
  m.reserved_gib = static_cast<double>(st.peak_reserved) / kGiB;
  m.total_gib = static_cast<double>(cuda::device_total_memory()) / kGiB;
  m.alloc_retries = st.alloc_retries;
  m.ooms = st.ooms;
  return m;
}

int select_cuda_device() {
  const int local = parallel::detect_launch().local_rank, count = cuda::device_count();
  // One visible device: the launcher bound this rank to its GPU (CUDA_VISIBLE_DEVICES per task).
  const int device = count == 1 ? 0 : local;
  if (device >= count)
    throw UserError(concat("this rank's local rank is ", local, ", but only ", count,
                           " CUDA devices are visible (one GPU per rank on each node)"));
  TITAN_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

std::unique_ptr<Engine> make_cuda_engine(const config::RunPlan& plan, llama3::Transformer& model,
                                         optim::AdamW& optimizer, cuda::DeviceCollectives* fsdp,
                                         cuda::DeviceCollectives* replicas, cuda::DeviceCollectives* tensor_parallel) {
  check_cuda_config(plan, model.args());  // resolve_device has run these checks; cheap to repeat
  if (plan.cuda_model == config::RunPlan::CudaModel::model)
    return make_cuda_model_engine(plan, model, optimizer, select_cuda_device(), fsdp, replicas, tensor_parallel);
  TITAN_CHECK(replicas == nullptr && tensor_parallel == nullptr,
              "replicas or tensor parallel on the legacy CUDA model (refused before it is made)");
  return std::make_unique<CudaEngine>(model, optimizer, select_cuda_device(), plan.compile, plan.phase_times, fsdp,
                                      plan.reshard, plan.attention);
}

}  // namespace titan::train

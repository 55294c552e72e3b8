#include "titan/train/engine.h"

#include <omp.h>

#include "titan/ops/attention_head_dims.h"
#include "titan/ops/cpu/blas_kernels.h"
#include "titan/optim/grad_clip.h"
#ifdef TITAN_WITH_CUDA
#include "titan/ops/cuda/cuda_ops.h"
#endif

namespace titan::train {

namespace {
class CpuEngine final : public Engine {
 public:
  CpuEngine(llama3::Transformer& model, optim::AdamW& optimizer) : model_(model), optimizer_(optimizer) {}
  std::string description() const override {
    return concat("cpu, float32, ", omp_get_max_threads(), " threads, ", cpu::blas_kernels_description());
  }
  bool on_cpu() const override { return true; }
  double peak_flops() const override { return 0; }
  void zero_grad() override { model_.zero_grad(); }
  cpu::ClassifierResult forward_backward(const int32_t* tokens, const int32_t* labels, llama3::BatchShape s,
                                         float grad_scale, Tracer* tracer) override {
    return model_.forward_backward(tokens, labels, s, grad_scale, -100, tracer);
  }
  cpu::ClassifierResult forward_loss(const int32_t* tokens, const int32_t* labels, llama3::BatchShape s) override {
    return model_.forward_loss(tokens, labels, s);
  }
  double grad_sq_sum() override { return optim::grad_sq_sum(model_.parameters()); }
  void update(double grad_norm, double max_norm, double lr) override {
    if (max_norm > 0) optim::clip_grads(model_.parameters(), grad_norm, max_norm);
    optimizer_.step(model_.parameters(), lr);
  }
  void to_host() override {}
  void from_host() override {}
  metrics::MemorySample memory() const override { return metrics::sample_host_memory(); }

 private:
  llama3::Transformer& model_;
  optim::AdamW& optimizer_;
};
}  // namespace

void check_cuda_config(const config::RunPlan& plan, const llama3::ModelArgs& args) {
  if (!plan.bf16_params)
    throw UserError(concat(plan.origin("training.mixed_precision_param"),
                           ": the CUDA backend computes in bfloat16 only (float32 runs on training.device = \"cpu\")"));
  if (plan.ac.mode != llama3::ActivationCheckpointing::Mode::none && plan.cuda_model == config::RunPlan::CudaModel::legacy)
    throw UserError(concat(plan.origin("activation_checkpoint.mode"),
                           ": activation checkpointing is not built for the legacy CUDA model (set training.cuda_model = "
                           "\"model\", the one model, which recomputes on the GPU too; or mode = \"none\", or "
                           "training.device = \"cpu\")"));
  if (plan.float8.enabled && plan.cuda_model == config::RunPlan::CudaModel::legacy)
    throw UserError(concat(plan.origin("float8.enable_float8_linear"),
                           ": float8 linears are not built for the legacy CUDA model: set training.cuda_model = \"model\" "
                           "(the one model, whose CUDA backend has the FP8 GEMMs), or training.device = \"cpu\" to emulate them"));
  if (args.tie_word_embeddings && plan.cuda_model == config::RunPlan::CudaModel::legacy)
    throw UserError(concat(plan.origin("model.flavor"), ": tied embeddings are not built for the legacy CUDA model: set "
                           "training.cuda_model = \"model\" (the one model, not yet run on a card) or train on the CPU"));
  if (plan.tensor_parallel_degree > 1 && plan.cuda_model == config::RunPlan::CudaModel::legacy)
    throw UserError(concat(plan.origin("training.tensor_parallel_degree"),
                           ": tensor parallel is not built for the legacy CUDA model: set training.cuda_model = "
                           "\"model\" (the one model, whose CUDA backend has the tensor-parallel classifier and "
                           "embedding), or train on the CPU"));
  if (plan.float8.enabled && plan.micro_batch.rows() % 16 != 0)
    throw UserError(concat(plan.origin("training.batch_size"), ": float8 on the GPU needs training.batch_size x seq_len (",
                           plan.micro_batch.batch, " x ", plan.micro_batch.seq, ") to be a multiple of 16: it is the "
                           "inner dimension of the weight-gradient GEMM, and FP8 GEMMs take multiples of 16 only"));
  if (plan.float8.enabled && plan.float8.emulate)
    throw UserError(concat(plan.origin("float8.emulate"),
                           ": float8.emulate = true: the emulation runs on the CPU backend (training.device = \"cpu\"); "
                           "the GPU runs the FP8 GEMMs"));
  const int64_t hd = args.head_dim();
  if (!cuda_attention_head_dim_supported(hd))
    throw UserError(concat(plan.origin("model.flavor"), ": head_dim ", hd,
                           " is not supported by the CUDA attention kernels (16, 32, 64 or 128)"));
}

bool resolve_device(const config::RunPlan& plan, const llama3::ModelArgs& args) {
  using Device = config::RunPlan::Device;
#ifdef TITAN_WITH_CUDA
  const bool gpu = cuda::device_count() > 0;
  if (plan.device == Device::cuda && !gpu)
    throw UserError(concat(plan.origin("training.device"),
                           ": training.device = \"cuda\", but no CUDA device is visible (check the driver and "
                           "CUDA_VISIBLE_DEVICES, or set training.device = \"cpu\")"));
  const bool on_cuda = plan.device == Device::cuda || (plan.device == Device::automatic && gpu);
#else
  if (plan.device == Device::cuda)
    throw UserError(concat(plan.origin("training.device"),
                           ": training.device = \"cuda\", but this titan was built without CUDA "
                           "(build it with `cmake --preset cuda`, or set training.device = \"cpu\")"));
  const bool on_cuda = false;
#endif
  if (on_cuda) check_cuda_config(plan, args);
  return on_cuda;
}

bool prefers_cuda(const config::RunPlan& plan) {
  using Device = config::RunPlan::Device;
#ifdef TITAN_WITH_CUDA
  return plan.device == Device::cuda || (plan.device == Device::automatic && cuda::device_count() > 0);
#else
  return plan.device == Device::cuda;
#endif
}

double device_memory_bytes(bool on_cuda) {
#ifdef TITAN_WITH_CUDA
  if (on_cuda && cuda::device_count() > 0) return static_cast<double>(cuda::device_total_memory());
#endif
  (void)on_cuda;
  return metrics::sample_host_memory().total_gib * 1024.0 * 1024.0 * 1024.0;
}

std::unique_ptr<Engine> make_engine(const config::RunPlan& plan, llama3::Transformer& model, optim::AdamW& optimizer,
                                    cuda::DeviceCollectives* fsdp, cuda::DeviceCollectives* replicas,
                                    cuda::DeviceCollectives* tensor_parallel) {
#ifdef TITAN_WITH_CUDA
  if (resolve_device(plan, model.args()))
    return make_cuda_engine(plan, model, optimizer, fsdp, replicas, tensor_parallel);
#else
  resolve_device(plan, model.args());
#endif
  TITAN_CHECK(fsdp == nullptr && replicas == nullptr && tensor_parallel == nullptr, "device collectives for the CPU engine");
  return std::make_unique<CpuEngine>(model, optimizer);
}

}  // namespace titan::train

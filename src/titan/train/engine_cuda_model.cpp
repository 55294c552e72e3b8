// The one Llama 3 model (models/llama3/model.h) on one GPU: the CUDA backend, the device
// parameter store, and the step executor, which runs a step eagerly or replays it as captured
// CUDA graphs. Selected by training.cuda_model = "model"; the legacy CudaTransformer stays the
// default until the GPU-switch issue proves this path on a card.
#include <algorithm>
#include <cmath>
#include <functional>

#include "titan/metrics/flops.h"
#include "titan/models/llama3/model.h"
#include "titan/ops/cuda/cuda_backend.h"
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/device_parameters.h"
#include "titan/ops/cuda/host_plan.h"
#include "titan/parallel/device_tensor_parallel.h"
#include "titan/parallel/device_unit_store.h"
#include "titan/parallel/fsdp.h"
#include "titan/train/engine.h"
#include "titan/train/memory_estimate.h"

namespace titan::train {

namespace {
std::vector<bool> summed_gradients(const llama3::ModelLayout& layout) {
  std::vector<bool> out;
  for (const auto& t : layout.tensors()) out.push_back(t.summed_gradient);
  return out;
}

cuda::AdamWStep adamw_step(const optim::AdamWFactors& f, float grad_coef) {
  return {f.decay, f.beta1, f.beta2, f.eps, f.step_size, f.bias_correction2_sqrt, grad_coef};
}

class CudaModelEngine final : public Engine {
 public:
  // With `fsdp` the host parameters are shards of fsdp->rank() of fsdp->size(); FSDP's policy
  // (parallel/fsdp.h) drives the device unit store through the model's unit hooks. With
  // `tensor_parallel` they are that group's rank's slices (the host model's layout says which),
  // and the model's tensor-parallel hooks run over it.
  CudaModelEngine(llama3::Transformer& host, optim::AdamW& optimizer, int device, bool compile, bool phase_times,
                  AttentionLibrary attention, cuda::DeviceCollectives* fsdp, ReshardPolicy policy,
                  cuda::DeviceCollectives* replicas, cuda::DeviceCollectives* tensor_parallel, bool loss_parallel)
      : host_(host),
        optimizer_(optimizer),
        device_(device),
        compile_(compile),
        mode_(cuda::step_mode(compile, phase_times, &mode_why_)),
        phase_times_(phase_times),
        backend_(attention, compile),
        params_(host.parameters(), summed_gradients(host.layout()), backend_.allocator(), backend_.stream(),
                fsdp != nullptr),
        units_(fsdp ? std::make_unique<parallel::DeviceUnitStore>(host.layout().unit_tensors(), params_, *fsdp, backend_)
                    : nullptr),
        fsdp_(units_ ? std::make_unique<parallel::FullyShardedDataParallel>(*units_, policy, true) : nullptr),
        tp_collectives_(tensor_parallel),
        tp_(tensor_parallel ? std::make_unique<parallel::DeviceTensorParallel>(*tensor_parallel, backend_.stream(),
                                                                               host.layout())
                            : nullptr),
        model_(host.args(), backend_, units_ ? static_cast<WeightStore&>(*units_) : params_,
               host.layout().tensor_parallel()),
        replicas_(replicas) {
    model_.set_hooks(fsdp_.get());
    model_.set_tensor_parallel(tp_.get(), loss_parallel);
    if (tp_) tp_partials_ = cuda::DeviceBuffer(backend_.allocator(), sizeof(double) * params_.count());
    TITAN_CUDA_CHECK(cudaMallocHost(&host_sums_, 2 * sizeof(double)));
    TITAN_CUDA_CHECK(cudaEventCreateWithFlags(&sums_ready_, cudaEventDisableTiming));
    step_factors_ = cuda::DeviceBuffer(backend_.allocator(), sizeof(cuda::AdamWStep));
  }
  ~CudaModelEngine() override {
    drop_graphs();
    try {  // with the collectives' deadline first: a peer that died must not hang this rank here
      synchronize();
    } catch (...) {
    }
    cudaStreamSynchronize(backend_.stream());
    if (sums_ready_) cudaEventDestroy(sums_ready_);
    if (host_sums_) cudaFreeHost(host_sums_);
  }

  std::string description() const override {
    return concat(backend_.description(), ", float32 master weights, gradients and optimizer state, the one model (",
                  units_ || replicas_ || tp_ ? "no CUDA graph under FSDP, HSDP or tensor parallel yet" : mode_why_, ")",
                  units_ ? ", FSDP over NCCL" : "", replicas_ ? concat(", gradients summed over ", replicas_->size(),
                                                                         " replicas (NCCL)") : "",
                  tp_ ? concat(", tensor parallel over ", tp_->degree(), " ranks (NCCL)") : "");
  }
  bool on_cpu() const override { return false; }
  double peak_flops() const override { return metrics::peak_bf16_flops(cuda::device_name(device_)); }
  void zero_grad() override {
    if (units_) units_->release_all();  // no reduce-scatter may still add into the shards
    params_.zero_grad();
  }
  void set_activation_checkpointing(const llama3::ActivationCheckpointing& ac) { model_.set_activation_checkpointing(ac); }
  void set_float8_linears(const llama3::Float8Linears& f) { model_.set_float8_linears(f); }
  // FSDP gathers these linears' weights in e4m3 (nothing without FSDP: the weights are whole here).
  void enable_float8_all_gather(const llama3::Float8Linears& f, bool precompute) {
    if (!units_) return;
    std::vector<parallel::DeviceUnitStore::Float8Weight> weights;
    for (const size_t i : f.converted) weights.push_back({i, host_.layout()[i].shape[1]});
    units_->enable_float8_gather(weights, precompute);
  }
  int64_t float8_amax_reductions() const override { return units_ ? units_->float8_amax_reductions() : 0; }

  cpu::ClassifierResult forward_backward(const int32_t* tokens, const int32_t* labels, llama3::BatchShape s,
                                         float grad_scale, Tracer* tracer) override {
    if (units_) units_->release_all();  // a pass that threw may have left units gathered
    return model_.forward_backward(tokens, labels, s, grad_scale, -100, tracer);
  }
  cpu::ClassifierResult forward_loss(const int32_t* tokens, const int32_t* labels, llama3::BatchShape s) override {
    backend_.pause_phase_timing(true);  // validation stays out of the per-step phase times
    struct Resume {
      cuda::CudaBackend& b;
      ~Resume() { b.pause_phase_timing(false); }
    } resume{backend_};
    if (units_) units_->release_all();
    return model_.forward_loss(tokens, labels, s);
  }
  // Under tensor parallel: this rank's share (its slices, and the replicated tensors on rank 0
  // only); the trainer sums the shares over the group.
  double grad_sq_sum() override {
    backend_.mark(cuda::Phase::optimizer);
    if (tp_) {
      synchronize();  // the replicated gradients' all-reduce, with the group's deadline
      const std::vector<bool> skip = tp_->rank() == 0 ? std::vector<bool>(params_.count(), false) : tp_->replicated();
      return params_.grad_sq_sum_except(skip, tp_partials_.as<double>(), backend_.reduce_scratch());
    }
    params_.grad_sq_sum(backend_.sums() + 1, backend_.reduce_scratch());
    double out = 0;
    TITAN_CUDA_CHECK(cudaMemcpyAsync(&out, backend_.sums() + 1, sizeof(double), cudaMemcpyDeviceToHost, backend_.stream()));
    synchronize();
    return out;
  }
  void update(double grad_norm, double max_norm, double lr) override {
    const optim::AdamWFactors f = optimizer_.advance(lr);
    // torch's clip_grad_norm_ rule, as optim::clip_grads applies it on the CPU.
    const float coef = max_norm > 0 && grad_norm > max_norm ? static_cast<float>(max_norm / (grad_norm + 1e-6)) : 1.0f;
    if (units_) units_->release_all();  // no gather may still read the weights AdamW rewrites
    backend_.mark(cuda::Phase::optimizer);
    if (units_) units_->weights_changed();  // FP8-gathered weights take new scales (first: adamw may throw)
    params_.adamw(adamw_step(f, coef));
    finish_step();
  }

  bool fused_step(const int32_t* tokens, const int32_t* labels, llama3::BatchShape s, float grad_scale, double lr,
                  double max_norm, StepOutcome& out) override {
    if (!compile_ || units_ || replicas_ || tp_) return false;  // one op per kernel, FSDP, HSDP or TP: the plain path
    const optim::AdamWFactors f = optimizer_.advance(lr);
    try {
      out = run_step(tokens, labels, s, grad_scale, adamw_step(f, 1.0f), max_norm);
    } catch (...) {
      // Only validation of the batch runs before the first update; a failed capture after the
      // eager step leaves a count one short, and the run ends with the error anyway.
      optimizer_.set_steps_taken(optimizer_.steps_taken() - 1);
      throw;
    }
    if (!std::isfinite(out.loss_sum) || !std::isfinite(out.grad_norm))
      optimizer_.set_steps_taken(optimizer_.steps_taken() - 1);  // the device skipped the update
    return true;
  }

  std::string phase_report() const override { return format_phase_report(backend_.phase_timer()); }
  void to_host() override {
    synchronize();
    params_.download(host_.parameters());
  }
  void from_host() override {
    if (units_) units_->release_all();  // gathered copies of the old weights must not survive
    if (units_) units_->weights_changed();
    synchronize();
    params_.upload(host_.parameters());
  }
  double take_comm_bytes() override {
    const double b = (units_ ? units_->take_comm_bytes() : 0) + replica_bytes_ + (tp_ ? tp_->take_volume().total() : 0);
    replica_bytes_ = 0;
    return b;
  }
  void reduce_replica_gradients() override {
    if (!replicas_) return;
    if (units_) units_->release_all();  // the reduce-scatters into the shards come first
    backend_.mark(cuda::Phase::communication);
    replicas_->all_reduce_f32(params_.gradients(), params_.total(), backend_.stream());
    const double r = replicas_->size();
    replica_bytes_ += 2.0 * (r - 1) / r * 4.0 * static_cast<double>(params_.total());  // a ring all-reduce
  }
  void reduce_tensor_parallel_gradients() override {
    if (!tp_) return;
    if (units_) units_->release_all();  // the reduce-scatters into the shards come first
    backend_.mark(cuda::Phase::communication);
    tp_->reduce_replicated_gradients(params_);
  }
  size_t peak_unsharded_bytes() const override { return units_ ? units_->peak_unsharded_bytes() : 0; }
  metrics::MemorySample memory() const override { return device_memory_sample(backend_.memory_stats()); }

 private:
  struct GraphKey {  // what a captured step bakes in: the buffers' generation, and scalars
    uint64_t plan_generation = 0;
    float grad_scale = 0;
    double max_norm = 0;
    bool operator==(const GraphKey&) const = default;
  };

  void synchronize() {
    if (tp_collectives_) tp_collectives_->synchronize(backend_.stream());  // with the group's deadline
    if (units_) units_->synchronize();  // collectives in flight: wait with the group's deadline
    else if (replicas_) replicas_->synchronize(backend_.stream());
    else backend_.synchronize();
  }

  // Phase timing starts after two steps, so one-time work (cuBLASLt plans, module loads) stays out.
  void finish_step() {
    if (cuda::PhaseTimer* t = backend_.phase_timer()) t->finish_step();
    if (++updates_ == 2 && phase_times_) backend_.enable_phase_timing();
  }

  // Zero the summed-into gradients, forward, loss, backward (each weight's gradient written
  // once), and the squared norm: no host synchronisation, so it can be captured.
  void enqueue_gradients(llama3::BatchShape s, float grad_scale) {
    params_.zero_accumulated_grads();
    backend_.set_overwrite_grads(true);
    struct Restore {
      cuda::CudaBackend& b;
      ~Restore() { b.set_overwrite_grads(false); }
    } restore{backend_};
    model_.enqueue_forward_backward(s, grad_scale, -100);
    backend_.mark(cuda::Phase::optimizer);
    params_.grad_sq_sum(backend_.sums() + 1, backend_.reduce_scratch());
  }
  // Clipping and AdamW, decided on the device from the loss and norm (skipped if not finite).
  void enqueue_update(double max_norm) {
    backend_.mark(cuda::Phase::optimizer);
    params_.adamw_device_step(step_factors_.as<cuda::AdamWStep>(), backend_.sums() + 1, backend_.sums(), max_norm);
  }
  void send_sums() {
    TITAN_CUDA_CHECK(cudaMemcpyAsync(host_sums_, backend_.sums(), 2 * sizeof(double), cudaMemcpyDeviceToHost,
                                     backend_.stream()));
    TITAN_CUDA_CHECK(cudaEventRecord(sums_ready_, backend_.stream()));
  }

  StepOutcome run_step(const int32_t* tokens, const int32_t* labels, llama3::BatchShape s, float grad_scale,
                       const cuda::AdamWStep& step, double max_norm) {
    const int64_t n = s.rows();
    const auto count = std::count_if(labels, labels + n, [](int32_t l) { return l != -100; });
    model_.load_batch(tokens, labels, s, true);  // plans anew for a new shape (or after another pass's)
    const GraphKey key{model_.plan_generation(), grad_scale, max_norm};
    if (!(key == graph_key_)) drop_graphs();  // the graphs point into buffers that are gone
    cudaStream_t stream = backend_.stream();
    TITAN_CUDA_CHECK(cudaMemcpyAsync(step_factors_.as<void>(), &step, sizeof step, cudaMemcpyHostToDevice, stream));
    if (gradients_graph_) {
      TITAN_CUDA_CHECK(cudaGraphLaunch(gradients_graph_, stream));
      send_sums();
      TITAN_CUDA_CHECK(cudaGraphLaunch(update_graph_, stream));
      // Return while AdamW runs: the host checks and uploads the next batch meanwhile, and all it
      // enqueues on this stream is ordered after the update.
      TITAN_CUDA_CHECK(cudaEventSynchronize(sums_ready_));
      return {host_sums_[0], count, std::sqrt(host_sums_[1])};
    }
    enqueue_gradients(s, grad_scale);
    send_sums();
    enqueue_update(max_norm);
    finish_step();
    if (mode_ == cuda::StepMode::graphs) {
      // The first step of a shape ran eagerly (cuBLASLt picked its algorithms, kernels loaded);
      // the same work is captured now, not run, for the next steps.
      cudaGraphExec_t gradients = capture([&] { enqueue_gradients(s, grad_scale); });
      try {
        update_graph_ = capture([&] { enqueue_update(max_norm); });
      } catch (...) {
        cudaGraphExecDestroy(gradients);
        throw;
      }
      gradients_graph_ = gradients;
      graph_key_ = key;
    }
    backend_.synchronize();
    return {host_sums_[0], count, std::sqrt(host_sums_[1])};
  }

  cudaGraphExec_t capture(const std::function<void()>& enqueue) {
    cudaStream_t stream = backend_.stream();
    cudaGraph_t graph = nullptr;
    TITAN_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue();
    } catch (...) {
      cudaStreamEndCapture(stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    TITAN_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t st = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    TITAN_CUDA_CHECK(st);
    return exec;
  }

  void drop_graphs() {
    for (cudaGraphExec_t* g : {&gradients_graph_, &update_graph_}) {
      if (*g) cudaGraphExecDestroy(*g);
      *g = nullptr;
    }
    graph_key_ = {};
  }

  llama3::Transformer& host_;
  optim::AdamW& optimizer_;
  int device_;
  bool compile_;
  std::string mode_why_;
  cuda::StepMode mode_;
  bool phase_times_;
  int64_t updates_ = 0;
  cuda::CudaBackend backend_;  // before the store and the model, which hold its buffers
  cuda::DeviceParameters params_;
  std::unique_ptr<parallel::DeviceUnitStore> units_;  // FSDP only
  std::unique_ptr<parallel::FullyShardedDataParallel> fsdp_;
  cuda::DeviceCollectives* tp_collectives_ = nullptr;  // tensor parallel only
  std::unique_ptr<parallel::DeviceTensorParallel> tp_;  // before the model, which calls it
  cuda::DeviceBuffer tp_partials_;                      // the gradient norm's partial sums under TP
  llama3::Model model_;
  cuda::DeviceCollectives* replicas_ = nullptr;  // HSDP only
  double replica_bytes_ = 0;
  cuda::DeviceBuffer step_factors_;  // AdamWStep on the device, written before each graph launch
  double* host_sums_ = nullptr;      // pinned: the step's loss and squared norm
  cudaEvent_t sums_ready_ = nullptr;
  cudaGraphExec_t gradients_graph_ = nullptr, update_graph_ = nullptr;
  GraphKey graph_key_{};
};
}  // namespace

std::unique_ptr<Engine> make_cuda_model_engine(const config::RunPlan& plan, llama3::Transformer& model,
                                               optim::AdamW& optimizer, int device, cuda::DeviceCollectives* fsdp,
                                               cuda::DeviceCollectives* replicas,
                                               cuda::DeviceCollectives* tensor_parallel) {
  auto engine = std::make_unique<CudaModelEngine>(model, optimizer, device, plan.compile, plan.phase_times,
                                                  plan.attention, fsdp, plan.reshard, replicas, tensor_parallel,
                                                  plan.loss_parallel);
  engine->set_activation_checkpointing(plan.ac);
  if (plan.float8.enabled) {  // the same selection the trainer logged for the host model
    const auto f8 = llama3::select_float8_linears(model.layout(), plan.float8.recipe, plan.float8.filter_fqns);
    engine->set_float8_linears(f8);
    if (plan.float8.fsdp_all_gather) engine->enable_float8_all_gather(f8, plan.float8.precompute_scales);
  }
  return engine;
}

}  // namespace titan::train

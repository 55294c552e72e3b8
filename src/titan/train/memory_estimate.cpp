#include "titan/train/memory_estimate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "titan/cli/args.h"
#include "titan/core/error.h"
#include "titan/metrics/flops.h"
#include "titan/ops/classifier_plan.h"
#include "titan/models/llama3/float8_linears.h"
#include "titan/models/llama3/layout.h"
#include "titan/ops/attention_library.h"
#include "titan/ops/cpu/cpu_backend.h"
#include "titan/ops/cuda/host_plan.h"
#include "titan/ops/ops.h"
#include "titan/parallel/data_parallel.h"
#include "titan/parallel/tensor_parallel.h"
#include "titan/train/datasets.h"
#include "titan/train/engine.h"

namespace titan::train {

namespace {
using Mode = llama3::ActivationCheckpointing::Mode;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Parameters of one transformer block and of the root (embedding, final norm, output).
int64_t block_params(const llama3::ModelArgs& a) { return llama3::ModelLayout(a).unit_numel(1); }
int64_t root_params(const llama3::ModelArgs& a) { return llama3::ModelLayout(a).unit_numel(0); }

// The CUDA caching allocator's block sizes (ops/cuda/allocator.cpp).
double device_block(double bytes) { return double(cuda::device_block_bytes(static_cast<size_t>(std::ceil(bytes)))); }

// Every buffer CudaTransformer allocates (constructor and plan), rounded as the allocator does.
double cuda_plan_bytes(const llama3::ModelArgs& a, llama3::BatchShape s, int64_t shards, bool keep_blocks,
                       double* param_bytes, double* grad_bytes, double* opt_bytes) {
  const double n = double(s.rows()), d = double(a.dim), qd = double(a.n_heads * a.head_dim()), kvd = double(a.kv_dim()),
               f = double(a.ffn_hidden()), v = double(a.vocab_size), heads = double(a.n_heads), L = double(a.n_layers);
  // Flat parameter buffers: each parameter padded to 64 elements (11 small pads are noise).
  const double p = double(metrics::parameter_count(a)) / double(shards);
  *param_bytes = device_block(4 * p) + device_block(2 * p);
  *grad_bytes = device_block(4 * p);
  *opt_bytes = 2 * device_block(4 * p);
  if (shards > 1) {  // FSDP: the root and two blocks gathered (one computing, one prefetched), two blocks'
                     // whole gradients (one computing, one reducing), one unit's reduced shards
    const double root = double(root_params(a)), block = double(block_params(a));
    const double held = std::min(2.0, L);
    *param_bytes += device_block(2 * root) + (keep_blocks ? L : held) * device_block(2 * block);
    *grad_bytes += device_block(4 * root) + held * device_block(4 * block) + device_block(4 * std::max(root, block) / double(shards));
  }
  auto bf = [](double count) { return device_block(2 * count); };
  auto fp = [](double count) { return device_block(4 * count); };
  const double lse = heads * double(s.batch * s.seq);
  double act = (L + 1) * bf(n * d);
  act += L * (3 * bf(n * d) + 2 * bf(n * qd) + 2 * bf(n * kvd) + 3 * bf(n * f) + 2 * fp(n) + fp(lse));
  act += bf(n * d) + fp(n) + 4 * bf(n * d) + 2 * bf(n * qd) + 2 * bf(n * kvd) + 3 * bf(n * f) + fp(lse);
  act += fp(std::ceil(n / 128.0) * d);
  act += bf(double(classifier_rows(s.rows(), a.vocab_size)) * v) + fp(n);
  act += 4 * device_block(4 * n) + device_block(4 * (n + 1));  // tokens, labels, embedding index
  act += 2 * fp(double(s.seq) * double(a.head_dim() / 2));      // RoPE tables
  return act;
}

// The one model on the CUDA backend: each buffer of the one activation plan (bf16 activations)
// and of the backend's scratch, as the allocator rounds it; the flat parameter buffers over
// this rank's padded shards; under FSDP (parallel/device_unit_store.h) the root and two blocks
// gathered (all of them with keep_blocks), two blocks' whole gradients and one unit's reduced shards.
// Under tensor parallel the parameters are rank 0's slices (the slices are even), and the plan
// and scratch those of its share of heads, feed-forward width and vocabulary.
double cuda_model_bytes(const llama3::ModelArgs& a, llama3::BatchShape s, const llama3::ActivationCheckpointing& ac,
                        int64_t shards, bool keep_blocks, bool float8, int tp, bool loss_parallel, double* param_bytes,
                        double* grad_bytes, double* opt_bytes) {
  const llama3::ModelLayout layout(a, {0, tp});
  std::vector<int64_t> shard;
  std::vector<double> gathered(static_cast<size_t>(layout.units())), reduced(gathered.size());
  for (const auto& t : layout.tensors()) {
    const int64_t rows = t.shape[0], row = t.numel() / rows;
    shard.push_back((rows + shards - 1) / shards * row);
    gathered[static_cast<size_t>(t.unit)] += double(cuda::aligned_elements(shards * shard.back()));
    reduced[static_cast<size_t>(t.unit)] += double(cuda::aligned_elements(shard.back()));
  }
  const double p = double(cuda::flat_layout(shard).total);
  *param_bytes = device_block(4 * p) + device_block(2 * p);
  *grad_bytes = device_block(4 * p);
  *opt_bytes = 2 * device_block(4 * p);
  if (shards > 1) {
    const double blocks = double(a.n_layers), held = std::min(2.0, blocks);
    *param_bytes += device_block(2 * gathered[0]) + (keep_blocks ? blocks : held) * device_block(2 * gathered[1]);
    *grad_bytes += device_block(4 * gathered[0]) + held * device_block(4 * gathered[1]) +
                   device_block(4 * *std::max_element(reduced.begin(), reduced.end()));
  }
  double act = 0;
  const llama3::ActivationPlan plan = llama3::plan_activations(a, s, ac, tp);
  for (const auto& b : plan.buffers) act += device_block(double(b.elements) * (b.f32 ? 4 : 2));
  for (const auto& b : cuda::backend_scratch({s, a.dim, a.n_heads / tp, a.head_dim(), a.vocab_size / tp,
                                              a.ffn_hidden() / tp, float8, tp, loss_parallel}))
    act += device_block(double(b.bytes));
  return act;
}
}  // namespace

double cpu_activation_bytes(const llama3::ModelArgs& a, llama3::BatchShape s, const llama3::ActivationCheckpointing& ac,
                            bool float8_linears, int tp) {
  return llama3::plan_activations(a, s, ac, tp).bytes(sizeof(float)) +
         cpu::cpu_backend_scratch_bytes(
             {s, a.dim, a.n_heads / tp, a.head_dim(), a.vocab_size / tp, a.ffn_hidden() / tp, float8_linears});
}

double float8_all_gather_bytes(const config::RunPlan& plan, const llama3::ModelArgs& args, int64_t shards, bool cuda) {
  // The device store exists under fsdp_on_one_rank too (over one NCCL rank).
  if (!plan.float8.fsdp_all_gather || (shards < 2 && !(cuda && plan.fsdp_on_one_rank))) return 0;
  const llama3::ModelLayout layout(args);
  const auto converted = llama3::select_float8_linears(layout, plan.float8.recipe, plan.float8.filter_fqns).converted;
  double largest = 0, largest_shard = 0;
  std::vector<double> unit_send(static_cast<size_t>(layout.units()), 0.0);
  for (const size_t i : converted) {
    const auto& shape = layout[i].shape;
    const double shard = double((shape[0] + shards - 1) / shards * shape[1]);
    largest = std::max(largest, double(layout[i].numel()));
    largest_shard = std::max(largest_shard, shard);
    unit_send[static_cast<size_t>(layout[i].unit)] += std::ceil(shard / 256) * 256;
  }
  if (!cuda) return largest + largest_shard;
  // The device store: one unit's e4m3 shards to send (the gathered bytes live in the unit's
  // bf16-sized buffer), and the amax, scale and 1/scale of every weight.
  const double slots = double(converted.size());
  return device_block(*std::max_element(unit_send.begin(), unit_send.end())) +
         device_block(4 * (std::ceil(slots / 8) * 8 + 8 * std::max(slots, 1.0)));
}

bool runs_float8_linears(const config::RunPlan& plan, const llama3::ModelArgs& args) {
  return plan.float8.enabled &&
         !llama3::select_float8_linears(llama3::ModelLayout(args), plan.float8.recipe, plan.float8.filter_fqns).converted.empty();
}

MemoryEstimate estimate_memory(const llama3::ModelArgs& a, llama3::BatchShape s, const llama3::ActivationCheckpointing& ac,
                               EstimateBackend backend, int64_t shards, bool keep_gathered_blocks, AttentionLibrary attention,
                               bool float8_linears, int tp, bool loss_parallel) {
  TITAN_CHECK(shards >= 1 && tp >= 1, "shards ", shards, ", tensor parallel ", tp);
  MemoryEstimate e;
  if (backend == EstimateBackend::cuda_model) {
    e.activations = cuda_model_bytes(a, s, ac, shards, keep_gathered_blocks, float8_linears, tp, loss_parallel,
                                     &e.parameters, &e.gradients, &e.optimizer);
    e.buffers = double(32 << 20) + device_block(sizeof(double) * 4 + 64);  // cuBLASLt workspace, step factors
    // cuDNN sees this rank's heads under tensor parallel.
    if (attention != AttentionLibrary::titan &&
        cudnn_attention_takes(s.seq, a.n_heads / tp, a.n_kv_heads / tp, a.head_dim()))
      e.buffers += device_block(double(cudnn_attention_scratch_bytes(s.batch, s.seq, a.n_heads / tp, a.head_dim())));
    return e;
  }
  if (backend == EstimateBackend::cuda) {
    TITAN_CHECK(ac.mode == Mode::none && tp == 1, "the legacy CUDA model has no activation checkpointing or tensor parallel");
    e.activations = cuda_plan_bytes(a, s, shards, keep_gathered_blocks, &e.parameters, &e.gradients, &e.optimizer);
    e.buffers = double(32 << 20) + device_block(1056 * 8) + 2 * 512.0;  // cuBLASLt workspace, reduction scratch (ops/cuda/reduce.cu), sums, step factors
    // cuDNN attention's backward scratch, where the run would ask for it (auto: where cuDNN
    // loads, which only the run knows); its plans' workspaces are known once built on the card.
    if (attention != AttentionLibrary::titan &&
        cudnn_attention_takes(s.seq, a.n_heads, a.n_kv_heads, a.head_dim()))
      e.buffers += device_block(double(cudnn_attention_scratch_bytes(s.batch, s.seq, a.n_heads, a.head_dim())));
    return e;
  }
  // Under tensor parallel each rank holds its slices (rank 0's: the slices are even) and the
  // norms whole; FSDP shards those.
  const llama3::ModelLayout local(a, {0, tp});
  const double held = double(local.numel());
  e.parameters = 4 * held / double(shards);
  e.gradients = 4 * held / double(shards);
  e.optimizer = 8 * held / double(shards);
  if (shards > 1) {  // whole weights and gradients of the root and one block (no prefetch on the CPU)
    const double root = double(local.unit_numel(0)), block = double(local.unit_numel(1));
    e.parameters += 4 * (root + (keep_gathered_blocks ? double(a.n_layers) : 1.0) * block);
    e.gradients += 4 * (root + block);
  }
  e.activations = cpu_activation_bytes(a, s, ac, float8_linears, tp);
  return e;
}

EstimateBackend cuda_estimate_backend(const config::RunPlan& plan) {
  return plan.cuda_model == config::RunPlan::CudaModel::model ? EstimateBackend::cuda_model : EstimateBackend::cuda;
}

double async_checkpoint_bytes(const config::CheckpointSettings& checkpoint, const llama3::ModelArgs& args, int64_t shards) {
  if (!checkpoint.enabled || !checkpoint.async) return 0;
  return 12.0 * double(metrics::parameter_count(args)) / double(shards);
}

std::string format_estimate(const MemoryEstimate& e, const std::string& what, double device_bytes) {
  char line[512];
  std::snprintf(line, sizeof line,
                "%s: %.2f GiB per device = parameters %.2f + gradients %.2f + optimizer %.2f + activations %.2f + "
                "buffers %.2f",
                what.c_str(), e.total() / kGiB, e.parameters / kGiB, e.gradients / kGiB, e.optimizer / kGiB,
                e.activations / kGiB, e.buffers / kGiB);
  std::string out = line;
  if (device_bytes > 0) {
    std::snprintf(line, sizeof line, " (device: %.1f GiB, %.0f%%)", device_bytes / kGiB, 100.0 * e.total() / device_bytes);
    out += line;
  }
  return out;
}

int estimate_main(const std::vector<std::string>& args) {
  config::JobConfig cfg;
  std::vector<std::string> overrides;
  int64_t ngpu = 1;
  std::string device;  // empty: from training.device
  for (size_t i = 0; i < args.size(); ++i) {
    std::string inline_value;
    const bool has_inline = args[i].rfind("--config=", 0) == 0 || args[i].rfind("--ngpu=", 0) == 0 ||
                            args[i].rfind("--device=", 0) == 0;
    const std::string flag = has_inline ? args[i].substr(0, args[i].find('=')) : args[i];
    if (has_inline) inline_value = args[i].substr(args[i].find('=') + 1);
    auto value = [&](const std::string& name) {
      if (has_inline) return inline_value;
      if (i + 1 >= args.size()) throw UserError(concat("estimate: ", name, " needs a value"));
      return args[++i];
    };
    if (args[i] == "--help" || args[i] == "-h") {
      std::cout << "usage: titan estimate --config FILE [--ngpu N] [--device cuda|cpu] [--section.key VALUE ...]\n"
                   "  per-device memory of a training run (GPU: bf16 mixed precision; CPU: fp32); N > 1 devices: groups of\n"
                   "  training.tensor_parallel_degree and FSDP shards over the rest\n";
      return 0;
    }
    if (flag == "--config") {
      cfg.load_file(value("--config"));
    } else if (flag == "--ngpu") {
      const std::string v = value("--ngpu");
      if (v.empty() || v.size() > 6 || v.find_first_not_of("0123456789") != std::string::npos || std::stoll(v) < 1)
        throw UserError(concat("estimate: --ngpu ", v, ": expected a positive integer"));
      ngpu = std::stoll(v);
    } else if (flag == "--device") {
      device = value("--device");
      if (device != "cuda" && device != "cpu") throw UserError(concat("estimate: --device ", device, ": expected cuda or cpu"));
    } else {
      overrides.push_back(args[i]);
    }
  }
  cfg.apply_overrides(overrides);
  cfg.validate();
  const config::JobSettings job = config::resolve_job_settings(cfg);
  // The vocabulary as `train` takes it: model.vocab_size, the tokenizer, the flavor's.
  DataSetup data;
  data.synthetic = is_synthetic(job.data.dataset);
  std::string vocab_from = job.model.vocab_size > 0 ? "model.vocab_size" : data.synthetic ? "the flavor's (synthetic data)" : "";
  try {
    data.tokenizer = load_tokenizer(job, data.synthetic);
    if (vocab_from.empty())
      vocab_from = job.model.tokenizer_path.empty() ? "the built-in tokenizer's" : "the tokenizer's (" + job.model.tokenizer_path + ")";
  } catch (const UserError& e) {  // an estimate made away from the data: say so and go on with the flavor's
    std::cout << "note: " << e.what() << "; the vocabulary below is the flavor's\n";
    if (vocab_from.empty()) vocab_from = "the flavor's: the tokenizer is not readable here";
  }
  const auto a = resolve_model_args(job, data);
  const config::RunPlan& plan = job.plan;
  const llama3::BatchShape s = plan.micro_batch;
  if (device.empty()) device = prefers_cuda(plan) ? "cuda" : "cpu";
  if (device == "cuda") check_cuda_config(plan, a);  // what training on a GPU would refuse
  const int tp = plan.tensor_parallel_degree;
  parallel::check_tensor_parallel(tp, static_cast<int>(ngpu), a, s,
                                  concat("estimate --ngpu ", ngpu, ", ", job.origin("training.tensor_parallel_degree")));
  int64_t shards = 1;
  try {
    shards = parallel::resolve_mesh(static_cast<int>(ngpu) / tp, plan.replicate_degree, plan.shard_degree).shard;
  } catch (const UserError& e) {
    throw UserError(concat("estimate --ngpu ", ngpu, ": ", e.what()));
  }
  auto e = estimate_memory(a, s, plan.ac, device == "cuda" ? cuda_estimate_backend(plan) : EstimateBackend::cpu, shards,
                           plan.keep_gathered_blocks, plan.attention, runs_float8_linears(plan, a), tp,
                           plan.loss_parallel);
  if (device == "cpu")
    e.buffers += async_checkpoint_bytes(job.checkpoint, a, shards * tp) + float8_all_gather_bytes(plan, a, shards);
  else
    e.buffers += float8_all_gather_bytes(plan, a, shards, true);
  std::cout << "model: llama3 " << job.model.flavor << ", " << metrics::parameter_count(a)
            << " parameters, vocabulary " << a.vocab_size << " (" << vocab_from << "); micro-batch " << s.batch
            << " x " << s.seq << "; activation checkpointing " << cfg.get_string("activation_checkpoint.mode") << "\n";
  // Whether it fits this machine (before the estimate's line, which scripts read as the last).
  const bool cuda_here = device == "cuda" && prefers_cuda(plan);
  if (device == "cpu" || cuda_here) {
    const double have = device_memory_bytes(device == "cuda");
    const double gib = 1024.0 * 1024.0 * 1024.0;
    char line[256];
    std::snprintf(line, sizeof line, "%s: %.2f GiB of %.2f GiB (%.0f%%)", device == "cuda" ? "this machine's GPU 0" : "this machine's memory",
                  e.total() / gib, have / gib, 100.0 * e.total() / have);
    std::cout << (e.total() <= have ? "fits " : concat("does not fit, by ", static_cast<int64_t>(std::ceil((e.total() - have) / gib)),
                                                       " GiB: "))
              << line << "\n";
  } else if (device == "cuda") {
    std::cout << "no GPU on this machine to compare with\n";
  }
  std::cout << format_estimate(e, concat(device == "cuda" ? "cuda (bf16 compute, fp32 master/grads/AdamW)" : "cpu (fp32)",
                                         shards > 1 ? concat(", FSDP over ", shards, " devices",
                                                             device == "cuda" ? " (GPU FSDP memory: not yet measured on several cards)" : "")
                                                    : "",
                                         tp > 1 ? concat(", tensor parallel over ", tp) : ""),
                               0)
            << "\n";
  return 0;
}

}  // namespace titan::train

// The one model (models/llama3/model.h) over the CUDA backend (issue 19; switched on by the
// GPU-switch issue): against the CPU backend, against the legacy CudaTransformer on the same
// weights (the same kernels in the same order: bit for bit), activation checkpointing on the
// GPU (bit-identical to none), and the executor's CUDA-graph step against its eager step.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "titan/config/job_config.h"
#include "titan/models/llama3/cuda_transformer.h"
#include "titan/models/llama3/model.h"
#include "titan/models/llama3/transformer.h"
#include "titan/ops/cuda/cuda_backend.h"
#include "titan/ops/cuda/device_parameters.h"
#include "titan/optim/adamw.h"
#include "titan/train/engine.h"

using namespace titan;
using namespace titan::gpu_test;
using namespace titan::llama3;
using Mode = ActivationCheckpointing::Mode;

namespace {
ModelArgs small_args() {
  ModelArgs a;
  a.dim = 128;
  a.n_layers = 3;
  a.n_heads = 4;  // head_dim 32
  a.n_kv_heads = 2;
  a.vocab_size = 301;
  a.multiple_of = 32;
  return a;
}

struct Batch {
  std::vector<int32_t> tokens, labels;
};
Batch random_batch(const ModelArgs& a, BatchShape s, const std::string& name = "batch") {
  NamedStream st(fresh_seed(), name);
  Batch b{std::vector<int32_t>(s.rows()), std::vector<int32_t>(s.rows())};
  for (int64_t i = 0; i < s.rows(); ++i) {
    b.tokens[i] = static_cast<int32_t>(st.uniform(2 * i) * a.vocab_size) % a.vocab_size;
    b.labels[i] = i % 11 == 5 ? -100 : static_cast<int32_t>(st.uniform(2 * i + 1) * a.vocab_size) % a.vocab_size;
  }
  return b;
}

std::vector<bool> accumulated(const ModelLayout& layout) {
  std::vector<bool> out;
  for (const auto& t : layout.tensors()) out.push_back(t.summed_gradient);
  return out;
}

// The one model on the GPU over a host model's weights.
struct OnGpu {
  cuda::CudaBackend backend;
  cuda::DeviceParameters params;
  Model model;
  OnGpu(Transformer& host, const ActivationCheckpointing& ac = {})
      : backend(AttentionLibrary::titan, true),
        params(host.parameters(), accumulated(host.layout()), backend.allocator(), backend.stream()),
        model(host.args(), backend, params) {
    model.set_activation_checkpointing(ac);
  }
  std::vector<float> all_gradients(size_t count) {
    std::vector<float> out;
    for (size_t i = 0; i < count; ++i) {
      const auto g = params.gradient(i);
      out.insert(out.end(), g.begin(), g.end());
    }
    return out;
  }
};
}  // namespace

TEST(OneModelCuda, LossLogitsAndGradientsMatchTheCpuBackend) {
  TITAN_REQUIRE_GPU();
  const ModelArgs a = small_args();
  const BatchShape s{2, 70};  // 70: not a multiple of the 64-row attention tile
  Transformer cpu_model(a);
  cpu_model.init_weights(fresh_seed());
  for (auto& p : cpu_model.parameters())  // the CPU computes with the bf16-rounded weights the GPU sees
    for (int64_t i = 0; i < p.master.numel(); ++i) p.master.f32()[i] = bf16_to_f32(f32_to_bf16(p.master.f32()[i]));
  OnGpu gpu(cpu_model);
  const Batch b = random_batch(a, s);
  const float scale = 1.0f / static_cast<float>(s.rows());
  cpu_model.zero_grad();
  const auto want = cpu_model.forward_backward(b.tokens.data(), b.labels.data(), s, scale);
  gpu.params.zero_grad();
  const auto got = gpu.model.forward_backward(b.tokens.data(), b.labels.data(), s, scale);
  ASSERT_EQ(got.count, want.count);
  EXPECT_NEAR(got.loss_sum / got.count, want.loss_sum / want.count, 1e-2) << "mean loss, seed " << fresh_seed();
  size_t i = 0;
  for (auto& p : cpu_model.parameters()) {
    const auto g = gpu.params.gradient(i++);
    EXPECT_LT(rel_l2(g, std::vector<float>(p.grad.f32(), p.grad.f32() + p.grad.numel())), 3e-2)
        << p.name << ", seed " << fresh_seed();
  }
  std::vector<float> logits(s.rows() * a.vocab_size), ref(s.rows() * a.vocab_size);
  gpu.model.forward_logits(b.tokens.data(), s, logits.data());
  cpu_model.forward_logits(b.tokens.data(), s, ref.data());
  EXPECT_LT(rel_l2(logits, ref), 2e-2) << "logits, seed " << fresh_seed();
}

TEST(OneModelCuda, EqualsTheLegacyCudaTransformerBitForBit) {
  TITAN_REQUIRE_GPU();
  const ModelArgs a = small_args();
  const BatchShape s{3, 129};
  Transformer host(a);
  host.init_weights(fresh_seed());
  const Batch b = random_batch(a, s);
  CudaTransformer legacy(a, host.parameters());
  legacy.zero_grad();
  const auto want = legacy.forward_backward(b.tokens.data(), b.labels.data(), s, 0.01f);
  OnGpu gpu(host);
  gpu.params.zero_grad();
  const auto got = gpu.model.forward_backward(b.tokens.data(), b.labels.data(), s, 0.01f);
  EXPECT_EQ(got.loss_sum, want.loss_sum) << "seed " << fresh_seed();
  for (size_t i = 0; i < host.parameters().size(); ++i)
    EXPECT_EQ(gpu.params.gradient(i), legacy.gradient(i)) << host.parameters()[i].name << ", seed " << fresh_seed();
}

TEST(OneModelCuda, ActivationCheckpointingIsBitIdenticalToNone) {
  TITAN_REQUIRE_GPU();
  const ModelArgs a = small_args();
  const BatchShape s{2, 96};
  Transformer host(a);
  host.init_weights(fresh_seed());
  const Batch b = random_batch(a, s);
  std::vector<double> losses;
  std::vector<std::vector<float>> grads;
  for (Mode mode : {Mode::none, Mode::full, Mode::selective_layer, Mode::selective_op}) {
    OnGpu gpu(host, {mode, 2});
    gpu.params.zero_grad();
    losses.push_back(gpu.model.forward_backward(b.tokens.data(), b.labels.data(), s, 0.02f).loss_sum);
    grads.push_back(gpu.all_gradients(host.parameters().size()));
  }
  for (size_t m = 1; m < losses.size(); ++m) {
    EXPECT_EQ(losses[m], losses[0]) << "mode " << m << ", seed " << fresh_seed();
    EXPECT_EQ(grads[m], grads[0]) << "mode " << m << ", seed " << fresh_seed();
  }
}

TEST(OneModelCuda, GraphStepMatchesEagerStepBitForBit) {
  TITAN_REQUIRE_GPU();
  const ModelArgs a = small_args();
  const BatchShape s{2, 70};
  std::vector<std::vector<double>> losses(2);
  std::vector<std::vector<float>> weights(2);
  for (int graphs = 0; graphs < 2; ++graphs) {
    config::JobConfig cfg;
    // Eager: the same fused step, run op by op (profiling.phase_times keeps it out of graphs).
    cfg.apply_overrides({"--training.device", "cuda", "--training.cuda_model", "model", "--training.compile", "true",
                         "--profiling.phase_times", graphs ? "false" : "true"});
    Transformer host(a);
    host.init_weights(fresh_seed());
    optim::AdamW optimizer({});
    auto engine = train::make_engine(config::resolve_run_plan(cfg), host, optimizer);
    for (int step = 0; step < 4; ++step) {
      const Batch b = random_batch(a, s, "step " + std::to_string(step));
      const float scale = 1.0f / static_cast<float>(s.rows());
      train::Engine::StepOutcome out;
      ASSERT_TRUE(engine->fused_step(b.tokens.data(), b.labels.data(), s, scale, 1e-3, 1.0, out));
      losses[graphs].push_back(out.loss_sum);
    }
    engine->to_host();
    for (auto& p : host.parameters()) weights[graphs].insert(weights[graphs].end(), p.master.f32(), p.master.f32() + p.numel());
  }
  EXPECT_EQ(losses[0], losses[1]) << "seed " << fresh_seed();
  EXPECT_EQ(weights[0], weights[1]) << "weights after 4 steps, seed " << fresh_seed();
}

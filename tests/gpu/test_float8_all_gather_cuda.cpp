// The FP8 all-gather on the GPU (issue 22): FSDP's device store casts the float8 linears'
// fp32 master shards to e4m3 with the whole tensor's scale (the max over the ranks of the
// shards' amax) and gathers the bytes, which feed the FP8 GEMMs as they are. A whole-tensor cast
// from the master is what the unsharded float8 run makes of each weight, so over one rank the
// sharded run must give the unsharded float8 run's losses and gradient norms bit for bit, with
// the amaxes precomputed (one all-reduce per step) or reduced at each gather. Over 2 and 3 ranks
// as threads the store's gathered bytes, scale and 1/scale equal the whole master's cast bit for
// bit (3 ranks pad the feed-forward's 352 rows to 354); two ranks train near the unsharded run,
// each rank's first forward exactly that run's forward over the same rows. Also the e4m3
// transpose the input-gradient GEMM takes.
#include <cmath>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "gpu_test_util.h"
#include "thread_collectives.h"
#include "titan/config/run_plan.h"
#include "titan/models/llama3/transformer.h"
#include "titan/ops/cuda/cuda_backend.h"
#include "titan/ops/cuda/device_parameters.h"
#include "titan/ops/cuda/float8_kernels.h"
#include "titan/parallel/device_unit_store.h"
#include "titan/optim/adamw.h"
#include "titan/train/engine.h"

using namespace titan;
using namespace titan::gpu_test;
using namespace titan::llama3;

namespace {
ModelArgs float8_args() {  // every float8 linear's dimensions multiples of 16
  ModelArgs a;
  a.dim = 128;
  a.n_layers = 3;
  a.n_heads = 4;
  a.n_kv_heads = 2;
  a.vocab_size = 301;  // the classifier stays bf16 (filter_fqns = ["output"])
  a.multiple_of = 32;
  return a;
}

config::RunPlan float8_plan(bool all_gather, bool precompute) {
  config::RunPlan p;
  p.device = config::RunPlan::Device::cuda;
  p.cuda_model = config::RunPlan::CudaModel::model;
  p.attention = AttentionLibrary::titan;
  p.float8.enabled = true;
  p.float8.recipe = float8::recipe("");
  p.float8.filter_fqns = {"output"};
  p.float8.fsdp_all_gather = all_gather;
  p.float8.precompute_scales = precompute;
  return p;
}

struct Batch {
  std::vector<int32_t> tokens, labels;
};
Batch random_batch(const ModelArgs& a, BatchShape s, const std::string& name) {
  NamedStream st(fresh_seed(), name);
  Batch b{std::vector<int32_t>(s.rows()), std::vector<int32_t>(s.rows())};
  for (int64_t i = 0; i < s.rows(); ++i) {
    b.tokens[i] = static_cast<int32_t>(st.uniform(2 * i) * a.vocab_size) % a.vocab_size;
    b.labels[i] = static_cast<int32_t>(st.uniform(2 * i + 1) * a.vocab_size) % a.vocab_size;
  }
  return b;
}

constexpr int kSteps = 3;
constexpr double kMaxNorm = 1.0, kLr = 1e-3;

struct Step {
  double loss_sum = 0, grad_sq = 0;
};

// kSteps of one engine over `rows` of each batch starting at `first`; `sum` adds the ranks'
// loss and squared-norm shares (and waits for them) where several run.
std::vector<Step> run_steps(train::Engine& engine, const std::vector<Batch>& batches, int64_t first, BatchShape mine,
                        float scale, const std::function<Step(Step)>& sum = [](Step s) { return s; }) {
  std::vector<Step> out;
  for (const Batch& b : batches) {
    engine.zero_grad();
    const auto r = engine.forward_backward(b.tokens.data() + first, b.labels.data() + first, mine, scale, nullptr);
    const Step total = sum({r.loss_sum, engine.grad_sq_sum()});
    engine.update(std::sqrt(total.grad_sq), kMaxNorm, kLr);
    out.push_back(total);
  }
  return out;
}
}  // namespace

TEST(Float8AllGatherCuda, TransposeOfE4m3Bytes) {
  TITAN_REQUIRE_GPU();
  const int64_t rows = 70, cols = 45;
  std::vector<uint8_t> src(rows * cols), want(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) src[i] = static_cast<uint8_t>((i * 37 + 11) & 0xFF);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) want[c * rows + r] = src[r * cols + c];
  DeviceArray<uint8_t> d_src(src), d_dst(rows * cols);
  cuda::float8_transpose(d_src.get(), rows, cols, d_dst.get(), nullptr);
  EXPECT_EQ(d_dst.download(), want);
}

TEST(Float8AllGatherCuda, OneRankEqualsTheUnshardedFloat8RunBitForBit) {
  TITAN_REQUIRE_GPU();
  const ModelArgs a = float8_args();
  const BatchShape s{2, 64};
  std::vector<Batch> batches;
  for (int i = 0; i < kSteps; ++i) batches.push_back(random_batch(a, s, concat("step", i)));
  const float scale = 1.0f / static_cast<float>(s.rows());
  const uint64_t seed = fresh_seed();
  Transformer plain_host(a);
  plain_host.init_weights(seed);
  optim::AdamW plain_opt(optim::AdamWConfig{});
  auto plain = train::make_cuda_model_engine(float8_plan(false, false), plain_host, plain_opt, 0, nullptr, nullptr);
  const auto want = run_steps(*plain, batches, 0, s, scale);
  for (const bool precompute : {true, false}) {
    Transformer host(a);
    host.init_weights(seed);
    optim::AdamW opt(optim::AdamWConfig{});
    ThreadCollectives::Meeting alone(1);
    ThreadCollectives fsdp(alone, 0);
    auto sharded = train::make_cuda_model_engine(float8_plan(true, precompute), host, opt, 0, &fsdp, nullptr);
    const auto got = run_steps(*sharded, batches, 0, s, scale);
    for (int step = 0; step < kSteps; ++step) {
      EXPECT_EQ(got[step].loss_sum, want[step].loss_sum) << "step " << step << ", precompute " << precompute
                                                         << ", seed " << seed;
      EXPECT_EQ(got[step].grad_sq, want[step].grad_sq) << "step " << step << ", precompute " << precompute;
    }
    if (precompute) EXPECT_EQ(sharded->float8_amax_reductions(), kSteps) << "one amax all-reduce per step";
    else EXPECT_GT(sharded->float8_amax_reductions(), kSteps) << "one per float8 weight at each of its gathers";
  }
}

// The store itself, at 2 and 3 ranks with and without precompute: every float8 weight's gathered
// bytes (its rows of the unit buffer), scale and 1/scale equal a whole-tensor cast of the
// unsharded fp32 master with the whole tensor's amax; the bf16 weights gather as before.
TEST(Float8AllGatherCuda, StoreGathersTheWholeMastersCastAtTwoAndThreeRanks) {
  TITAN_REQUIRE_GPU();
  const ModelArgs a = float8_args();
  const uint64_t seed = fresh_seed() + 2;
  Transformer whole(a);
  whole.init_weights(seed);
  const auto f8 = select_float8_linears(whole.layout(), float8::recipe(""), {"output"});
  struct Cast {
    std::vector<uint8_t> bytes;
    float scale = 0, inv_scale = 0;
  };
  std::map<size_t, Cast> want;  // by layout position
  for (const size_t i : f8.converted) {
    const Parameter& p = whole.parameters()[i];
    const int64_t rows = p.global_shape[0], cols = p.global_shape[1];
    DeviceArray<float> master(std::vector<float>(p.master.f32(), p.master.f32() + p.master.numel()));
    DeviceArray<float> amax(1), scale(1), inv(1);
    DeviceArray<uint8_t> bytes(static_cast<size_t>(rows * cols));
    cuda::float8_amax(master.get(), rows, cols, cuda::ScaleSpan::tensor, amax.get(), nullptr);
    cuda::float8_scales(amax.get(), 1, float8::Format::e4m3, false, scale.get(), inv.get(), nullptr);
    cuda::float8_cast(master.get(), rows, cols, scale.get(), cuda::ScaleSpan::tensor, float8::Format::e4m3, bytes.get(),
                      nullptr, nullptr);
    want[i] = {bytes.download(), scale.download()[0], inv.download()[0]};
  }
  std::vector<bool> summed;
  for (const auto& t : whole.layout().tensors()) summed.push_back(t.summed_gradient);
  for (const int world : {2, 3})
    for (const bool precompute : {true, false}) {
      ThreadCollectives::Meeting meeting(world);
      std::vector<std::string> errors(static_cast<size_t>(world));
      std::vector<std::thread> ranks;
      for (int r = 0; r < world; ++r)
        ranks.emplace_back([&, r] {
          try {
            ThreadCollectives coll(meeting, r);
            Transformer host(a, r, world);
            host.init_weights(seed);
            cuda::CudaBackend backend(AttentionLibrary::titan, true);
            cuda::DeviceParameters shards(host.parameters(), summed, backend.allocator(), backend.stream(), true);
            parallel::DeviceUnitStore store(host.layout().unit_tensors(), shards, coll, backend);
            std::vector<parallel::DeviceUnitStore::Float8Weight> weights;
            for (const size_t i : f8.converted) weights.push_back({i, host.layout()[i].shape[1]});
            store.enable_float8_gather(weights, precompute);
            for (int u = 0; u < store.units(); ++u) {
              store.gather(u);
              store.use(u);
              for (const size_t i : host.layout().unit_tensors()[static_cast<size_t>(u)]) {
                if (!want.count(i)) {
                  if (store.float8_scale(i) != nullptr) throw std::runtime_error(concat("a scale for bf16 tensor ", i));
                  continue;
                }
                const Cast& w = want.at(i);
                std::vector<uint8_t> got(w.bytes.size());
                std::vector<float> scales(2);
                TITAN_CUDA_CHECK(cudaMemcpyAsync(got.data(), store.weight(i), got.size(), cudaMemcpyDeviceToHost,
                                                 backend.stream()));
                TITAN_CUDA_CHECK(cudaMemcpyAsync(&scales[0], store.float8_scale(i), 4, cudaMemcpyDeviceToHost, backend.stream()));
                TITAN_CUDA_CHECK(cudaMemcpyAsync(&scales[1], store.float8_inv_scale(i), 4, cudaMemcpyDeviceToHost,
                                                 backend.stream()));
                TITAN_CUDA_CHECK(cudaStreamSynchronize(backend.stream()));
                if (got != w.bytes || scales[0] != w.scale || scales[1] != w.inv_scale)
                  throw std::runtime_error(concat(host.parameters()[i].name, ": rank ", r, " of ", world, ", precompute ",
                                                  precompute, ": the gathered e4m3 weight or its scales differ from the "
                                                  "whole master's cast (scale ", scales[0], " vs ", w.scale, ")"));
              }
              store.reshard(u);
            }
            store.synchronize();
            const int64_t f8_weights = static_cast<int64_t>(f8.converted.size());
            const int64_t reductions = store.float8_amax_reductions();
            if (precompute ? reductions != 1 : reductions != f8_weights)
              throw std::runtime_error(concat("rank ", r, ": ", reductions, " amax all-reduces for one gather of each unit"));
          } catch (const std::exception& e) {
            errors[static_cast<size_t>(r)] = e.what();
            meeting.fail();
          }
        });
      for (auto& t : ranks) t.join();
      for (int r = 0; r < world; ++r)
        ASSERT_TRUE(errors[static_cast<size_t>(r)].empty()) << "rank " << r << ": " << errors[static_cast<size_t>(r)];
    }
}

// Two ranks as threads, each its rows of every batch. The gathered weights are the unsharded
// run's casts, and each rank casts its activations over its own rows: its first forward is the
// unsharded engine's forward over those rows, bit for bit. After it, the reduce-scatter adds the
// gradients in another order (fp32 rounding) and the runs drift apart slowly.
TEST(Float8AllGatherCuda, TwoRanksAsThreadsMatchTheUnshardedFloat8Run) {
  TITAN_REQUIRE_GPU();
  const ModelArgs a = float8_args();
  const int world = 2;
  const BatchShape whole{4, 64}, mine{2, 64};
  std::vector<Batch> batches;
  for (int i = 0; i < kSteps; ++i) batches.push_back(random_batch(a, whole, concat("step", i)));
  const float scale = 1.0f / static_cast<float>(whole.rows());
  const uint64_t seed = fresh_seed() + 1;
  Transformer plain_host(a);
  plain_host.init_weights(seed);
  optim::AdamW plain_opt(optim::AdamWConfig{});
  auto plain = train::make_cuda_model_engine(float8_plan(false, false), plain_host, plain_opt, 0, nullptr, nullptr);
  std::vector<double> first_forward;  // per rank: the unsharded forward over its rows of step 0
  for (int r = 0; r < world; ++r)
    first_forward.push_back(
        plain->forward_loss(batches[0].tokens.data() + r * mine.rows(), batches[0].labels.data() + r * mine.rows(), mine)
            .loss_sum);
  const auto want = run_steps(*plain, batches, 0, whole, scale);

  ThreadCollectives::Meeting meeting(world), everyone(world);
  std::vector<std::vector<Step>> got(world);
  std::vector<Step> shares(world), first_share(world);
  std::vector<std::string> errors(world);
  std::mutex mu;
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r)
    ranks.emplace_back([&, r] {
      try {
        ThreadCollectives fsdp(meeting, r);
        Transformer host(a, r, world);
        host.init_weights(seed);
        optim::AdamW opt(optim::AdamWConfig{});
        auto engine = train::make_cuda_model_engine(float8_plan(true, true), host, opt, 0, &fsdp, nullptr);
        got[r] = run_steps(*engine, batches, r * mine.rows(), mine, scale, [&](Step mine_share) {
          if (first_share[r].loss_sum == 0) first_share[r] = mine_share;
          shares[r] = mine_share;
          everyone.arrive_and_wait();
          Step total;
          for (const Step& x : shares) {
            total.loss_sum += x.loss_sum;
            total.grad_sq += x.grad_sq;
          }
          everyone.arrive_and_wait();  // nobody overwrites its share before all have summed
          return total;
        });
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu);
        errors[r] = e.what();
        meeting.fail();
        everyone.fail();
      }
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < world; ++r) ASSERT_TRUE(errors[r].empty()) << "rank " << r << ": " << errors[r];
  for (int r = 0; r < world; ++r)
    EXPECT_EQ(first_share[r].loss_sum, first_forward[r]) << "rank " << r << "'s first forward, seed " << seed;
  for (int step = 0; step < kSteps; ++step) {
    EXPECT_NEAR(got[0][step].loss_sum, want[step].loss_sum, 1e-3 * want[step].loss_sum) << "step " << step;
    EXPECT_NEAR(std::sqrt(got[0][step].grad_sq), std::sqrt(want[step].grad_sq), 1e-2 * std::sqrt(want[step].grad_sq))
        << "step " << step;
  }
}

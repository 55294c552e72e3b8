// Tensor parallel on the GPU (issue 23): T ranks as threads on one card, each the one-model
// engine over its slices of the weights with the tensor-parallel hooks over ThreadCollectives
// (and FSDP over a second set for the 2-D mesh), against the plain one-model engine on the same
// card and the same batches. Also the backend's vocabulary-slice kernels (embedding rows and
// loss parallel's statistics) against the CPU.
//
// Not bit for bit: the row-wise linears' partial sums meet in a bf16 reduce-scatter (as torch's
// TP sums them), where the plain model accumulates the whole contraction in fp32 inside one GEMM.
// The bounds are those of a bf16 rounding of each partial output: the mean loss within 2e-3
// (the CPU/GPU parity bar is 2e-2), the gradient norm within 1e-2, every slice's first AdamW
// moment (0.1 x its gradient) within 3e-2 relative L2 (the GPU-vs-CPU gradient bar).
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "gpu_test_util.h"
#include "thread_collectives.h"
#include "titan/config/run_plan.h"
#include "titan/models/llama3/transformer.h"
#include "titan/ops/cuda/cuda_backend.h"
#include "titan/ops/cuda/cuda_ops.h"
#include "titan/ops/embedding_index.h"
#include "titan/ops/ops.h"
#include "titan/optim/adamw.h"
#include "titan/parallel/tensor_parallel.h"
#include "titan/train/engine.h"

using namespace titan;
using namespace titan::gpu_test;
using namespace titan::llama3;

namespace {
ModelArgs tp_args() {  // divisible by TP 4: heads 8, KV heads 4 (GQA), vocabulary 304, width 704
  ModelArgs a;
  a.dim = 256;
  a.n_layers = 2;
  a.n_heads = 8;  // head_dim 32
  a.n_kv_heads = 4;
  a.vocab_size = 304;
  a.multiple_of = 64;
  return a;
}

struct Batch {
  std::vector<int32_t> tokens, labels;
};
Batch random_batch(const ModelArgs& a, BatchShape s, const std::string& name) {
  NamedStream st(fresh_seed(), name);
  Batch b{std::vector<int32_t>(s.rows()), std::vector<int32_t>(s.rows())};
  for (int64_t i = 0; i < s.rows(); ++i) {
    b.tokens[i] = static_cast<int32_t>(st.uniform(2 * i) * a.vocab_size) % a.vocab_size;
    b.labels[i] = i % 13 == 4 ? -100 : static_cast<int32_t>(st.uniform(2 * i + 1) * a.vocab_size) % a.vocab_size;
  }
  return b;
}

config::RunPlan one_model_plan(int tp, bool loss_parallel, ActivationCheckpointing::Mode ac) {
  config::RunPlan p;
  p.device = config::RunPlan::Device::cuda;
  p.cuda_model = config::RunPlan::CudaModel::model;
  p.attention = AttentionLibrary::titan;
  p.tensor_parallel_degree = tp;
  p.loss_parallel = loss_parallel;
  p.ac.mode = ac;
  return p;
}

constexpr int kSteps = 3;
constexpr double kMaxNorm = 1.0, kLr = 1e-3;

struct Trace {
  std::vector<double> mean_loss, grad_norm;
  std::vector<std::vector<float>> exp_avg_after_first;  // per parameter, whole tensors (plain) or slices
};

// The plain one-model engine on the whole batch.
Trace run_plain(const ModelArgs& a, uint64_t seed, const std::vector<Batch>& steps, BatchShape s, float scale) {
  Transformer host(a);
  host.init_weights(seed);
  optim::AdamW opt(optim::AdamWConfig{});
  auto engine = train::make_cuda_model_engine(one_model_plan(1, true, ActivationCheckpointing::Mode::none), host, opt, 0,
                                              nullptr, nullptr, nullptr);
  Trace t;
  for (int step = 0; step < kSteps; ++step) {
    engine->zero_grad();
    const auto r = engine->forward_backward(steps[step].tokens.data(), steps[step].labels.data(), s, scale, nullptr);
    const double norm = std::sqrt(engine->grad_sq_sum());
    engine->update(norm, kMaxNorm, kLr);
    t.mean_loss.push_back(r.loss_sum / double(r.count));
    t.grad_norm.push_back(norm);
    if (step == 0) {
      engine->to_host();
      for (const auto& p : host.parameters())
        t.exp_avg_after_first.emplace_back(p.exp_avg.f32(), p.exp_avg.f32() + p.exp_avg.numel());
    }
  }
  return t;
}

// Runs `world` threads; the first error of any rank fails the test (the rank leaves the
// meetings it belongs to, so the others are released).
using Meeting = ThreadCollectives::Meeting;
template <typename Rank, typename MemberOf>
void run_ranks(int world, MemberOf member_of, Rank rank) {
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        rank(r);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
        for (Meeting* m : member_of(r)) m->fail();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) ASSERT_TRUE(errors[static_cast<size_t>(r)].empty()) << "rank " << r << ": " << errors[r];
}

struct Mesh {
  int shard = 1, tp = 2;
  bool loss_parallel = true;
  ActivationCheckpointing::Mode ac = ActivationCheckpointing::Mode::none;
};

// shard x tp thread ranks, TP innermost as the trainer's mesh: rank = dp * tp + t. Each data-
// parallel rank takes its rows of every batch; the TP ranks of a group share them.
void check_against_plain(const Mesh& mesh) {
  const ModelArgs a = tp_args();
  const BatchShape whole{4, 64};
  const BatchShape mine{whole.batch / mesh.shard, whole.seq};
  const uint64_t seed = fresh_seed() + static_cast<uint64_t>(mesh.tp * 10 + mesh.shard);
  std::vector<Batch> steps;
  for (int i = 0; i < kSteps; ++i) steps.push_back(random_batch(a, whole, concat("step", i)));
  int64_t counted = 0;
  for (int64_t i = 0; i < whole.rows(); ++i) counted += steps[0].labels[static_cast<size_t>(i)] != -100;
  const float scale = 1.0f / static_cast<float>(counted);  // the labels' pattern is the same every step
  const Trace want = run_plain(a, seed, steps, whole, scale);

  const int world = mesh.shard * mesh.tp;
  std::vector<std::unique_ptr<Meeting>> tp_meetings, fsdp_meetings;  // per data-parallel rank, per TP rank
  for (int g = 0; g < mesh.shard; ++g) tp_meetings.push_back(std::make_unique<Meeting>(mesh.tp));
  for (int g = 0; g < mesh.tp; ++g) fsdp_meetings.push_back(std::make_unique<Meeting>(mesh.shard));
  Meeting everyone(world);  // the step's gradient norm: every rank's share summed
  auto member_of = [&](int r) {
    return std::vector<Meeting*>{tp_meetings[static_cast<size_t>(r / mesh.tp)].get(),
                                 fsdp_meetings[static_cast<size_t>(r % mesh.tp)].get(), &everyone};
  };
  std::vector<double> loss(kSteps, 0.0), sq(kSteps, 0.0);
  std::vector<int64_t> count(kSteps, 0);
  std::mutex mu;
  run_ranks(world, member_of, [&](int r) {
    const int dp = r / mesh.tp, t = r % mesh.tp;
    ThreadCollectives tp_group(*tp_meetings[static_cast<size_t>(dp)], t);
    ThreadCollectives fsdp_group(*fsdp_meetings[static_cast<size_t>(t)], dp);
    Transformer host(a, dp, mesh.shard, TensorParallelRank{t, mesh.tp});
    host.init_weights(seed);
    optim::AdamW opt(optim::AdamWConfig{});
    auto engine = train::make_cuda_model_engine(one_model_plan(mesh.tp, mesh.loss_parallel, mesh.ac), host, opt, 0,
                                                mesh.shard > 1 ? &fsdp_group : nullptr, nullptr, &tp_group);
    for (int step = 0; step < kSteps; ++step) {
      engine->zero_grad();
      const int64_t offset = dp * mine.rows();
      const auto res = engine->forward_backward(steps[step].tokens.data() + offset, steps[step].labels.data() + offset,
                                                mine, scale, nullptr);
      engine->reduce_tensor_parallel_gradients();
      const double mine_sq = engine->grad_sq_sum();
      {
        std::lock_guard<std::mutex> lock(mu);
        sq[step] += mine_sq;
        if (t == 0) {  // each TP rank holds the group's whole loss
          loss[step] += res.loss_sum;
          count[step] += res.count;
        }
      }
      if (step == 0 && mesh.shard == 1) {  // every TP boundary and the replicated all-reduce, as the trainer logs them
        const double bytes = engine->take_comm_bytes();
        const double analytic = parallel::TensorParallel::analytic_volume(a, mine, ActivationCheckpointing{mesh.ac, 1}, mesh.tp,
                                                                          1, 1, mesh.loss_parallel, 2);
        if (std::abs(bytes - analytic) > 1e-9 * analytic)
          throw std::runtime_error(concat("rank ", r, ": ", bytes, " bytes moved, analytic ", analytic));
      }
      everyone.arrive_and_wait();  // every rank's share is in
      engine->update(std::sqrt(sq[step]), kMaxNorm, kLr);
      if (step == 0) {
        engine->to_host();
        for (size_t i = 0; i < host.parameters().size(); ++i) {
          const Parameter& p = host.parameters()[i];
          const auto& whole_avg = want.exp_avg_after_first[i];
          std::vector<float> got(p.exp_avg.f32(), p.exp_avg.f32() + p.exp_avg.numel()), ref;
          for (int64_t e = 0; e < p.exp_avg.numel(); ++e)
            ref.push_back(whole_avg[static_cast<size_t>(p.global_index(e))]);
          if (!ref.empty() && rel_l2(got, ref) > 3e-2)
            throw std::runtime_error(concat(p.name, ": rank ", r, " (dp ", dp, ", tp ", t, "), first moment rel l2 ",
                                            rel_l2(got, ref), ", seed ", seed));
        }
      }
    }
  });
  for (int step = 0; step < kSteps; ++step) {
    EXPECT_NEAR(loss[step] / double(count[step]), want.mean_loss[step], 2e-3) << "step " << step << ", seed " << seed;
    EXPECT_NEAR(std::sqrt(sq[step]), want.grad_norm[step], 1e-2 * want.grad_norm[step]) << "step " << step;
  }
}
}  // namespace

TEST(TensorParallelCuda, EmbeddingSliceKernelsMatchTheCpu) {
  TITAN_REQUIRE_GPU();
  const int64_t vocab = 50, d = 24, n = 40, first = 20, rows = 15;
  std::vector<int32_t> tokens(n);
  NamedStream st(fresh_seed(), "tokens");
  for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>(st.uniform(i) * vocab) % vocab;
  auto table = randn("table", rows * d);
  auto table_bf = to_bf16(table);
  const auto rounded = from_bf16(table_bf);
  std::vector<float> want(n * d);
  cpu::embedding_forward_slice(tokens.data(), rounded.data(), want.data(), n, d, first, rows);
  DeviceArray<int32_t> d_tokens(tokens);
  DeviceArray<uint16_t> d_table(table_bf), d_out(std::vector<uint16_t>(n * d, 0xFFFF));
  cuda::embedding_forward(d_tokens.get(), d_table.get(), d_out.get(), n, d, nullptr, first, rows);
  EXPECT_EQ(from_bf16(d_out.download()), want) << "zero rows for the tokens outside [first, first + rows)";
}

TEST(TensorParallelCuda, EmbeddingBackwardOverASliceMatchesTheCpu) {
  TITAN_REQUIRE_GPU();
  const int64_t vocab = 50, d = 24, n = 64, first = 25, rows = 25;
  std::vector<int32_t> tokens(n);
  NamedStream st(fresh_seed(), "tokens");
  for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>(st.uniform(i) * vocab) % vocab;
  tokens[3] = tokens[40] = static_cast<int32_t>(first);  // a repeated token at the slice's first row
  tokens[5] = static_cast<int32_t>(first - 1);           // and one just before it
  auto dout = randn("dout", n * d);
  auto dout_bf = to_bf16(dout);
  auto want = randn("dw", rows * d);  // the kernel adds to what is there
  const std::vector<float> before = want;
  cpu::embedding_backward_slice(tokens.data(), from_bf16(dout_bf).data(), want.data(), n, d, first, rows);
  EmbeddingIndex index;
  std::vector<int32_t> counts;
  build_embedding_index(tokens.data(), n, vocab, true, index, counts);
  DeviceArray<int32_t> ids(index.ids), offsets(index.offsets), positions(index.positions);
  DeviceArray<uint16_t> d_dout(dout_bf);
  DeviceArray<float> dw(before);
  cuda::embedding_backward(ids.get(), offsets.get(), positions.get(), static_cast<int64_t>(index.ids.size()),
                           d_dout.get(), dw.get(), d, nullptr, first, rows);
  EXPECT_EQ(dw.download(), want) << "the slice's rows summed in position order; other tokens' groups skipped";
}

// Three ranks' slices of one row's vocabulary: each slice's statistics, combined in rank order,
// give the whole row's log-sum-exp and loss; each slice's gradient is its columns of the
// whole softmax - onehot.
TEST(TensorParallelCuda, LossParallelCombinesSlicesAsTheWholeVocabulary) {
  TITAN_REQUIRE_GPU();
  const int degree = 3;
  const int64_t n = 7, vocab = 41, total = vocab * degree;
  const float scale = 0.25f;
  std::vector<int32_t> labels = {0, 40, 41, 122, -100, 82, 60};
  std::vector<std::vector<uint16_t>> slices;
  std::vector<std::vector<float>> slice_values;
  for (int k = 0; k < degree; ++k) {
    auto z = randn(concat("slice", k), n * vocab, 4.0f);
    slices.push_back(to_bf16(z));
    slice_values.push_back(from_bf16(slices.back()));
  }
  DeviceArray<int32_t> d_labels(labels);
  DeviceArray<double> all(std::vector<double>(2 * n * degree, -1.0));
  for (int k = 0; k < degree; ++k) {
    DeviceArray<uint16_t> z(slices[static_cast<size_t>(k)]);
    cuda::vocab_slice_stats(z.get(), d_labels.get(), n, vocab, k * vocab, all.get() + k * 2 * n, nullptr);
  }
  DeviceArray<float> lse(n), loss(n);
  cuda::combine_vocab_stats(all.get(), d_labels.get(), n, degree, -100, lse.get(), loss.get(), nullptr);
  const auto got_lse = lse.download(), got_loss = loss.download();
  for (int64_t r = 0; r < n; ++r) {
    auto z = [&](int64_t id) { return double(slice_values[static_cast<size_t>(id / vocab)][r * vocab + id % vocab]); };
    double mx = -INFINITY, sum = 0;
    for (int64_t j = 0; j < total; ++j) mx = std::max(mx, z(j));
    for (int64_t j = 0; j < total; ++j) sum += std::exp(z(j) - mx);
    const double whole = mx + std::log(sum);
    EXPECT_NEAR(got_lse[r], whole, 1e-5 * std::abs(whole) + 1e-6) << "row " << r;
    EXPECT_NEAR(got_loss[r], labels[r] == -100 ? 0.0 : whole - z(labels[r]), 1e-5 * std::abs(whole) + 1e-6) << "row " << r;
  }
  const int k = 1;  // the middle slice's gradient
  DeviceArray<uint16_t> z(slices[k]);
  cuda::vocab_slice_gradient(z.get(), d_labels.get(), lse.get(), n, vocab, k * vocab, -100, scale, nullptr);
  const auto got = from_bf16(z.download());
  std::vector<float> want;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < vocab; ++j) {
      double g = labels[r] == -100 ? 0.0 : std::exp(double(slice_values[k][r * vocab + j]) - double(got_lse[r])) * scale;
      if (labels[r] != -100 && labels[r] == k * vocab + j) g -= scale;
      want.push_back(static_cast<float>(g));
    }
  EXPECT_LT(rel_l2(got, want), 1e-2) << "bf16 gradient of slice " << k;
  for (int64_t j = 0; j < vocab; ++j) EXPECT_EQ(got[4 * vocab + j], 0.0f) << "the ignored row's gradient";
  EXPECT_LT(got[5 * vocab + (82 - 41)], 0.0f) << "row 5's label (82) lies in slice 1: its gradient is softmax - 1";
}

TEST(TensorParallelCuda, LossParallelStatisticsMatchAFloat64Reference) {
  TITAN_REQUIRE_GPU();
  const int64_t rows = 9, vocab = 37, begin = 74;
  auto z = randn("logits", rows * vocab, 3.0f);
  auto z_bf = to_bf16(z);
  const auto zr = from_bf16(z_bf);
  std::vector<int32_t> labels = {74, 80, 110, 3, -100, 90, 111, 75, 100};
  DeviceArray<uint16_t> d_z(z_bf);
  DeviceArray<int32_t> d_labels(labels);
  DeviceArray<double> d_stats(std::vector<double>(2 * rows, -1.0));
  cuda::vocab_slice_stats(d_z.get(), d_labels.get(), rows, vocab, begin, d_stats.get(), nullptr);
  const auto stats = d_stats.download();
  for (int64_t r = 0; r < rows; ++r) {
    double mx = -INFINITY, sum = 0;
    for (int64_t j = 0; j < vocab; ++j) mx = std::max<double>(mx, zr[r * vocab + j]);
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(zr[r * vocab + j] - mx);
    EXPECT_NEAR(stats[2 * r], mx + std::log(sum), 1e-5) << "row " << r;
    const int64_t l = labels[r] - begin;
    EXPECT_EQ(stats[2 * r + 1], l >= 0 && l < vocab ? double(zr[r * vocab + l]) : 0.0) << "row " << r;
  }
}

TEST(TensorParallelCuda, TwoRanksEqualThePlainModel) {
  TITAN_REQUIRE_GPU();
  check_against_plain({1, 2, true});
}

TEST(TensorParallelCuda, TwoRanksWithoutLossParallel) {
  TITAN_REQUIRE_GPU();
  check_against_plain({1, 2, false});
}

TEST(TensorParallelCuda, FourRanksGqaWithFullRecompute) {
  TITAN_REQUIRE_GPU();
  check_against_plain({1, 4, true, ActivationCheckpointing::Mode::full});
}

TEST(TensorParallelCuda, FsdpTwoByTensorParallelTwo) {
  TITAN_REQUIRE_GPU();
  check_against_plain({2, 2, true});
}

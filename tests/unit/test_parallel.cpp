// Data parallelism inside one process: FSDP's hooks over a group of one (every gather, reshard
// and reduce-scatter path) against the plain model, the mesh arithmetic, the local group's
// collectives and the multi-rank checkpoint commit. Multi-rank runs: tests/dist.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "titan/checkpoint/checkpoint.h"
#include "titan/core/error.h"
#include "titan/models/llama3/transformer.h"
#include "titan/parallel/data_parallel.h"
#include "titan/parallel/fsdp.h"
#include "titan/train/memory_estimate.h"

using namespace titan;
using namespace titan::llama3;
using titan::parallel::FsdpOptions;
using titan::parallel::FullyShardedDataParallel;

namespace {
ModelArgs small_args() {
  ModelArgs a;
  a.dim = 48;
  a.n_layers = 3;
  a.n_heads = 6;
  a.n_kv_heads = 2;
  a.vocab_size = 37;
  a.multiple_of = 32;
  return a;
}

struct Batch {
  std::vector<int32_t> tokens, labels;
};
Batch random_batch(BatchShape s, int64_t vocab, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(vocab - 1));
  Batch b;
  for (int64_t i = 0; i < s.rows(); ++i) {
    b.tokens.push_back(id(gen));
    b.labels.push_back(id(gen));
  }
  return b;
}

int64_t unit_elements(const std::vector<Parameter*>& unit) {
  int64_t n = 0;
  for (const Parameter* p : unit) n += p->numel();
  return n;
}
}  // namespace

// A group of one: FSDP gathers into its own buffers and reduce-scatters into the shards, so the
// losses and every gradient must equal the plain model's bit for bit, in every AC mode.
TEST(Fsdp, GroupOfOneEqualsThePlainModel) {
  using Mode = ActivationCheckpointing::Mode;
  const ModelArgs a = small_args();
  const BatchShape s{2, 9};
  auto group = parallel::make_local_group();
  for (const auto ac : {ActivationCheckpointing{}, ActivationCheckpointing{Mode::full, 1},
                        ActivationCheckpointing{Mode::selective_op, 1}}) {
    for (const FsdpOptions opt : {FsdpOptions{}, FsdpOptions{true, true}, FsdpOptions{false, false}}) {
      Transformer plain(a), sharded(a);
      plain.init_weights(7);
      sharded.init_weights(7);
      plain.set_activation_checkpointing(ac);
      sharded.set_activation_checkpointing(ac);
      FullyShardedDataParallel fsdp(sharded.units(), *group, opt);
      sharded.set_hooks(&fsdp);
      for (uint32_t step = 0; step < 2; ++step) {
        const Batch b = random_batch(s, a.vocab_size, 100 + step);
        plain.zero_grad();
        sharded.zero_grad();
        const auto want = plain.forward_backward(b.tokens.data(), b.labels.data(), s, 1.0f / 18);
        const auto got = sharded.forward_backward(b.tokens.data(), b.labels.data(), s, 1.0f / 18);
        ASSERT_EQ(want.loss_sum, got.loss_sum) << "mode " << static_cast<int>(ac.mode);
        EXPECT_EQ(fsdp.unsharded_bytes(), 0u) << "whole weights or grads left after the step";
        for (auto& p : sharded.parameters()) {
          const Parameter& q = plain.parameter(p.name);
          ASSERT_EQ(0, std::memcmp(p.grad.f32(), q.grad.f32(), p.grad.bytes())) << p.name;
          EXPECT_FALSE(p.full.defined()) << p.name << ": whole weight kept after backward";
        }
        const auto val_want = plain.forward_loss(b.tokens.data(), b.labels.data(), s);
        const auto val_got = sharded.forward_loss(b.tokens.data(), b.labels.data(), s);
        EXPECT_EQ(val_want.loss_sum, val_got.loss_sum);
        EXPECT_EQ(fsdp.unsharded_bytes(), 0u) << "a forward-only pass kept whole weights";
      }
    }
  }
}

// What FSDP holds at once is the root and one block, weights and gradients: the CPU estimate's
// term exactly. Without resharding after forward every block's weights stay until backward.
TEST(Fsdp, PeakGatheredBytesAreTheRootAndOneBlock) {
  const ModelArgs a = small_args();
  const BatchShape s{1, 5};
  auto group = parallel::make_local_group();
  for (const bool reshard : {true, false}) {
    Transformer m(a);
    m.init_weights(1);
    const auto units = m.units();
    ASSERT_EQ(units.size(), static_cast<size_t>(a.n_layers + 1));
    FullyShardedDataParallel fsdp(units, *group, FsdpOptions{reshard, false});
    m.set_hooks(&fsdp);
    const Batch b = random_batch(s, a.vocab_size, 3);
    m.forward_backward(b.tokens.data(), b.labels.data(), s, 0.2f);
    const int64_t root = unit_elements(units[0]), block = unit_elements(units[1]);
    const int64_t expect = reshard ? 2 * (root + block) : root + a.n_layers * block + root + block;
    EXPECT_EQ(fsdp.peak_unsharded_bytes(), static_cast<size_t>(4 * expect)) << "reshard " << reshard;
    if (reshard) {
      const auto one = train::estimate_memory(a, s, {}, train::EstimateBackend::cpu, 1);
      const auto two = train::estimate_memory(a, s, {}, train::EstimateBackend::cpu, 2);
      const double gathered = two.parameters + two.gradients - (one.parameters + one.gradients) / 2;
      EXPECT_EQ(gathered, static_cast<double>(fsdp.peak_unsharded_bytes()));
    }
  }
}

// Micro-batches accumulate in the grad shards: two halves give the whole batch's gradient.
TEST(Fsdp, MicroBatchesAccumulateInTheShards) {
  const ModelArgs a = small_args();
  const BatchShape whole{4, 6}, half{2, 6};
  auto group = parallel::make_local_group();
  Transformer plain(a), sharded(a);
  plain.init_weights(5);
  sharded.init_weights(5);
  FullyShardedDataParallel fsdp(sharded.units(), *group, FsdpOptions{});
  sharded.set_hooks(&fsdp);
  const Batch b = random_batch(whole, a.vocab_size, 11);
  plain.zero_grad();
  sharded.zero_grad();
  plain.forward_backward(b.tokens.data(), b.labels.data(), whole, 1.0f / 24);
  for (int i = 0; i < 2; ++i)
    sharded.forward_backward(b.tokens.data() + i * 12, b.labels.data() + i * 12, half, 1.0f / 24);
  for (auto& p : sharded.parameters()) {
    const Parameter& q = plain.parameter(p.name);
    for (int64_t j = 0; j < p.grad.numel(); ++j)
      ASSERT_NEAR(p.grad.f32()[j], q.grad.f32()[j], 1e-6f + 1e-4f * std::fabs(q.grad.f32()[j])) << p.name << "[" << j << "]";
  }
}

TEST(Fsdp, RefusesShardsOfAnotherLayout) {
  Transformer m(small_args(), 1, 3);  // shards of rank 1 of 3, a group of one
  auto group = parallel::make_local_group();
  EXPECT_THROW(FullyShardedDataParallel(m.units(), *group, FsdpOptions{}), InternalError);
}

TEST(Mesh, DegreesResolveAgainstTheWorld) {
  using parallel::resolve_mesh;
  auto mesh = resolve_mesh(8, 1, -1);
  EXPECT_EQ(mesh.replicate, 1);
  EXPECT_EQ(mesh.shard, 8);
  mesh = resolve_mesh(8, 2, -1);
  EXPECT_EQ(mesh.replicate, 2);
  EXPECT_EQ(mesh.shard, 4);
  mesh = resolve_mesh(6, -1, 3);
  EXPECT_EQ(mesh.replicate, 2);
  mesh = resolve_mesh(4, 4, 1);
  EXPECT_EQ(mesh.shard, 1);
  for (auto [world, r, s] : {std::tuple{8, 3, -1}, std::tuple{8, -1, 3}, std::tuple{8, 2, 2}, std::tuple{4, -1, -1},
                             std::tuple{4, 0, 4}, std::tuple{4, 1, -2}}) {
    try {
      resolve_mesh(world, r, s);
      ADD_FAILURE() << world << " ranks, replicate " << r << ", shard " << s << " accepted";
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("data_parallel_shard_degree"), std::string::npos) << e.what();
    }
  }
}

TEST(ProcessGroup, GroupOfOneCollectivesCopy) {
  auto g = parallel::make_local_group();
  const std::vector<float> in = {1.5f, -2.0f, 3.25f};
  std::vector<float> out(3, 0.0f);
  g->all_gather(in.data(), out.data(), {3});
  EXPECT_EQ(out, in);
  std::fill(out.begin(), out.end(), 0.0f);
  g->reduce_scatter_sum(in.data(), out.data(), {3});
  EXPECT_EQ(out, in);
  auto sub = g->split(0, 0);
  EXPECT_EQ(sub->size(), 1);
  EXPECT_THROW(g->all_gather(in.data(), out.data(), {1, 2}), InternalError);
}

// Saving ranks commit through per-rank entry files; rank 0 waits for all of them.
TEST(CheckpointCommit, RankZeroCollectsEveryRanksEntriesOrTimesOut) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("titan_commit_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::vector<std::vector<checkpoint::ShardEntry>> parts(3);
  for (int r = 0; r < 3; ++r)
    parts[r].push_back({"model/w", {7, 2}, r, r * 3, std::min(7, r * 3 + 3), 0, 24, 0x1234abcdULL + r});
  checkpoint::write_rank_entries(dir.string(), 0, parts[0]);
  checkpoint::write_rank_entries(dir.string(), 2, parts[2]);
  try {
    checkpoint::collect_rank_entries(dir.string(), 3, 0.05);
    ADD_FAILURE() << "collected without rank 1's entries";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 of 3 did not write"), std::string::npos) << e.what();
  }
  checkpoint::write_rank_entries(dir.string(), 0, parts[0]);  // the failed collect consumed it
  checkpoint::write_rank_entries(dir.string(), 1, parts[1]);
  const auto all = checkpoint::collect_rank_entries(dir.string(), 3, 5.0);
  ASSERT_EQ(all.size(), 3u);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(all[r].rank, r);
    EXPECT_EQ(all[r].row_begin, r * 3);
    EXPECT_EQ(all[r].checksum, 0x1234abcdULL + r);
    EXPECT_EQ(all[r].global_shape, (Shape{7, 2}));
  }
  EXPECT_TRUE(fs::is_empty(dir)) << "entry files left behind";
  fs::remove_all(dir);
}

// Data parallelism inside one process: FSDP's hooks over a group of one (every gather, reshard
// and reduce-scatter path) against the plain model, the mesh arithmetic, the local group's
// collectives and the multi-rank checkpoint commit. Multi-rank runs: tests/dist.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <thread>

#include "titan/checkpoint/checkpoint.h"
#include "titan/core/error.h"
#include "titan/models/llama3/transformer.h"
#include "titan/parallel/data_parallel.h"
#include "titan/parallel/fsdp.h"
#include "titan/parallel/launch_env.h"
#include "titan/parallel/split_plan.h"
#include "titan/parallel/tensor_parallel.h"
#include "titan/train/memory_estimate.h"

#include "../support/scoped_env.h"

using namespace titan;
using namespace titan::llama3;
using titan::parallel::FullyShardedDataParallel;
using titan::parallel::HostUnitStore;

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
    for (const ReshardPolicy opt : {ReshardPolicy{}, ReshardPolicy{true, true, true}, ReshardPolicy{false, false, false}}) {
      Transformer plain(a), sharded(a);
      plain.init_weights(7);
      sharded.init_weights(7);
      plain.set_activation_checkpointing(ac);
      sharded.set_activation_checkpointing(ac);
      HostUnitStore store(sharded.units(), *group);
      FullyShardedDataParallel fsdp(store, opt);
      sharded.set_hooks(&fsdp);
      for (uint32_t step = 0; step < 2; ++step) {
        const Batch b = random_batch(s, a.vocab_size, 100 + step);
        plain.zero_grad();
        sharded.zero_grad();
        const auto want = plain.forward_backward(b.tokens.data(), b.labels.data(), s, 1.0f / 18);
        const auto got = sharded.forward_backward(b.tokens.data(), b.labels.data(), s, 1.0f / 18);
        ASSERT_EQ(want.loss_sum, got.loss_sum) << "mode " << static_cast<int>(ac.mode);
        EXPECT_EQ(store.unsharded_bytes(), 0u) << "whole weights or grads left after the step";
        for (auto& p : sharded.parameters()) {
          const Parameter& q = plain.parameter(p.name);
          ASSERT_EQ(0, std::memcmp(p.grad.f32(), q.grad.f32(), p.grad.bytes())) << p.name;
          EXPECT_FALSE(p.full.defined()) << p.name << ": whole weight kept after backward";
        }
        const auto val_want = plain.forward_loss(b.tokens.data(), b.labels.data(), s);
        const auto val_got = sharded.forward_loss(b.tokens.data(), b.labels.data(), s);
        EXPECT_EQ(val_want.loss_sum, val_got.loss_sum);
        EXPECT_EQ(store.unsharded_bytes(), 0u) << "a forward-only pass kept whole weights";
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
    HostUnitStore store(units, *group);
    FullyShardedDataParallel fsdp(store, ReshardPolicy{reshard, false, false});
    m.set_hooks(&fsdp);
    const Batch b = random_batch(s, a.vocab_size, 3);
    m.forward_backward(b.tokens.data(), b.labels.data(), s, 0.2f);
    const int64_t root = unit_elements(units[0]), block = unit_elements(units[1]);
    const int64_t expect = reshard ? 2 * (root + block) : root + a.n_layers * block + root + block;
    EXPECT_EQ(store.peak_unsharded_bytes(), static_cast<size_t>(4 * expect)) << "reshard " << reshard;
    const auto one = train::estimate_memory(a, s, {}, train::EstimateBackend::cpu, 1);
    const auto two = train::estimate_memory(a, s, {}, train::EstimateBackend::cpu, 2, !reshard);
    const double gathered = two.parameters + two.gradients - (one.parameters + one.gradients) / 2;
    EXPECT_EQ(gathered, static_cast<double>(store.peak_unsharded_bytes())) << "reshard " << reshard;
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
  HostUnitStore store(sharded.units(), *group);
  FullyShardedDataParallel fsdp(store, ReshardPolicy{});
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
  EXPECT_THROW(HostUnitStore(m.units(), *group), InternalError);
}

// A tensor-parallel degree must split everything it slices: each refusal names the number.
TEST(Mesh, TensorParallelDegreesThatDoNotSplitAreRefusedNamingTheNumber) {
  llama3::ModelArgs a;  // the debug model: 16 heads, 16 KV heads, feed-forward 768, vocabulary 2048
  const llama3::BatchShape s{2, 32};
  EXPECT_NO_THROW(parallel::check_tensor_parallel(4, 8, a, s, "cfg"));
  auto error = [&](int tp, int world, llama3::ModelArgs args, llama3::BatchShape shape) {
    try {
      parallel::check_tensor_parallel(tp, world, args, shape, "cfg:3");
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error(3, 6, a, s).find("cfg:3: training.tensor_parallel_degree = 3 does not divide model.n_heads (16)"),
            std::string::npos);
  llama3::ModelArgs gqa = a;
  gqa.n_kv_heads = 4;
  EXPECT_NE(error(8, 8, gqa, s).find("does not divide model.n_kv_heads (4)"), std::string::npos);
  llama3::ModelArgs odd_vocab = a;
  odd_vocab.vocab_size = 2049;
  EXPECT_NE(error(2, 2, odd_vocab, s).find("does not divide model.vocab_size (2049)"), std::string::npos);
  EXPECT_NE(error(2, 2, a, {1, 7}).find("the rows sequence parallel splits (7)"), std::string::npos);
  EXPECT_NE(error(2, 3, a, s).find("does not divide the ranks (3)"), std::string::npos);
  EXPECT_NE(error(0, 1, a, s).find("expected 1 or more"), std::string::npos);
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

// The host side of a split without MPI (an NCCL world from torchrun-style variables): each rank
// learns its place as MPI_Comm_split gives it (by key, ties by parent rank) and every color's
// leader (its lowest parent rank), colors in ascending order, so each rank joins the same
// broadcasts in the same order.
TEST(ProcessGroup, SplitPlanRanksAsMpiCommSplit) {
  auto table = [](const std::vector<std::pair<int, int>>& ck) {
    std::vector<int32_t> t;
    for (const auto& [c, k] : ck) {
      t.push_back(c);
      t.push_back(k);
    }
    return t;
  };
  // The trainer's mesh at 8 ranks, TP 2: TP groups of neighbours, then the data-parallel ranks.
  std::vector<std::pair<int, int>> tp, dp;
  for (int r = 0; r < 8; ++r) {
    tp.push_back({r / 2, r});
    dp.push_back({r % 2, r});
  }
  for (int r = 0; r < 8; ++r) {
    const auto t = parallel::plan_split(table(tp), r);
    EXPECT_EQ(t.size, 2);
    EXPECT_EQ(t.rank, r % 2);
    EXPECT_EQ(t.leaders, (std::vector<int>{0, 2, 4, 6}));
    EXPECT_EQ(t.mine, static_cast<size_t>(r / 2));
    const auto d = parallel::plan_split(table(dp), r);
    EXPECT_EQ(d.size, 4);
    EXPECT_EQ(d.rank, r / 2);
    EXPECT_EQ(d.leaders, (std::vector<int>{0, 1}));
    EXPECT_EQ(d.mine, static_cast<size_t>(r % 2));
  }
  // Keys out of order, ties broken by the parent rank, colors not in rank order.
  const std::vector<std::pair<int, int>> mixed = {{7, 5}, {3, 0}, {7, 1}, {7, 5}, {3, -2}, {9, 0}};
  const std::vector<int> want_rank = {1, 1, 0, 2, 0, 0}, want_size = {3, 2, 3, 3, 2, 1};
  for (int r = 0; r < 6; ++r) {
    const auto p = parallel::plan_split(table(mixed), r);
    EXPECT_EQ(p.rank, want_rank[static_cast<size_t>(r)]) << "parent rank " << r;
    EXPECT_EQ(p.size, want_size[static_cast<size_t>(r)]) << "parent rank " << r;
    EXPECT_EQ(p.leaders, (std::vector<int>{1, 0, 5})) << "colors 3, 7, 9";
    EXPECT_EQ(p.leaders[p.mine], r == 1 || r == 4 ? 1 : r == 5 ? 5 : 0);
  }
  EXPECT_THROW(parallel::plan_split({1, 2, 3}, 0), InternalError);
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
// The folder protocol of a multi-rank save: writers mark the folder, the lowest of them waits
// for the others' files, then the marks go (metadata.json describes the folder from then on).
TEST(CheckpointCommit, TheLowestWriterOfAFolderWaitsForItsWritersOrTimesOut) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("titan_commit_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  checkpoint::mark_writer(dir.string(), 2);
  checkpoint::mark_writer(dir.string(), 0);
  EXPECT_EQ(checkpoint::folder_writers(dir.string()), (std::vector<int>{0, 2}));
  checkpoint::mark_written(dir.string(), 0);
  try {
    checkpoint::wait_for_writers(dir.string(), {0, 2}, 3, 0.05);
    ADD_FAILURE() << "committed without rank 2's file";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 2 of 3 did not write"), std::string::npos) << e.what();
  }
  checkpoint::mark_written(dir.string(), 2);
  checkpoint::wait_for_writers(dir.string(), {0, 2}, 3, 5.0);
  EXPECT_TRUE(fs::is_empty(dir)) << "marks left behind";
  // Entries travel between ranks as text and come back whole.
  const std::vector<checkpoint::ShardEntry> entries = {{"model/w", {7, 2}, 1, 3, 6, 0, 3 * 2 * 4, 0x1234abcdULL, 0, 2}};
  const auto back = checkpoint::entries_from_text(checkpoint::entries_text(entries), "test");
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].rank, 1);
  EXPECT_EQ(back[0].row_begin, 3);
  EXPECT_EQ(back[0].checksum, 0x1234abcdULL);
  EXPECT_THROW(checkpoint::entries_from_text("[{\"tensor\": 1}]", "test"), UserError);
  fs::remove_all(dir);
}

namespace {
using titan::test_support::ScopedEnv;

int free_port() {
  // The kernel's choice of an unused port (closed again, so the test's rank 0 can take it).
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}
}  // namespace

TEST(LaunchEnv, ReadsTorchrunVariablesAndRefusesBadOnes) {
  using parallel::LaunchEnv;
  ScopedEnv clear({{"OMPI_COMM_WORLD_SIZE", nullptr}, {"PMI_SIZE", nullptr}, {"PMIX_SIZE", nullptr},
                   {"SLURM_NTASKS", nullptr}, {"WORLD_SIZE", nullptr}, {"RANK", nullptr}, {"LOCAL_RANK", nullptr},
                   {"MASTER_ADDR", nullptr}, {"MASTER_PORT", nullptr}, {"TITAN_RDZV_PORT", nullptr}});
  {
    // Under srun, torchrun's workers also see Slurm's task count: torchrun's variables win.
    ScopedEnv env({{"WORLD_SIZE", "4"}, {"RANK", "2"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "node7"},
                   {"MASTER_PORT", "29511"}, {"SLURM_NTASKS", "2"}});
    const LaunchEnv e = parallel::detect_launch();
    EXPECT_EQ(e.kind, LaunchEnv::Kind::torchrun);
    EXPECT_EQ(e.world, 4);
    EXPECT_EQ(e.rank, 2);
    EXPECT_EQ(e.local_rank, 1);
    EXPECT_EQ(e.master_addr, "node7");
    EXPECT_EQ(e.master_port, 29512) << "titan's rendezvous takes the port after torchrun's store";
    ScopedEnv port({{"TITAN_RDZV_PORT", "31000"}});
    EXPECT_EQ(parallel::detect_launch().master_port, 31000);
  }
  {
    ScopedEnv env({{"WORLD_SIZE", nullptr}});
    EXPECT_EQ(parallel::detect_launch().kind, LaunchEnv::Kind::single);
  }
  {
    ScopedEnv env({{"OMPI_COMM_WORLD_SIZE", "3"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "2"}});
    const LaunchEnv e = parallel::detect_launch();
    EXPECT_EQ(e.kind, LaunchEnv::Kind::mpi);
    EXPECT_EQ(e.world, 3);
    EXPECT_EQ(e.local_rank, 2);
  }
  const std::vector<std::pair<std::vector<std::pair<const char*, const char*>>, std::string>> bad = {
    {{{"WORLD_SIZE", "two"}, {"RANK", "0"}}, "WORLD_SIZE=two: expected an integer"},
    {{{"WORLD_SIZE", "2"}, {"RANK", "2"}}, "RANK=2 is not below WORLD_SIZE=2"},
    {{{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_ADDR", nullptr}}, "needs MASTER_ADDR"},
    {{{"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}}, "WORLD_SIZE=2 needs RANK"},
    {{{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "h"}, {"TITAN_RDZV_PORT", "0"}}, "TITAN_RDZV_PORT=0"},
    {{{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}}, "MASTER_PORT=70000"},
  };
  for (const auto& [vars, expect] : bad) {
    ScopedEnv reset({{"WORLD_SIZE", nullptr}, {"RANK", nullptr}, {"MASTER_ADDR", nullptr}, {"MASTER_PORT", nullptr},
                     {"TITAN_RDZV_PORT", nullptr}});
    std::vector<std::unique_ptr<ScopedEnv>> set;
    for (auto [name, value] : vars) set.push_back(std::make_unique<ScopedEnv>(std::initializer_list<std::pair<const char*, const char*>>{{name, value}}));
    try {
      parallel::detect_launch();
      ADD_FAILURE() << "accepted: " << expect;
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
    }
  }
}

// Four ranks as threads: rank 0's payload reaches every other rank, whichever starts first.
TEST(LaunchEnv, TcpBroadcastDeliversRankZerosPayload) {
  const int port = free_port();
  const std::string payload = std::string("nccl-unique-id:") + std::string(100, '\x01') + std::string(1, '\0') + "end";
  std::vector<std::string> got(4);
  std::vector<std::string> errors(4);
  std::vector<std::thread> ranks;
  for (int r = 3; r >= 0; --r) {  // rank 0 starts last: the others must retry
    ranks.emplace_back([&, r] {
      parallel::LaunchEnv env;
      env.kind = parallel::LaunchEnv::Kind::torchrun;
      env.world = 4;
      env.rank = r;
      env.master_addr = "127.0.0.1";
      env.master_port = port;
      try {
        got[r] = parallel::tcp_broadcast(env, r == 0 ? payload : "wrong", 20.0);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
    if (r == 1) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(got[r], payload) << "rank " << r;
  }
}

TEST(LaunchEnv, TcpBroadcastTimesOutNamingTheAddress) {
  parallel::LaunchEnv env;
  env.kind = parallel::LaunchEnv::Kind::torchrun;
  env.world = 2;
  env.rank = 1;
  env.master_addr = "127.0.0.1";
  env.master_port = free_port();  // nobody listens
  try {
    parallel::tcp_broadcast(env, "", 0.3);
    ADD_FAILURE() << "reached a rank 0 that does not exist";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("could not reach rank 0 at 127.0.0.1:" + std::to_string(env.master_port)),
              std::string::npos)
        << e.what();
  }
  env.rank = 0;  // rank 0 whose peers never come
  try {
    parallel::tcp_broadcast(env, "id", 0.3);
    ADD_FAILURE() << "served ranks that never came";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 0 heard from 0 of 1 ranks"), std::string::npos) << e.what();
  }
}

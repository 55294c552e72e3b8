// FSDP on the GPU: through NCCL over one rank (every gather, reshard and reduce-scatter path of
// a sharded run on one card, which must give the plain model's losses and gradients bit for
// bit: over one rank the collectives copy); 2 and 3 ranks as threads on one card with
// collectives that copy between them (rank offsets, padding, slices); the accumulate kernel
// against the CPU; NCCL's host-staged collectives. Multi-rank NCCL needs several GPUs.
#include <barrier>
#include <cmath>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "gpu_test_util.h"
#include "thread_collectives.h"
#include "titan/models/llama3/cuda_transformer.h"
#include "titan/models/llama3/transformer.h"
#include "titan/parallel/nccl_group.h"

using namespace titan;
using namespace titan::gpu_test;
using namespace titan::llama3;

namespace {
ModelArgs small_args() {
  ModelArgs a;
  a.dim = 128;
  a.n_layers = 3;
  a.n_heads = 4;
  a.n_kv_heads = 2;
  a.vocab_size = 301;
  a.multiple_of = 32;
  return a;
}

std::unique_ptr<parallel::NcclGroup> one_rank_nccl() {
  auto local = parallel::make_local_group();
  return parallel::make_nccl_group(*local, 60.0);  // UserError (a failure here) when NCCL cannot load
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
}  // namespace

TEST(Fsdp, AccumulateKernelMatchesCpu) {
  TITAN_REQUIRE_GPU();
  for (int64_t n : {1L, 1000L, 1L << 20}) {
    auto dst = randn("dst", n), src = randn("src", n);
    DeviceArray<float> d_dst(dst), d_src(src);
    cuda::accumulate_f32(d_dst.get(), d_src.get(), n, nullptr);
    const auto got = d_dst.download();
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], dst[i] + src[i]) << "n " << n << " i " << i;
  }
}

TEST(Fsdp, NcclHostCollectivesOverOneRank) {
  TITAN_REQUIRE_GPU();
  auto g = one_rank_nccl();
  ASSERT_EQ(g->size(), 1);
  std::vector<double> d = {1.5, -2.25};
  g->all_reduce_sum(d.data(), 2);
  EXPECT_EQ(d, (std::vector<double>{1.5, -2.25}));
  std::vector<float> in = {3.0f, 4.0f, 5.0f}, out(3, 0.0f);
  g->all_gather(in.data(), out.data(), {3});
  EXPECT_EQ(out, in);
  std::fill(out.begin(), out.end(), 0.0f);
  g->reduce_scatter_sum(in.data(), out.data(), {3});
  EXPECT_EQ(out, in);
  char id[5] = "abcd";
  g->broadcast(id, 4, 0);
  EXPECT_STREQ(id, "abcd");
  g->barrier();
}

// One NCCL rank: the sharded model must equal the plain one bit for bit, step after step.
TEST(Fsdp, OneRankThroughNcclEqualsThePlainModel) {
  TITAN_REQUIRE_GPU();
  auto nccl = one_rank_nccl();
  const ModelArgs a = small_args();
  const BatchShape s{2, 70};
  for (const ReshardPolicy policy : {ReshardPolicy{}, ReshardPolicy{true, true, true}, ReshardPolicy{false, false, false}}) {
    Transformer host(a);
    host.init_weights(fresh_seed());
    CudaTransformer plain(a, host.parameters());
    CudaTransformer sharded(a, host.parameters(), nccl.get(), policy);
    ASSERT_TRUE(sharded.sharded());
    for (int step = 0; step < 3; ++step) {
      const Batch b = random_batch(a, s, "batch" + std::to_string(step));
      plain.zero_grad();
      sharded.zero_grad();
      const auto want = plain.forward_backward(b.tokens.data(), b.labels.data(), s, 0.01f);
      const auto got = sharded.forward_backward(b.tokens.data(), b.labels.data(), s, 0.01f);
      ASSERT_EQ(got.loss_sum, want.loss_sum) << "step " << step << ", reshard blocks " << policy.reshard_blocks << " root " << policy.reshard_root
                                          << ", seed " << fresh_seed();
      for (size_t i = 0; i < host.parameters().size(); ++i)
        ASSERT_EQ(sharded.gradient(i), plain.gradient(i)) << host.parameters()[i].name << ", step " << step;
      ASSERT_EQ(sharded.grad_sq_sum(), plain.grad_sq_sum());
      const cuda::AdamWStep f{0.99f, 0.9f, 0.95f, 1e-8f, 1e-3f, 0.5f, 1.0f};
      plain.adamw(f);
      sharded.adamw(f);
      const auto val_want = plain.forward_loss(b.tokens.data(), b.labels.data(), s);
      const auto val_got = sharded.forward_loss(b.tokens.data(), b.labels.data(), s);
      ASSERT_EQ(val_got.loss_sum, val_want.loss_sum) << "forward-only, step " << step;
    }
    std::vector<float> want(a.vocab_size * 2 * 70), got(want.size());
    const Batch b = random_batch(a, s, "logits");
    plain.forward_logits(b.tokens.data(), s, want.data());
    sharded.forward_logits(b.tokens.data(), s, got.data());
    EXPECT_EQ(got, want);
    EXPECT_GT(sharded.peak_unsharded_bytes(), 0u);
    // Round trip: what the sharded model downloads is what the plain one holds.
    Transformer back_plain(a), back_sharded(a);
    plain.download(back_plain.parameters());
    sharded.download(back_sharded.parameters());
    for (size_t i = 0; i < back_plain.parameters().size(); ++i) {
      const auto& p = back_plain.parameters()[i];
      const auto& q = back_sharded.parameters()[i];
      ASSERT_EQ(0, std::memcmp(p.master.f32(), q.master.f32(), p.master.bytes())) << p.name;
      ASSERT_EQ(0, std::memcmp(p.exp_avg.f32(), q.exp_avg.f32(), p.exp_avg.bytes())) << p.name;
      ASSERT_EQ(0, std::memcmp(p.exp_avg_sq.f32(), q.exp_avg_sq.f32(), p.exp_avg_sq.bytes())) << p.name;
    }
  }
}

// 2 and 3 ranks with uneven shards (vocab 301, dim 128, ffn 352 over 3), two micro-batches per
// step, an AdamW step between: each rank's gradient shard equals the plain model's rows of the
// gradient of the global batch, and the losses agree.
TEST(Fsdp, SeveralRanksAsThreadsMatchThePlainModel) {
  TITAN_REQUIRE_GPU();
  const ModelArgs a = small_args();
  const int64_t rows = 2, seq = 70;
  for (const int world : {2, 3}) {
    for (const ReshardPolicy policy : {ReshardPolicy{}, ReshardPolicy{true, true, true}}) {
      const uint64_t seed = fresh_seed() + static_cast<uint64_t>(world);
      Transformer host(a);
      host.init_weights(seed);
      CudaTransformer plain(a, host.parameters());
      std::vector<Batch> micro = {random_batch(a, {rows * world, seq}, "micro0"), random_batch(a, {rows * world, seq}, "micro1")};
      const float scale = 1.0f / static_cast<float>(2 * rows * world * seq);
      const cuda::AdamWStep f{0.99f, 0.9f, 0.95f, 1e-8f, 1e-3f, 0.5f, 1.0f};
      std::vector<double> want_loss;
      std::vector<std::vector<std::vector<float>>> want_grad;  // per step, per parameter
      for (int step = 0; step < 2; ++step) {
        plain.zero_grad();
        double loss = 0;
        for (const Batch& b : micro) loss += plain.forward_backward(b.tokens.data(), b.labels.data(), {rows * world, seq}, scale).loss_sum;
        want_loss.push_back(loss);
        want_grad.emplace_back();
        for (size_t i = 0; i < host.parameters().size(); ++i) want_grad.back().push_back(plain.gradient(i));
        plain.adamw(f);
      }
      ThreadCollectives::Meeting meeting(world);
      std::vector<double> got_loss(2, 0.0);
      std::vector<std::string> errors(static_cast<size_t>(world));
      std::mutex mu;
      std::vector<std::thread> ranks;
      for (int r = 0; r < world; ++r) {
        ranks.emplace_back([&, r] {
          try {
            ThreadCollectives coll(meeting, r);
            Transformer shard(a, r, world);
            shard.init_weights(seed);
            CudaTransformer model(a, shard.parameters(), &coll, policy);
            for (int step = 0; step < 2; ++step) {
              model.zero_grad();
              double loss = 0;
              for (const Batch& b : micro)  // this rank's rows of each micro-batch
                loss += model.forward_backward(b.tokens.data() + r * rows * seq, b.labels.data() + r * rows * seq,
                                               {rows, seq}, scale).loss_sum;
              for (size_t i = 0; i < shard.parameters().size(); ++i) {
                const Parameter& p = shard.parameters()[i];
                const auto g = model.gradient(i);
                const auto& whole = want_grad[step][i];
                const std::vector<float> ref(whole.begin() + p.rows.begin * p.row_elems(),
                                             whole.begin() + p.rows.end * p.row_elems());
                if (g.size() != ref.size() || (!ref.empty() && rel_l2(g, ref) > 1e-2))
                  throw std::runtime_error(concat(p.name, ": rank ", r, " of ", world, ", step ", step,
                                                  ", rel l2 ", g.size() == ref.size() ? rel_l2(g, ref) : -1.0));
              }
              {
                std::lock_guard<std::mutex> lock(mu);
                got_loss[step] += loss;
              }
              model.adamw(f);
            }
          } catch (const std::exception& e) {
            errors[r] = e.what();
            meeting.fail();  // the others must not wait for this rank, nor go on without it
          }
        });
      }
      for (auto& t : ranks) t.join();
      for (int r = 0; r < world; ++r) ASSERT_EQ(errors[r], "") << "world " << world << ", seed " << seed;
      for (int step = 0; step < 2; ++step)
        EXPECT_NEAR(got_loss[step], want_loss[step], 1e-3 * std::fabs(want_loss[step]))
            << "world " << world << ", step " << step << ", seed " << seed;
    }
  }
}

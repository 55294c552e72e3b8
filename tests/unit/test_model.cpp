#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <set>

#include "titan/config/run_plan.h"
#include "titan/core/rng.h"
#include "titan/ops/classifier_plan.h"
#include "titan/models/llama3/init.h"
#include "titan/models/llama3/layout.h"
#include "titan/models/llama3/transformer.h"
#include "titan/metrics/flops.h"
#include "titan/core/error.h"
#include "titan/ops/attention_library.h"
#include "titan/train/memory_estimate.h"

#include "../support/scoped_env.h"

using namespace titan;
using namespace titan::llama3;

namespace {
ModelArgs small_args() {
  ModelArgs a;
  a.dim = 48;
  a.n_layers = 2;
  a.n_heads = 6;
  a.n_kv_heads = 2;
  a.vocab_size = 37;  // odd, so dim-0 shards are uneven
  a.multiple_of = 32;
  return a;
}
}  // namespace

TEST(Init, ValuesDoNotDependOnHowParametersAreSplit) {
  const ModelArgs a = small_args();
  Transformer whole(a);
  whole.init_weights(42);
  for (int world : {2, 3, 5}) {
    for (int rank = 0; rank < world; ++rank) {
      Transformer shard(a, rank, world);
      shard.init_weights(42);
      for (auto& p : shard.parameters()) {
        const Parameter& w = whole.parameter(p.name);
        const float* expect = w.master.f32() + p.rows.begin * p.row_elems();
        ASSERT_EQ(0, std::memcmp(p.master.f32(), expect, p.master.bytes()))
            << p.name << " rank " << rank << " of " << world;
      }
    }
  }
}

// Under tensor parallel each rank's slice (rows for column-wise tensors and the vocabulary,
// columns for row-wise ones), sharded again by FSDP, holds the whole tensor's values there.
TEST(Init, TensorParallelSlicesHoldTheWholeTensorsValues) {
  ModelArgs a = small_args();
  a.vocab_size = 38;
  Transformer whole(a);
  whole.init_weights(42);
  for (const int tp : {2}) {
    for (int t = 0; t < tp; ++t)
      for (int world : {1, 3})
        for (int rank = 0; rank < world; ++rank) {
          Transformer slice(a, rank, world, {t, tp});
          slice.init_weights(42);
          int sliced = 0;
          for (auto& p : slice.parameters()) {
            const Parameter& w = whole.parameter(p.name);
            const int64_t cols = p.global_shape.size() > 1 ? p.global_shape[1] : 1;
            const int64_t whole_cols = w.global_shape.size() > 1 ? w.global_shape[1] : 1;
            sliced += p.slice.partial();
            for (int64_t i = 0; i < p.master.numel(); ++i) {
              const int64_t row = p.slice.row_offset + p.rows.begin + i / cols, col = p.slice.col_offset + i % cols;
              ASSERT_EQ(p.master.f32()[i], w.master.f32()[row * whole_cols + col])
                  << p.name << " element " << i << ", TP rank " << t << ", FSDP rank " << rank << " of " << world;
            }
          }
          EXPECT_EQ(sliced, 7 * a.n_layers + 2);  // every linear, the embedding and the classifier
        }
  }
}

TEST(Init, FollowsTorchtitanRules) {
  ModelArgs a = small_args();
  a.n_layers = 4;
  EXPECT_EQ(init_rule("tok_embeddings.weight", a).std, 1.0f);
  EXPECT_EQ(init_rule("layers.0.attention.wq.weight", a).std, 0.02f);
  EXPECT_FLOAT_EQ(init_rule("layers.3.feed_forward.w2.weight", a).std, 0.02f / std::sqrt(8.0f));
  EXPECT_EQ(init_rule("layers.3.ffn_norm.weight", a).kind, InitRule::ones);
  const InitRule out = init_rule("output.weight", a);
  EXPECT_FLOAT_EQ(out.bound, 3.0f * out.std);
  EXPECT_THROW(init_rule("layers.0.mystery.weight", a), InternalError);
}

TEST(Layout, DescribesEveryTensorOnceWithItsUnitShapeAndHfName) {
  const ModelArgs a = small_args();
  const ModelLayout layout(a);
  const int64_t d = a.dim, qd = a.n_heads * a.head_dim(), kvd = a.kv_dim(), f = a.ffn_hidden();
  // Counted independently of the table: two vocab x dim matrices, the final norm, and per block
  // wq, wo (qd x d), wk, wv (kvd x d), w1, w2, w3 (f x d) and two norms.
  EXPECT_EQ(layout.numel(), 2 * a.vocab_size * d + d + a.n_layers * (2 * qd * d + 2 * kvd * d + 3 * f * d + 2 * d));
  EXPECT_EQ(layout.size(), 3u + 9u * static_cast<size_t>(a.n_layers));
  int64_t by_unit = 0;
  for (int u = 0; u < layout.units(); ++u) by_unit += layout.unit_numel(u);
  EXPECT_EQ(by_unit, layout.numel());
  EXPECT_EQ(layout.unit_numel(0), 2 * a.vocab_size * d + d);
  EXPECT_EQ(layout.embedding_numel(), a.vocab_size * d);
  std::set<std::string> names, hf;
  for (const auto& t : layout.tensors()) {
    EXPECT_TRUE(names.insert(t.name).second) << t.name;
    EXPECT_TRUE(hf.insert(t.hf_name).second) << t.hf_name;
    EXPECT_EQ(hf_name_of(t.name), t.hf_name);
    EXPECT_EQ(t.unit, t.layer < 0 ? 0 : t.layer + 1) << t.name;
    EXPECT_EQ(layout.find(t.name), static_cast<int64_t>(&t - layout.tensors().data()));
  }
  const TensorSpec& w2 = layout[layout.block_index(1, Role::w2)];
  EXPECT_EQ(w2.name, "layers.1.feed_forward.w2.weight");
  EXPECT_EQ(w2.hf_name, "model.layers.1.mlp.down_proj.weight");
  EXPECT_EQ(w2.shape, (Shape{d, f}));
  EXPECT_EQ(w2.tp, TpStyle::rowwise);
  EXPECT_EQ(layout[layout.block_index(0, Role::wq)].rope_heads, a.n_heads);
  EXPECT_EQ(layout[layout.block_index(0, Role::wk)].rope_heads, a.n_kv_heads);
  EXPECT_EQ(layout[layout.block_index(0, Role::wv)].rope_heads, 0);
  EXPECT_EQ(layout[layout.root_index(Role::output)].hf_name, "lm_head.weight");
  EXPECT_EQ(layout[layout.root_index(Role::norm)].precision, LinearPrecision::none);
  EXPECT_EQ(layout[layout.block_index(1, Role::w1)].precision, LinearPrecision::high);
  EXPECT_TRUE(layout[layout.root_index(Role::tok_embeddings)].summed_gradient);
  EXPECT_TRUE(layout[layout.block_index(0, Role::ffn_norm)].summed_gradient);
  EXPECT_FALSE(layout[layout.root_index(Role::output)].summed_gradient);  // one GEMM writes it
  const auto units = layout.unit_tensors();
  ASSERT_EQ(units.size(), 3u);
  EXPECT_EQ(units[0], (std::vector<size_t>{layout.root_index(Role::tok_embeddings), layout.root_index(Role::norm),
                                           layout.root_index(Role::output)}));
  EXPECT_EQ(units[2].front(), layout.block_index(1, Role::wq));
  EXPECT_EQ(layout.find("layers.2.attention.wq.weight"), -1);  // two layers only
  EXPECT_EQ(hf_name_of("layers.x.attention.wq.weight"), "");
}

TEST(Flavors, MatchReferenceShapes) {
  EXPECT_EQ(flavor("debugmodel").ffn_hidden(), 768);
  EXPECT_EQ(flavor("1B").ffn_hidden(), 8192);
  EXPECT_EQ(flavor("8B").ffn_hidden(), 14336);
  EXPECT_EQ(flavor("70B").ffn_hidden(), 28672);
  EXPECT_EQ(flavor("405B").ffn_hidden(), 53248);
  // Benchmark shapes (torch_anchor.py's llama3_150m and llama3_8b_4l).
  EXPECT_EQ(flavor("150M").ffn_hidden(), 2048);
  EXPECT_EQ(flavor("150M").n_kv_heads, 4);
  EXPECT_EQ(flavor("8B_4layers").n_layers, 4);
  EXPECT_EQ(flavor("8B_4layers").ffn_hidden(), 14336);
  // Llama 3 8B has 8.03 billion parameters.
  EXPECT_NEAR(static_cast<double>(metrics::parameter_count(flavor("8B"))), 8.03e9, 0.01e9);
  EXPECT_THROW(flavor("13B"), UserError);
}

TEST(Flavors, RejectInconsistentShapes) {
  ModelArgs a = small_args();
  a.n_kv_heads = 4;  // 6 heads are not divisible by 4 kv heads
  EXPECT_THROW(a.validate("model"), UserError);
  a = small_args();
  a.dim = 50;  // not divisible by 6 heads
  EXPECT_THROW(a.validate("model"), UserError);
}

TEST(Transformer, ParameterCountMatchesFormulaAndNames) {
  const ModelArgs a = small_args();
  Transformer m(a);
  EXPECT_EQ(m.memory().parameters, metrics::parameter_count(a));
  EXPECT_EQ(m.parameters().front().name, "tok_embeddings.weight");
  EXPECT_EQ(m.parameters().back().name, "output.weight");
  EXPECT_NO_THROW(m.parameter("layers.1.attention.wk.weight"));
}

TEST(Transformer, RejectsTokensOutsideTheVocabulary) {
  const ModelArgs a = small_args();
  Transformer m(a);
  m.init_weights(1);
  std::vector<int32_t> tokens(8, 3), labels(8, 4);
  tokens[5] = 37;
  EXPECT_THROW(m.forward_loss(tokens.data(), labels.data(), {1, 8}), InternalError);
}

TEST(ActivationCheckpointing, EveryModeGivesBitIdenticalLossesAndGradientsWithLessMemory) {
  ModelArgs a = small_args();
  a.n_layers = 6;  // every-3rd then recomputes two blocks, which share one set of buffers
  const BatchShape s{2, 24};
  NamedStream st(3, "ac batch");
  std::vector<int32_t> tokens(s.rows()), labels(s.rows());
  for (int64_t i = 0; i < s.rows(); ++i) {
    tokens[i] = static_cast<int32_t>(st.uniform(2 * i) * a.vocab_size) % static_cast<int32_t>(a.vocab_size);
    labels[i] = static_cast<int32_t>(st.uniform(2 * i + 1) * a.vocab_size) % static_cast<int32_t>(a.vocab_size);
  }
  using Mode = ActivationCheckpointing::Mode;
  struct Run {
    double loss;
    std::vector<float> grads;
    size_t activation_bytes;
  };
  auto run = [&](ActivationCheckpointing ac) {
    Transformer m(a);
    m.init_weights(9);
    m.set_activation_checkpointing(ac);
    m.zero_grad();
    Run r;
    for (int rep = 0; rep < 2; ++rep)  // twice: the second pass must see the same recomputed tensors
      r.loss = m.forward_backward(tokens.data(), labels.data(), s, 1.0f / static_cast<float>(s.rows())).loss_sum;
    for (auto& p : m.parameters()) r.grads.insert(r.grads.end(), p.grad.f32(), p.grad.f32() + p.grad.numel());
    r.activation_bytes = m.memory().activation_bytes;
    return r;
  };
  const Run none = run({});
  for (ActivationCheckpointing ac : {ActivationCheckpointing{Mode::full, 1}, ActivationCheckpointing{Mode::selective_layer, 2},
                                     ActivationCheckpointing{Mode::selective_layer, 3}, ActivationCheckpointing{Mode::selective_op, 1}}) {
    const Run r = run(ac);
    EXPECT_EQ(r.loss, none.loss) << "mode " << static_cast<int>(ac.mode) << " every " << ac.every;
    EXPECT_EQ(r.grads, none.grads) << "mode " << static_cast<int>(ac.mode) << " every " << ac.every;
    EXPECT_LT(r.activation_bytes, none.activation_bytes) << "mode " << static_cast<int>(ac.mode);
  }
  // Full keeps less than every-2nd-block, which keeps less than every-3rd.
  EXPECT_LT(run({Mode::full, 1}).activation_bytes, run({Mode::selective_layer, 2}).activation_bytes);
  EXPECT_LT(run({Mode::selective_layer, 2}).activation_bytes, run({Mode::selective_layer, 3}).activation_bytes);
}

TEST(MemoryEstimate, CpuTermsEqualWhatTheModelAllocates) {
  using Mode = ActivationCheckpointing::Mode;
  for (int64_t vocab : {37L, 3000L}) {
    ModelArgs a = small_args();
    a.n_layers = 5;
    a.vocab_size = vocab;
    for (BatchShape s : {BatchShape{1, 7}, BatchShape{3, 40}}) {
      for (ActivationCheckpointing ac : {ActivationCheckpointing{}, ActivationCheckpointing{Mode::full, 1},
                                         ActivationCheckpointing{Mode::selective_layer, 2},
                                         ActivationCheckpointing{Mode::selective_op, 1}}) {
        Transformer m(a);
        m.set_activation_checkpointing(ac);
        m.plan(s);
        const auto got = m.memory();
        const auto e = train::estimate_memory(a, s, ac, train::EstimateBackend::cpu, 1);
        EXPECT_EQ(e.activations, static_cast<double>(got.activation_bytes))
            << "vocab " << vocab << ", batch " << s.batch << " x " << s.seq << ", mode " << static_cast<int>(ac.mode);
        EXPECT_EQ(e.parameters, static_cast<double>(got.parameter_bytes));
        EXPECT_EQ(e.gradients, static_cast<double>(got.gradient_bytes));
        EXPECT_EQ(e.optimizer, static_cast<double>(got.optimizer_bytes));
      }
    }
  }
}

TEST(MemoryEstimate, TensorParallelTermsEqualWhatARankAllocates) {
  using Mode = ActivationCheckpointing::Mode;
  ModelArgs a = small_args();
  a.n_layers = 3;
  a.vocab_size = 3000;
  const BatchShape s{3, 40};
  for (const int rank : {0, 1})
    for (ActivationCheckpointing ac : {ActivationCheckpointing{}, ActivationCheckpointing{Mode::selective_op, 1}}) {
      Transformer m(a, 0, 1, {rank, 2});
      m.set_activation_checkpointing(ac);
      m.plan(s);
      const auto got = m.memory();
      const auto e = train::estimate_memory(a, s, ac, train::EstimateBackend::cpu, 1, false, AttentionLibrary::titan,
                                            false, 2);
      EXPECT_EQ(e.activations, static_cast<double>(got.activation_bytes)) << "rank " << rank;
      EXPECT_EQ(e.parameters, static_cast<double>(got.parameter_bytes));
      EXPECT_EQ(e.optimizer, static_cast<double>(got.optimizer_bytes));
      // Half of every sliced tensor, the norms whole.
      const auto one = train::estimate_memory(a, s, ac, train::EstimateBackend::cpu, 1);
      const double norms = 4.0 * double((2 * a.n_layers + 1) * a.dim);
      EXPECT_DOUBLE_EQ(e.parameters, (one.parameters - norms) / 2 + norms);
    }
}

TEST(MemoryEstimate, ShardsDivideStateAndAddGatheredBlocks) {
  const ModelArgs a = flavor("8B");
  const BatchShape s{1, 2048};
  const auto one = train::estimate_memory(a, s, {}, train::EstimateBackend::cuda, 1);
  const auto eight = train::estimate_memory(a, s, {}, train::EstimateBackend::cuda, 8);
  EXPECT_NEAR(eight.optimizer, one.optimizer / 8, one.optimizer * 1e-3);
  EXPECT_GT(eight.parameters, one.parameters / 8);  // plus the gathered root and one block
  EXPECT_LT(eight.parameters, one.parameters / 4);
  EXPECT_EQ(eight.activations, one.activations);  // FSDP shards state, not activations
}

// Attention cudnn or auto: cuDNN's backward scratch (fp32 dQ accumulator and softmax row sums)
// counts as a buffer, for the shapes cuDNN takes only.
TEST(MemoryEstimate, CudnnAttentionAddsItsBackwardScratch) {
  auto buffers = [](AttentionLibrary impl, const ModelArgs& a, BatchShape s) {
    return train::estimate_memory(a, s, {}, train::EstimateBackend::cuda, 1, false, impl).buffers;
  };
  const ModelArgs one_b = flavor("1B");  // 32 heads of 64
  const BatchShape s{4, 2048};
  const double titan = buffers(AttentionLibrary::titan, one_b, s);
  EXPECT_EQ(train::estimate_memory(one_b, s, {}, train::EstimateBackend::cuda, 1).buffers, titan);
  // 4 x 32 x 2048 x 64 fp32 (64 MiB) + 4 x 32 x 2048 fp32 row sums (1 MiB), in 2 MiB blocks.
  EXPECT_EQ(buffers(AttentionLibrary::cudnn, one_b, s) - titan, 66.0 * (1 << 20));
  EXPECT_EQ(buffers(AttentionLibrary::automatic, one_b, s) - titan, 66.0 * (1 << 20));
  // The debug model's head_dim 16 stays on titan's kernels: nothing added.
  const ModelArgs debug = flavor("debugmodel");
  EXPECT_EQ(buffers(AttentionLibrary::cudnn, debug, {8, 2048}), buffers(AttentionLibrary::titan, debug, {8, 2048}));
  // Nor for keys that are not a multiple of 128.
  EXPECT_EQ(buffers(AttentionLibrary::cudnn, one_b, {4, 2000}), buffers(AttentionLibrary::titan, one_b, {4, 2000}));
}

// training.attention (auto by default) picks the library; TITAN_ATTENTION_IMPL, where set,
// overrides it; training.deterministic keeps titan's kernels and refuses an explicit cudnn,
// naming where each was set.
TEST(AttentionLibraryChoice, DeterministicRunsKeepTitanKernels) {
  auto choose = [](const char* env_value, const char* key, bool deterministic) {
    test_support::ScopedEnv env({{"TITAN_ATTENTION_IMPL", env_value}});
    config::JobConfig cfg;
    std::vector<std::string> flags = {"--training.deterministic", deterministic ? "true" : "false"};
    if (key) flags.insert(flags.end(), {"--training.attention", key});
    cfg.apply_overrides(flags);
    return config::resolve_run_plan(cfg).attention;
  };
  EXPECT_EQ(choose(nullptr, nullptr, false), AttentionLibrary::automatic);
  EXPECT_EQ(choose(nullptr, "cudnn", false), AttentionLibrary::cudnn);
  EXPECT_EQ(choose(nullptr, "titan", false), AttentionLibrary::titan);
  EXPECT_EQ(choose("cudnn", nullptr, false), AttentionLibrary::cudnn);
  EXPECT_EQ(choose("titan", "cudnn", false), AttentionLibrary::titan);  // the variable overrides the key
  EXPECT_EQ(choose(nullptr, nullptr, true), AttentionLibrary::titan);
  EXPECT_EQ(choose("auto", nullptr, true), AttentionLibrary::titan);
  EXPECT_EQ(choose("titan", nullptr, true), AttentionLibrary::titan);
  for (auto [env_value, key, named] : {std::tuple<const char*, const char*, const char*>{"cudnn", nullptr, "TITAN_ATTENTION_IMPL=cudnn"},
                                       {nullptr, "cudnn", "--training.attention"}}) {
    try {
      choose(env_value, key, true);
      ADD_FAILURE() << "cudnn with training.deterministic = true was accepted";
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("--training.deterministic"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(named), std::string::npos) << e.what();
    }
  }
  config::JobConfig bad;
  bad.apply_overrides({"--training.attention", "flash"});
  EXPECT_THROW(bad.validate(), UserError);
}

TEST(ClassifierPlan, GroupsRowsUnderTheBudget) {
  const int64_t vocab = 128256;
  // The 1B benchmark shape: all 8,192 rows' bf16 logits in one group (2 GiB hold 8,372 rows).
  EXPECT_EQ(classifier_rows(8192, vocab), 8192);
  // 32,768 rows (150M at 2048 x 16): the most rows 2 GiB of bf16 logits hold.
  const int64_t big = classifier_rows(32768, vocab);
  EXPECT_LE(big * vocab * 2, int64_t{2} << 30);
  EXPECT_GT((big + 1) * vocab * 2, int64_t{2} << 30);
  // A budget below one row still makes progress, one row at a time; a small batch is one group.
  EXPECT_EQ(classifier_rows(10, vocab, {16}), 1);
  EXPECT_EQ(classifier_rows(70, 301), 70);
}

// Tied embeddings (Llama 3.2 1B/3B): one tensor fewer, the root unit without an output, and the
// shared tensor's gradient the sum of both uses: an untied twin whose output equals the
// embedding gives embedding grad + output grad (up to the order of the float sums).
TEST(TiedEmbeddings, OneTensorWhoseGradientSumsBothUses) {
  ModelArgs a;
  a.dim = 32;
  a.n_layers = 2;
  a.n_heads = 4;
  a.n_kv_heads = 2;
  a.vocab_size = 50;
  a.multiple_of = 32;
  ModelArgs tied = a;
  tied.tie_word_embeddings = true;
  const ModelLayout untied_layout(a), tied_layout(tied);
  ASSERT_EQ(tied_layout.size() + 1, untied_layout.size());
  EXPECT_EQ(tied_layout.root_index(Role::output), tied_layout.root_index(Role::tok_embeddings));
  EXPECT_EQ(tied_layout.unit_tensors()[0].size(), 2u);  // embedding and final norm
  EXPECT_EQ(tied_layout.find("output.weight"), -1);

  Transformer plain(a), shared(tied);
  plain.init_weights(5);
  shared.init_weights(5);
  // The tied model's tensors are the untied one's except the output; make the output the embedding.
  for (auto& p : shared.parameters()) {
    const auto& q = plain.parameter(p.name);
    std::copy_n(q.master.f32(), q.master.numel(), p.master.f32());
  }
  auto& emb = plain.parameter("tok_embeddings.weight");
  std::copy_n(emb.master.f32(), emb.master.numel(), plain.parameter("output.weight").master.f32());
  const BatchShape s{2, 6};
  std::vector<int32_t> tokens(12), labels(12);
  for (int i = 0; i < 12; ++i) {
    tokens[i] = (i * 7 + 1) % a.vocab_size;
    labels[i] = (i * 11 + 3) % a.vocab_size;
  }
  plain.zero_grad();
  shared.zero_grad();
  const auto p = plain.forward_backward(tokens.data(), labels.data(), s, 1.0f / 12);
  const auto q = shared.forward_backward(tokens.data(), labels.data(), s, 1.0f / 12);
  EXPECT_EQ(p.loss_sum, q.loss_sum);  // the same model
  const float* g_emb = plain.parameter("tok_embeddings.weight").grad.f32();
  const float* g_out = plain.parameter("output.weight").grad.f32();
  const float* g_tied = shared.parameter("tok_embeddings.weight").grad.f32();
  double worst = 0, scale = 0;
  for (int64_t i = 0; i < emb.master.numel(); ++i) {
    worst = std::max(worst, std::fabs(double(g_tied[i]) - (double(g_emb[i]) + double(g_out[i]))));
    scale = std::max(scale, std::fabs(double(g_emb[i]) + double(g_out[i])));
  }
  EXPECT_LT(worst, 1e-6 * scale);
  EXPECT_GT(scale, 0);
  // torchtitan's FLOP formula leaves the (shared) embedding out, as it leaves out an untied one.
  EXPECT_EQ(metrics::parameter_count(tied), metrics::parameter_count(a) - a.vocab_size * a.dim);
}

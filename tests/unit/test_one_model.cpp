// The one model (issue 19) as a CPU can check it: the op sequence it hands each backend, the
// hooks it calls, the activation plan both backends allocate from, and the CUDA backend's host
// logic (scratch sizes, flat parameter layout, graph or eager step).
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "titan/metrics/flops.h"
#include "titan/models/llama3/activation_plan.h"
#include "titan/models/llama3/model.h"
#include "titan/models/llama3/transformer.h"
#include "titan/ops/cpu/cpu_backend.h"
#include "titan/ops/cuda/host_plan.h"
#include "titan/parallel/fsdp.h"
#include "titan/train/memory_estimate.h"

using namespace titan;
using namespace titan::llama3;
using Mode = ActivationCheckpointing::Mode;

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

// A backend that computes nothing and records each op with the buffers it touched, in the dtype
// it claims (bf16 stands for the CUDA backend's element size).
class RecordingBackend final : public Backend {
 public:
  explicit RecordingBackend(DType dtype) : dtype_(dtype) {}
  std::vector<std::string> ops;
  std::string description() const override { return "recording"; }
  DType compute_dtype() const override { return dtype_; }
  Buffer allocate(size_t bytes) override {
    live_ += bytes;
    return Buffer(std::shared_ptr<void>(::operator new(bytes + 64), [](void* p) { ::operator delete(p); }), bytes);
  }
  size_t live_bytes() const override { return live_; }
  void prepare(const PassDims&) override { ops.push_back("prepare"); }
  void upload_f32(float*, const float*, int64_t) override {}
  void load_batch(const int32_t*, const int32_t*, int64_t n, int64_t, int32_t, bool backward) override {
    ops.push_back(concat("load_batch n", n, backward ? " +index" : ""));
  }
  void embedding_forward(const void*, void*, int64_t n, int64_t, int64_t, int64_t) override { op("embedding_forward", n); }
  void embedding_backward(const void*, float*, int64_t n, int64_t, int64_t, int64_t) override {
    op("embedding_backward", n);
  }
  void set_float8_recipe(const float8::Recipe& r) override { ops.push_back("float8 recipe " + r.name); }
  void linear_forward(const void*, const LinearWeight&, void*, int64_t n, int64_t in, int64_t out,
                      LinearPrecision p) override {
    op(concat("linear ", in, "->", out, p == LinearPrecision::float8 ? " float8" : ""), n);
  }
  void linear_backward(const void*, const LinearWeight&, const void*, void*, float*, int64_t n, int64_t in, int64_t out,
                       float beta, LinearPrecision p) override {
    op(concat("linear_backward ", in, "->", out, " beta ", beta, p == LinearPrecision::float8 ? " float8" : ""), n);
  }
  void rmsnorm_forward(const void*, const void*, void*, float*, int64_t n, int64_t, float) override { op("rmsnorm", n); }
  void add_rmsnorm_forward(const void*, const void*, void*, const void*, void*, float*, int64_t n, int64_t,
                           float) override {
    op("add_rmsnorm", n);
  }
  void rmsnorm_backward(const void*, const void*, const float*, const void*, void*, bool acc, float*, int64_t n,
                        int64_t) override {
    op(acc ? "rmsnorm_backward +=" : "rmsnorm_backward", n);
  }
  void rope(void*, const float*, const float*, int64_t, int64_t, int64_t heads, int64_t, bool inverse) override {
    ops.push_back(concat(inverse ? "rope_inverse " : "rope ", heads));
  }
  void attention_forward(const void*, const void*, const void*, void*, float*, const AttentionDims& s) override {
    ops.push_back(concat("attention ", s.heads, "/", s.kv_heads));
  }
  void attention_backward(const void*, const void*, const void*, const void*, const float*, const void*, void*, void*,
                          void*, const AttentionDims&) override {
    ops.push_back("attention_backward");
  }
  void attention_decode(const void*, const void*, const void*, void*, int64_t p, int64_t, int64_t, int64_t) override {
    ops.push_back(concat("attention_decode ", p));
  }
  void swiglu_forward(const void*, const void*, void*, int64_t) override { ops.push_back("swiglu"); }
  void swiglu_backward(const void*, const void*, const void*, void*, void*, int64_t) override {
    ops.push_back("swiglu_backward");
  }
  void add(const void*, const void*, void*, int64_t) override { ops.push_back("add"); }
  void copy(void*, const void*, int64_t) override { ops.push_back("copy"); }
  void classifier(const void*, const void*, void* dh, float*, int64_t n, int64_t, int64_t, int32_t, float) override {
    op(dh ? "classifier +grads" : "classifier", n);
  }
  void classifier_vocab_shard(const void*, const void*, void* dh, float*, int64_t n, int64_t, int64_t vocab, int64_t,
                              int64_t, int32_t, float, VocabShards&, bool) override {
    op(concat(dh ? "classifier_vocab_shard +grads " : "classifier_vocab_shard ", vocab), n);
  }
  double loss_sum() override { return 0; }
  void logits(const void*, const void*, float*, int64_t n, int64_t, int64_t) override { op("logits", n); }

 private:
  void op(const std::string& name, int64_t n) { ops.push_back(concat(name, " n", n)); }
  DType dtype_;
  size_t live_ = 0;
};

class NullWeights final : public WeightStore {
 public:
  const void* weight(size_t) override { return this; }
  float* grad(size_t) override { return nullptr; }
};

class RecordingHooks final : public ModuleHooks {
 public:
  std::vector<std::string> calls;
  void before_forward(int u) override { calls.push_back(concat("before_forward ", u)); }
  void after_forward(int u, bool b) override { calls.push_back(concat("after_forward ", u, b ? " +backward" : "")); }
  void before_backward(int u) override { calls.push_back(concat("before_backward ", u)); }
  void after_backward(int u) override { calls.push_back(concat("after_backward ", u)); }
};

std::vector<std::string> trace(DType dtype, const ActivationCheckpointing& ac, RecordingHooks* hooks = nullptr) {
  const ModelArgs a = small_args();
  RecordingBackend backend(dtype);
  NullWeights weights;
  Model model(a, backend, weights);
  model.set_hooks(hooks);
  model.set_activation_checkpointing(ac);
  const BatchShape s{2, 5};
  std::vector<int32_t> tokens(10, 1), labels(10, 2);
  model.forward_backward(tokens.data(), labels.data(), s, 0.1f);
  return backend.ops;
}

int64_t a_ffn() { return small_args().ffn_hidden(); }

int count(const std::vector<std::string>& ops, const std::string& op) {
  return static_cast<int>(std::count(ops.begin(), ops.end(), op));
}
}  // namespace

TEST(OneModel, BothBackendsGetTheSameOpSequence) {
  for (Mode mode : {Mode::none, Mode::full, Mode::selective_layer, Mode::selective_op}) {
    const ActivationCheckpointing ac{mode, 2};
    EXPECT_EQ(trace(DType::f32, ac), trace(DType::bf16, ac)) << "mode " << static_cast<int>(mode);
  }
}

TEST(OneModel, RecomputationFollowsTheCheckpointingPolicy) {
  const auto none = trace(DType::f32, {});
  const int blocks = 3, n = 10;
  // Per block forward: wk and wv are the two 48 -> 16 projections.
  const std::string kv = concat("linear 48->16 n", n);
  EXPECT_EQ(count(none, kv), 2 * blocks);
  EXPECT_EQ(count(none, "attention 6/2"), blocks);
  EXPECT_EQ(count(none, "attention_backward"), blocks);
  EXPECT_EQ(count(none, "classifier +grads n10"), 1);
  // full: every block's forward runs again in backward.
  const auto full = trace(DType::f32, {Mode::full, 1});
  EXPECT_EQ(count(full, kv), 4 * blocks);
  EXPECT_EQ(count(full, "attention 6/2"), 2 * blocks);
  // selective every 2nd block: block 1 (0-based) only.
  const auto every2 = trace(DType::f32, {Mode::selective_layer, 2});
  EXPECT_EQ(count(every2, "attention 6/2"), blocks + 1);
  // selective op (torchtitan's rule): wk, wo and w3 again (every second matmul), attention not,
  // the norms and SwiGLU again.
  const auto op = trace(DType::f32, {Mode::selective_op, 1});
  EXPECT_EQ(count(op, kv), 3 * blocks);
  EXPECT_EQ(count(op, concat("linear 48->", a_ffn(), " n", n)), 3 * blocks);  // w1 once, w3 twice
  EXPECT_EQ(count(op, "attention 6/2"), blocks);
  EXPECT_EQ(count(op, "swiglu"), 2 * blocks);
  EXPECT_EQ(count(op, concat("add_rmsnorm n", n)), 2 * blocks);
}

TEST(OneModel, HooksMarkEveryUnitInOrder) {
  RecordingHooks hooks;
  trace(DType::bf16, {}, &hooks);
  const std::vector<std::string> want = {
      "before_forward 0",  "before_forward 1",  "after_forward 1 +backward", "before_forward 2",
      "after_forward 2 +backward", "before_forward 3", "after_forward 3 +backward", "after_forward 0 +backward",
      "before_backward 0", "before_backward 3", "after_backward 3",  "before_backward 2",
      "after_backward 2",  "before_backward 1", "after_backward 1",  "after_backward 0"};
  EXPECT_EQ(hooks.calls, want);
}

TEST(ActivationPlan, SharesWhatThePolicyRecomputes) {
  const ModelArgs a = small_args();
  const BatchShape s{2, 5};
  const int64_t n = 10, qd = 48, kvd = 16, f = a.ffn_hidden();
  const auto none = plan_activations(a, s, {});
  for (const auto& b : none.blocks) {
    EXPECT_EQ(none.buffers[b.q].elements, n * qd);
    EXPECT_EQ(none.buffers[b.k].elements, n * kvd);
    EXPECT_EQ(none.buffers[b.a1].elements, n * f);
    EXPECT_EQ(none.buffers[b.lse].elements, 2 * 6 * 5);
    EXPECT_TRUE(none.buffers[b.lse].f32 && none.buffers[b.rstd1].f32 && !none.buffers[b.q].f32);
  }
  EXPECT_NE(none.blocks[0].q, none.blocks[1].q);
  EXPECT_EQ(none.blocks[0].proj, none.blocks[2].proj);  // read once, by the residual add: one shared buffer
  const auto full = plan_activations(a, s, {Mode::full, 1});
  EXPECT_EQ(full.blocks[0].q, full.blocks[2].q);
  EXPECT_LT(full.bytes(4), none.bytes(4));
  const auto every2 = plan_activations(a, s, {Mode::selective_layer, 2});
  EXPECT_NE(every2.blocks[0].q, every2.blocks[2].q);  // blocks 0 and 2 keep theirs
  const auto op = plan_activations(a, s, {Mode::selective_op, 1});
  EXPECT_NE(op.blocks[0].q, op.blocks[1].q);
  EXPECT_NE(op.blocks[0].v, op.blocks[1].v);         // kept: wv is an odd matmul
  EXPECT_NE(op.blocks[0].a1, op.blocks[1].a1);
  EXPECT_EQ(op.blocks[0].k, op.blocks[1].k);         // recomputed: every second matmul
  EXPECT_EQ(op.blocks[0].a3, op.blocks[2].a3);
  EXPECT_EQ(op.blocks[0].proj, op.blocks[1].proj);
  EXPECT_EQ(op.blocks[0].hn, op.blocks[1].hn);       // recomputed: shared
  EXPECT_EQ(op.blocks[0].g, op.blocks[2].g);
  EXPECT_LT(op.bytes(4), none.bytes(4));
  EXPECT_GT(op.bytes(4), full.bytes(4));
  // The same buffers in bf16: every buffer but the fp32 statistics halves.
  double f32_only = 0;
  for (const auto& b : none.buffers) f32_only += b.f32 ? 4.0 * double(b.elements) : 0.0;
  EXPECT_DOUBLE_EQ(none.bytes(2), (none.bytes(4) + f32_only) / 2);
}

TEST(ActivationPlan, CpuAllocationIsThePlanAndTheBackendScratch) {
  const ModelArgs a = small_args();
  for (Mode mode : {Mode::none, Mode::full, Mode::selective_layer, Mode::selective_op}) {
    const ActivationCheckpointing ac{mode, 2};
    Transformer m(a);
    m.set_activation_checkpointing(ac);
    m.plan({3, 7});
    const double want = plan_activations(a, {3, 7}, ac).bytes(4) +
                        cpu::cpu_backend_scratch_bytes({{3, 7}, a.dim, a.n_heads, a.head_dim(), a.vocab_size});
    EXPECT_EQ(double(m.memory().activation_bytes), want) << "mode " << static_cast<int>(mode);
    EXPECT_EQ(train::cpu_activation_bytes(a, {3, 7}, ac), want);
  }
}

TEST(CudaHostPlan, ScratchFlatLayoutAndStepMode) {
  const PassDims dims{{4, 300}, 256, 8, 32, 5000};
  std::map<std::string, size_t> scratch;
  for (const auto& b : cuda::backend_scratch(dims, ClassifierBudget{2 * 5000 * 100})) scratch[b.name] = b.bytes;
  EXPECT_EQ(scratch.at("attention delta"), 4u * 4 * 8 * 300);
  EXPECT_EQ(scratch.at("rmsnorm partial sums"), 4u * 10 * 256);  // ceil(1200 / 128) chunks
  EXPECT_EQ(scratch.at("classifier logits"), 2u * 100 * 5000);   // the budget's 100 rows
  EXPECT_EQ(scratch.at("embedding index offsets"), 4u * 1201);
  const auto flat = cuda::flat_layout({10, 64, 65, 1});
  EXPECT_EQ(flat.offset, (std::vector<int64_t>{0, 64, 128, 256}));
  EXPECT_EQ(flat.total, 320);
  EXPECT_EQ(cuda::device_block_bytes(1), 512u);
  EXPECT_EQ(cuda::device_block_bytes((size_t{1} << 20) + 1), size_t{2} << 20);
  EXPECT_EQ(cuda::step_mode(true, false), cuda::StepMode::graphs);
  EXPECT_EQ(cuda::step_mode(false, false), cuda::StepMode::eager);
  EXPECT_EQ(cuda::step_mode(true, true), cuda::StepMode::eager);
}

TEST(CudaHostPlan, EstimateOfTheOneModelSumsThePlanAsTheAllocatorRoundsIt) {
  const ModelArgs a = small_args();
  const BatchShape s{2, 64};
  for (Mode mode : {Mode::none, Mode::full, Mode::selective_op}) {
    const ActivationCheckpointing ac{mode, 1};
    double want = 0;
    for (const auto& b : plan_activations(a, s, ac).buffers)
      want += double(cuda::device_block_bytes(static_cast<size_t>(b.elements) * (b.f32 ? 4 : 2)));
    for (const auto& b : cuda::backend_scratch({s, a.dim, a.n_heads, a.head_dim(), a.vocab_size}))
      want += double(cuda::device_block_bytes(b.bytes));
    const auto e = train::estimate_memory(a, s, ac, train::EstimateBackend::cuda_model, 1);
    EXPECT_EQ(e.activations, want) << "mode " << static_cast<int>(mode);
  }
  const auto two = train::estimate_memory(a, s, {}, train::EstimateBackend::cuda_model, 2);
  const auto one = train::estimate_memory(a, s, {}, train::EstimateBackend::cuda_model, 1);
  EXPECT_LT(two.optimizer, one.optimizer);  // moments of half the rows
  EXPECT_GT(two.parameters, one.parameters / 2);  // plus the gathered units
}

// Tensor parallel on the GPU: the classifier's room for the slices' row statistics (loss
// parallel) or the gathered logits, appended after the 11 (and float8's 5) buffers prepare()
// maps in order; the estimate sums the sliced plan and that scratch.
TEST(CudaHostPlan, TensorParallelScratchAndEstimate) {
  const int64_t n = 1200;
  PassDims dims{{4, 300}, 256, 4, 32, 2500};
  dims.tp_degree = 2;
  auto names = [](const PassDims& p, ClassifierBudget b = {}) {
    std::map<std::string, size_t> out;
    for (const auto& x : cuda::backend_scratch(p, b)) out[x.name] = x.bytes;
    return out;
  };
  const auto loss_parallel = names(dims);
  EXPECT_EQ(cuda::backend_scratch(dims).size(), 13u);
  EXPECT_EQ(loss_parallel.at("loss parallel row statistics"), size_t(8 * 2 * n * 3));  // mine, then 2 ranks'
  EXPECT_EQ(loss_parallel.at("loss parallel log-sum-exp"), size_t(4 * n));
  EXPECT_EQ(loss_parallel.count("gathered logits"), 0u);
  dims.loss_parallel = false;
  const ClassifierBudget budget{2 * 2 * 5000 * 100};  // 100 rows of two whole-vocabulary buffers
  const auto gathered = names(dims, budget);
  EXPECT_EQ(cuda::gathered_logits_rows(dims, budget), 100);
  EXPECT_EQ(gathered.at("gathered logits"), size_t(2 * 100 * 5000));
  EXPECT_EQ(gathered.at("whole-vocabulary logits"), size_t(2 * 100 * 5000));
  dims.float8 = true;
  const auto both = cuda::backend_scratch(dims);
  ASSERT_EQ(both.size(), 18u);
  EXPECT_EQ(both[11].name, "float8 input");
  EXPECT_EQ(both[16].name, "gathered logits");

  ModelArgs a = small_args();
  a.vocab_size = 38;
  const BatchShape s{2, 64};
  for (const bool lp : {true, false}) {
    double want = 0;
    for (const auto& b : plan_activations(a, s, {}, 2).buffers)
      want += double(cuda::device_block_bytes(static_cast<size_t>(b.elements) * (b.f32 ? 4 : 2)));
    PassDims sliced{s, a.dim, a.n_heads / 2, a.head_dim(), a.vocab_size / 2, a.ffn_hidden() / 2};
    sliced.tp_degree = 2;
    sliced.loss_parallel = lp;
    for (const auto& b : cuda::backend_scratch(sliced)) want += double(cuda::device_block_bytes(b.bytes));
    const auto e = train::estimate_memory(a, s, {}, train::EstimateBackend::cuda_model, 1, false, AttentionLibrary::titan,
                                          false, 2, lp);
    EXPECT_EQ(e.activations, want) << "loss parallel " << lp;
  }
  const auto whole = train::estimate_memory(a, s, {}, train::EstimateBackend::cuda_model, 1);
  const auto half = train::estimate_memory(a, s, {}, train::EstimateBackend::cuda_model, 1, false, AttentionLibrary::titan,
                                           false, 2);
  const double norms = double((2 * a.n_layers + 1) * a.dim);  // replicated: whole on every rank
  const double sliced = double(metrics::parameter_count(a)) - norms;
  EXPECT_NEAR(half.optimizer / whole.optimizer, (sliced / 2 + norms) / (sliced + norms), 0.03);
}

TEST(OneModel, DecodingRunsTheBlocksOneRowAtATime) {
  const ModelArgs a = small_args();
  RecordingBackend backend(DType::bf16);
  NullWeights weights;
  Model model(a, backend, weights);
  KvCache cache = model.make_kv_cache(4);
  std::vector<float> logits(static_cast<size_t>(a.vocab_size));
  model.decode(3, cache, logits.data());
  backend.ops.clear();
  model.decode(5, cache, logits.data());
  EXPECT_EQ(count(backend.ops, "attention_decode 2"), 3);  // each block attends to both positions
  EXPECT_EQ(count(backend.ops, "copy"), 6);                // its key and value rows into the cache
  EXPECT_EQ(count(backend.ops, "logits n1"), 1);
  EXPECT_EQ(cache.position, 2);
}

namespace {
class RecordingUnitStore final : public parallel::UnitStore {
 public:
  std::vector<std::string> calls;
  std::set<int> gathered;
  int units() const override { return 4; }
  void gather(int u) override {
    if (gathered.insert(u).second) calls.push_back(concat("gather ", u));
  }
  void use(int u) override {
    gather(u);
    calls.push_back(concat("use ", u));
  }
  void reshard(int u) override {
    if (gathered.erase(u)) calls.push_back(concat("reshard ", u));
  }
  void begin_gradients(int u) override { calls.push_back(concat("grads ", u)); }
  void reduce_gradients(int u) override {
    calls.push_back(concat("reduce ", u));
    reshard(u);
  }
  void end_backward() override { calls.push_back("end"); }
};

std::vector<std::string> fsdp_calls(ReshardPolicy policy, bool prefetch) {
  RecordingUnitStore store;
  parallel::FullyShardedDataParallel fsdp(store, policy, prefetch);
  RecordingBackend backend(DType::bf16);
  NullWeights weights;
  Model model(small_args(), backend, weights);  // 3 blocks: units 0..3
  model.set_hooks(&fsdp);
  std::vector<int32_t> tokens(10, 1), labels(10, 2);
  model.forward_backward(tokens.data(), labels.data(), {2, 5}, 0.1f);
  EXPECT_TRUE(store.gathered.empty()) << "units left gathered after the step";
  return store.calls;
}
}  // namespace

// The GPU store's order (prefetch) is the legacy CudaTransformer's: the next block's gather
// issued before this one computes, the last block's beside the classifier, the block below
// during each backward; the host store's (no prefetch) gathers each unit when it runs.
TEST(FsdpPolicy, GathersPrefetchesFreesAndReducesInTheGpuOrder) {
  const std::vector<std::string> gpu = {
      "gather 0", "use 0", "gather 1", "use 1", "gather 2", "reshard 1", "use 2", "gather 3", "reshard 2", "use 3",
      "use 0", "grads 0",  // the classifier; block 3 (the last) kept its weights
      "use 3", "gather 2", "grads 3", "reduce 3", "reshard 3", "use 2", "gather 1", "grads 2", "reduce 2",
      "reshard 2", "use 1", "grads 1", "reduce 1", "reshard 1", "reduce 0", "reshard 0", "end"};
  EXPECT_EQ(fsdp_calls(ReshardPolicy{}, true), gpu);
  const auto host = fsdp_calls(ReshardPolicy{}, false);
  EXPECT_EQ(std::count(host.begin(), host.end(), "gather 1"), 2);  // forward, and again for backward
  EXPECT_EQ(std::count(host.begin(), host.end(), "gather 3"), 1);  // the last block is kept
  // "always": the root and the last block free theirs too, and gather again for backward.
  const auto always = fsdp_calls(ReshardPolicy::from_setting("always"), true);
  EXPECT_EQ(std::count(always.begin(), always.end(), "gather 0"), 2);
  EXPECT_EQ(std::count(always.begin(), always.end(), "gather 3"), 2);
  // "never": every block keeps its weights from forward to its backward.
  const auto never = fsdp_calls(ReshardPolicy::from_setting("never"), true);
  EXPECT_EQ(std::count(never.begin(), never.end(), "gather 1"), 1);
}

// What a captured CUDA graph keys on: a pass of the same shape keeps the buffers, another shape
// or a new checkpointing policy allocates anew (the executor then drops its graphs).
TEST(OneModel, PlanGenerationCountsReallocations) {
  RecordingBackend backend(DType::bf16);
  NullWeights weights;
  Model model(small_args(), backend, weights);
  model.plan({2, 5});
  const uint64_t first = model.plan_generation();
  model.plan({2, 5});
  EXPECT_EQ(model.plan_generation(), first);
  model.plan({1, 7});
  EXPECT_EQ(model.plan_generation(), first + 1);
  model.set_activation_checkpointing({Mode::full, 1});
  model.plan({1, 7});
  EXPECT_EQ(model.plan_generation(), first + 2);
}

// Float8 is applied from outside, per linear: the backend gets the recipe once and each block
// linear its precision, forward and backward; the classifier's op is unchanged.
TEST(OneModel, Float8LinearsReachTheBackendPerLinear) {
  const ModelArgs a = small_args();
  RecordingBackend backend(DType::bf16);
  NullWeights weights;
  Model model(a, backend, weights);
  model.set_float8_linears(select_float8_linears(model.layout(), float8::recipe("rowwise"), {"output", "layers.1."}));
  std::vector<int32_t> tokens(10, 1), labels(10, 2);
  model.forward_backward(tokens.data(), labels.data(), {2, 5}, 0.1f);
  const auto& ops = backend.ops;
  EXPECT_EQ(count(ops, "float8 recipe rowwise"), 1);
  int float8_forward = 0, float8_backward = 0, high = 0;
  for (const auto& op : ops) {
    const bool f8 = op.find(" float8") != std::string::npos && op.rfind("float8 recipe", 0) != 0;
    float8_forward += f8 && op.rfind("linear ", 0) == 0;
    float8_backward += f8 && op.rfind("linear_backward ", 0) == 0;
    high += !f8 && op.rfind("linear", 0) == 0;
  }
  EXPECT_EQ(float8_forward, 7 * 2);   // layers 0 and 2; layers.1. is filtered
  EXPECT_EQ(float8_backward, 7 * 2);
  EXPECT_EQ(high, 7 * 2);             // layers.1, forward and backward
}

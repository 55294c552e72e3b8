// Float8 (issue 21) as the CPU checks it beside the oracle (tests/oracle/test_float8.py): the
// recipes' definitions, scales, the casts' edge cases, which linears go to float8, the model
// handing each linear its precision, and the estimate counting the emulation's scratch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "titan/config/run_plan.h"
#include "titan/core/error.h"
#include "titan/models/llama3/float8_linears.h"
#include "titan/models/llama3/transformer.h"
#include "titan/ops/cuda/host_plan.h"
#include "titan/ops/float8.h"
#include "titan/train/memory_estimate.h"

using namespace titan;
using namespace titan::float8;
using titan::llama3::ModelArgs;

TEST(Float8, RecipesAreTorchaosConfigs) {
  const Recipe t = recipe("");
  EXPECT_EQ(t.name, "tensorwise");
  EXPECT_EQ(t.input.scaling, Scaling::tensorwise);
  EXPECT_EQ(t.input.format, Format::e4m3);
  EXPECT_EQ(t.weight.format, Format::e4m3);
  EXPECT_EQ(t.grad_output.format, Format::e5m2);  // gradients in e5m2: tensorwise only
  EXPECT_EQ(t.grad_output_for_grad_weight.format, Format::e5m2);
  EXPECT_FALSE(t.power_of_2_scales);
  const Recipe r = recipe("rowwise");
  for (const Cast& c : {r.input, r.weight, r.grad_output, r.weight_for_grad_input, r.grad_output_for_grad_weight,
                        r.input_for_grad_weight}) {
    EXPECT_EQ(c.scaling, Scaling::axiswise);
    EXPECT_EQ(c.format, Format::e4m3);
  }
  EXPECT_TRUE(r.power_of_2_scales);
  const Recipe hp = recipe("rowwise_with_gw_hp");
  EXPECT_EQ(hp.weight_for_grad_input.scaling, Scaling::tensorwise);
  EXPECT_EQ(hp.grad_output_for_grad_weight.scaling, Scaling::disabled);
  EXPECT_EQ(hp.input_for_grad_weight.scaling, Scaling::disabled);
  EXPECT_TRUE(hp.power_of_2_scales);
  EXPECT_THROW(recipe("blockwise"), UserError);
}

TEST(Float8, ScalesFromAmax) {
  EXPECT_EQ(scale_from_amax(2.0f, Format::e4m3, false), 224.0f);
  EXPECT_EQ(scale_from_amax(2.0f, Format::e5m2, false), 28672.0f);
  EXPECT_EQ(scale_from_amax(3.0f, Format::e4m3, false), static_cast<float>(448.0 / 3.0));
  EXPECT_EQ(scale_from_amax(3.0f, Format::e4m3, true), 128.0f);  // 149.3 down to a power of two
  EXPECT_EQ(scale_from_amax(0.0f, Format::e4m3, false), static_cast<float>(448.0 / 1e-12));  // torchao's floor on amax
  EXPECT_TRUE(std::isnan(scale_from_amax(NAN, Format::e4m3, false)));
  // A scale one ulp under 256 goes down to 128 (torchao's float32 log2 rounds it up to 256).
  const float amax = std::nextafter(1.75f, 2.0f);
  ASSERT_EQ(scale_from_amax(amax, Format::e4m3, false), std::nextafter(256.0f, 0.0f));
  EXPECT_EQ(scale_from_amax(amax, Format::e4m3, true), 128.0f);
}

TEST(Float8, SaturatingCastEdges) {
  EXPECT_EQ(saturate_round(1000.0f, Format::e4m3), 448.0f);
  EXPECT_EQ(saturate_round(-INFINITY, Format::e4m3), -448.0f);
  EXPECT_EQ(saturate_round(INFINITY, Format::e5m2), 57344.0f);
  EXPECT_TRUE(std::isnan(saturate_round(NAN, Format::e5m2)));
  EXPECT_EQ(saturate_round(1.0625f, Format::e4m3), 1.0f);     // a tie: to the even mantissa
  EXPECT_EQ(saturate_round(1.1875f, Format::e4m3), 1.25f);    // a tie: to the even mantissa, up
  EXPECT_EQ(saturate_round(std::ldexp(1.0f, -10), Format::e4m3), 0.0f);  // half the smallest subnormal: to zero
  EXPECT_EQ(saturate_round(std::ldexp(3.0f, -10), Format::e4m3), std::ldexp(1.0f, -8));  // 1.5 subnormals: to 2
  EXPECT_TRUE(std::signbit(saturate_round(-1e-30f, Format::e4m3)));
  EXPECT_EQ(encode(448.0f, Format::e4m3), 0x7E);
  EXPECT_EQ(encode(-57344.0f, Format::e5m2), 0xFB);
  EXPECT_EQ(decode(0x01, Format::e4m3), std::ldexp(1.0f, -9));
  EXPECT_EQ(decode(0x7C, Format::e5m2), INFINITY);
}

// Rows far apart in magnitude: one scale per row keeps each row's relative precision, one scale
// for the tensor sends the small row into float8's subnormals.
TEST(Float8, RowwiseScalesKeepSmallRows) {
  const std::vector<float> m = {1000.0f, -700.0f, 300.0f, 1e-3f, 1.3e-3f, -0.7e-3f};
  std::vector<float> row(6), tensor(6);
  quantize_dequantize(m.data(), row.data(), 2, 3, {Scaling::axiswise, Format::e4m3}, Axis::rows, true);
  quantize_dequantize(m.data(), tensor.data(), 2, 3, {Scaling::tensorwise, Format::e4m3}, Axis::rows, false);
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(row[i], m[i], std::fabs(m[i]) / 16) << i;  // 3 mantissa bits
  EXPECT_EQ(tensor[3], 0.0f);  // 1e-3 x 0.448: under half of e4m3's smallest subnormal
  std::vector<float> copy(6);
  quantize_dequantize(m.data(), copy.data(), 2, 3, {Scaling::disabled, Format::e4m3}, Axis::rows, true);
  EXPECT_EQ(copy, m);
}

TEST(Float8, SelectsLinearsAsTorchtitansFilter) {
  const ModelArgs debug = llama3::flavor("debugmodel");
  const llama3::ModelLayout layout(debug);
  const auto with_output = llama3::select_float8_linears(layout, recipe(""), {"output"});
  EXPECT_EQ(with_output.converted.size(), 7u * debug.n_layers);
  ASSERT_EQ(with_output.kept.size(), 1u);
  EXPECT_EQ(with_output.kept[0], "output: float8.filter_fqns has \"output\"");
  // torchtitan's default filter is empty; titan's fused classifier still stays in high precision.
  const auto empty = llama3::select_float8_linears(layout, recipe(""), {});
  EXPECT_EQ(empty.converted.size(), 7u * debug.n_layers);
  EXPECT_NE(empty.kept[0].find("fused classifier"), std::string::npos);
  const auto first = llama3::select_float8_linears(layout, recipe(""), {"layers.0.", "w2"});
  EXPECT_EQ(first.converted.size(), 7u * debug.n_layers - 7 - (debug.n_layers - 1));
  ModelArgs odd = debug;
  odd.dim = 72;  // not a multiple of 16: no linear qualifies
  odd.n_heads = 6;
  odd.n_kv_heads = 6;
  const auto none = llama3::select_float8_linears(llama3::ModelLayout(odd), recipe(""), {});
  EXPECT_TRUE(none.converted.empty());
  EXPECT_NE(llama3::describe(none, llama3::ModelLayout(odd)).find("not a multiple of 16"), std::string::npos);
}

// The emulation's scratch is part of the CPU activations, and titan estimate counts it.
TEST(Float8, EstimateCountsTheEmulationScratch) {
  ModelArgs a = llama3::flavor("debugmodel");
  a.n_layers = 2;
  const llama3::BatchShape s{2, 32};
  llama3::Transformer m(a);
  m.model().set_float8_linears(llama3::select_float8_linears(m.layout(), recipe("rowwise"), {"output"}));
  m.plan(s);
  const auto e = train::estimate_memory(a, s, {}, train::EstimateBackend::cpu, 1, false, AttentionLibrary::titan, true);
  EXPECT_EQ(e.activations, static_cast<double>(m.memory().activation_bytes));
  EXPECT_GT(e.activations, train::estimate_memory(a, s, {}, train::EstimateBackend::cpu, 1).activations);
}

// The device store's own buffers for the FP8 all-gather: the largest unit's e4m3 shards (each
// 256-byte aligned), and the amax plus an aligned (scale, 1/scale) pair per float8 weight.
TEST(Float8, EstimateCountsTheDeviceAllGatherBuffers) {
  ModelArgs a;  // shards that are not multiples of 256 bytes: the alignment shows
  a.dim = 48;
  a.n_layers = 2;
  a.n_heads = 6;
  a.n_kv_heads = 2;
  a.vocab_size = 37;
  a.multiple_of = 32;
  config::RunPlan plan;
  plan.float8.enabled = true;
  plan.float8.recipe = recipe("");
  plan.float8.filter_fqns = {"output"};
  EXPECT_EQ(train::float8_all_gather_bytes(plan, a, 2, true), 0.0) << "off unless enable_fsdp_float8_all_gather";
  plan.float8.fsdp_all_gather = true;
  EXPECT_EQ(train::float8_all_gather_bytes(plan, a, 1, true), 0.0) << "nothing gathered without shards";
  const llama3::ModelLayout layout(a);
  const int64_t kv = layout[layout.block_index(0, llama3::Role::wk)].shape[0], ffn = a.ffn_hidden();
  auto shard = [](int64_t rows, int64_t cols) {
    const int64_t bytes = (rows + 1) / 2 * cols;
    return double((bytes + 255) / 256 * 256);
  };
  // A block: wq, wo (dim x dim), wk, wv (kv x dim), w1, w3 (ffn x dim), w2 (dim x ffn), over 2 shards.
  const double block = shard(a.dim, a.dim) * 2 + shard(kv, a.dim) * 2 + shard(ffn, a.dim) * 2 + shard(a.dim, ffn);
  const double weights = 7.0 * double(a.n_layers);
  const double scales = 4 * (std::ceil(weights / 8) * 8 + 8 * weights);
  const double want = double(cuda::device_block_bytes(static_cast<size_t>(block))) +
                      double(cuda::device_block_bytes(static_cast<size_t>(scales)));
  EXPECT_EQ(train::float8_all_gather_bytes(plan, a, 2, true), want);
}

// One step of the emulated model moves the loss off the fp32 model's, by about float8's error.
TEST(Float8, ModelRunsItsLinearsInFloat8) {
  ModelArgs a = llama3::flavor("debugmodel");
  a.n_layers = 2;
  const llama3::BatchShape s{2, 32};
  std::vector<int32_t> tokens(64), labels(64);
  for (int i = 0; i < 64; ++i) {
    tokens[i] = (i * 37) % a.vocab_size;
    labels[i] = (i * 53 + 1) % a.vocab_size;
  }
  llama3::Transformer plain(a), f8(a);
  plain.init_weights(3);
  f8.init_weights(3);
  f8.model().set_float8_linears(llama3::select_float8_linears(f8.layout(), recipe(""), {"output"}));
  const auto p = plain.forward_backward(tokens.data(), labels.data(), s, 1.0f / 64);
  const auto q = f8.forward_backward(tokens.data(), labels.data(), s, 1.0f / 64);
  const double diff = std::fabs(p.loss_sum - q.loss_sum) / p.loss_sum;
  EXPECT_GT(diff, 1e-6);  // the linears were quantised
  EXPECT_LT(diff, 1e-2);  // and still compute the same model
}

// The CUDA backend's float8 scratch (host plan, compiled in every build): room for the largest
// linear's operands and two operands' scales, and titan estimate counts it for the GPU.
TEST(Float8, CudaScratchHoldsEveryFloat8LinearsOperands) {
  const ModelArgs a = llama3::flavor("debugmodel");
  const llama3::BatchShape s{2, 64};
  PassDims p{s, a.dim, a.n_heads, a.head_dim(), a.vocab_size, a.ffn_hidden(), false};
  const auto plain = cuda::backend_scratch(p);
  p.float8 = true;
  const auto f8 = cuda::backend_scratch(p);
  ASSERT_EQ(f8.size(), plain.size() + 5);
  auto bytes = [&](const std::string& name) {
    for (const auto& b : f8)
      if (b.name == name) return b.bytes;
    ADD_FAILURE() << "no scratch buffer " << name;
    return size_t{0};
  };
  const llama3::ModelLayout layout(a);
  for (const size_t i : llama3::select_float8_linears(layout, recipe("rowwise"), {"output"}).converted) {
    const int64_t out = layout[i].shape[0], in = layout[i].shape[1], n = s.rows();
    EXPECT_GE(bytes("float8 input"), static_cast<size_t>(n * in)) << layout[i].name;
    EXPECT_GE(bytes("float8 grad output"), static_cast<size_t>(n * out)) << layout[i].name;
    EXPECT_GE(bytes("float8 grad output transposed"), static_cast<size_t>(n * out)) << layout[i].name;
    EXPECT_GE(bytes("float8 weight"), static_cast<size_t>(in * out)) << layout[i].name;
    EXPECT_GE(bytes("float8 scales"), 4u * 6u * static_cast<size_t>(std::max({n, in, out}))) << layout[i].name;
  }
  const auto with = train::estimate_memory(a, s, {}, train::EstimateBackend::cuda_model, 1, false, AttentionLibrary::titan, true);
  const auto without = train::estimate_memory(a, s, {}, train::EstimateBackend::cuda_model, 1);
  double added = 0;
  for (size_t k = plain.size(); k < f8.size(); ++k) added += double(cuda::device_block_bytes(f8[k].bytes));
  EXPECT_EQ(with.activations - without.activations, added);
}

TEST(Float8, ScaleSpansFollowTheContraction) {
  const Cast tensor{Scaling::tensorwise, Format::e4m3}, axis{Scaling::axiswise, Format::e4m3};
  EXPECT_EQ(cuda::scale_span(tensor, Axis::columns), cuda::ScaleSpan::tensor);
  EXPECT_EQ(cuda::scale_span(axis, Axis::rows), cuda::ScaleSpan::rows);
  EXPECT_EQ(cuda::scale_span(axis, Axis::columns), cuda::ScaleSpan::columns);
  EXPECT_EQ(cuda::scale_count(cuda::ScaleSpan::tensor, 7, 9), 1);
  EXPECT_EQ(cuda::scale_count(cuda::ScaleSpan::rows, 7, 9), 7);
  EXPECT_EQ(cuda::scale_count(cuda::ScaleSpan::columns, 7, 9), 9);
}

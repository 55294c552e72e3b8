// cuDNN attention (TITAN_ATTENTION_IMPL=cudnn or auto) against the CPU reference, paired both ways with
// titan's kernels (same lse convention), and replayed from a CUDA graph as training does.
// The library and selection checks run without a GPU.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "titan/ops/cuda/cudnn_api.h"
#include "titan/ops/cuda/cudnn_attention.h"
#include "titan/ops/cuda/cudnn_graph.h"
#include "titan/ops/ops.h"

#include "../support/scoped_env.h"

using namespace titan;
using namespace titan::gpu_test;

namespace {
constexpr double kF32 = 1e-5, kAttention = 2e-2;

std::string where(const cuda::AttentionShape& s) {
  return "b s h kv hd " + std::to_string(s.batch) + " " + std::to_string(s.seq) + " " + std::to_string(s.heads) + " " +
         std::to_string(s.kv_heads) + " " + std::to_string(s.head_dim) + " (seed " + std::to_string(fresh_seed()) + ")";
}

std::string error_of(void (*f)()) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "no UserError";
}

using titan::test_support::ScopedEnv;

// Random bf16 inputs of one shape, their device copies, and the CPU reference results.
struct Case {
  explicit Case(const cuda::AttentionShape& shape)
      : s(shape),
        nq(s.batch * s.seq * s.heads * s.head_dim),
        nk(s.batch * s.seq * s.kv_heads * s.head_dim),
        nr(s.batch * s.heads * s.seq),
        q(randn(where(s) + "q", nq)),
        k(randn(where(s) + "k", nk)),
        v(randn(where(s) + "v", nk)),
        dout(randn(where(s) + "do", nq)),
        dq_in(to_bf16(q)),
        dk_in(to_bf16(k)),
        dv_in(to_bf16(v)),
        ddo(to_bf16(dout)),
        ro(nq),
        rlse(nr),
        rdq(nq),
        rdk(nk),
        rdv(nk) {
    const cpu::AttentionShape cs{s.batch, s.seq, s.heads, s.kv_heads, s.head_dim};
    cpu::attention_forward(q.data(), k.data(), v.data(), ro.data(), rlse.data(), cs);
    cpu::attention_backward(q.data(), k.data(), v.data(), ro.data(), rlse.data(), dout.data(), rdq.data(), rdk.data(),
                            rdv.data(), cs);
  }
  cuda::AttentionShape s;
  int64_t nq, nk, nr;
  std::vector<float> q, k, v, dout;
  DeviceArray<uint16_t> dq_in, dk_in, dv_in, ddo;
  std::vector<float> ro, rlse, rdq, rdk, rdv;
};

// Outputs of one forward + backward on the device.
struct Outputs {
  explicit Outputs(const Case& c) : o(c.nq), dq(c.nq), dk(c.nk), dv(c.nk), lse(c.nr), delta(c.nr) {}
  DeviceArray<uint16_t> o, dq, dk, dv;
  DeviceArray<float> lse, delta;
};

void expect_forward_matches(const Case& c, const Outputs& out, const std::string& tag) {
  EXPECT_LT(rel_l2(from_bf16(out.o.download()), c.ro), kAttention) << tag << " o";
  EXPECT_LT(rel_l2(out.lse.download(), c.rlse), kF32) << tag << " lse";
}

void expect_backward_matches(const Case& c, const Outputs& out, const std::string& tag) {
  EXPECT_LT(rel_l2(from_bf16(out.dq.download()), c.rdq), kAttention) << tag << " dq";
  EXPECT_LT(rel_l2(from_bf16(out.dk.download()), c.rdk), kAttention) << tag << " dk";
  EXPECT_LT(rel_l2(from_bf16(out.dv.download()), c.rdv), kAttention) << tag << " dv";
}

const std::vector<cuda::AttentionShape> kShapes{
    {1, 128, 4, 4, 64}, {2, 256, 8, 2, 64}, {1, 384, 4, 1, 128}, {2, 128, 2, 2, 128}};
}  // namespace

TEST(CudnnLibrary, MissingLibraryOrSymbolsIsAUserError) {
  EXPECT_NE(error_of([] { cuda::cudnn::load_api("libtitan-no-such-cudnn.so.9"); }).find("cannot load"),
            std::string::npos);
  // A real library that is not cuDNN.
  EXPECT_NE(error_of([] { cuda::cudnn::load_api("libm.so.6"); }).find("no symbol cudnnGetVersion"), std::string::npos);
}

TEST(CudnnLibrary, InstalledLibraryHasEveryEntryPoint) {
  try {
    const auto api = cuda::cudnn::load_api("libcudnn.so.9");
    EXPECT_GE(api.get_version(), 90000u);
  } catch (const UserError& e) {
    if (std::string(e.what()).find("cannot load") == std::string::npos) throw;
    GTEST_SKIP() << "no cuDNN 9 on this machine: " << e.what();
  }
}

TEST(CudnnAttentionChoice, EnvironmentSelectsTheImplementation) {
  const std::pair<const char*, AttentionLibrary> cases[] = {{nullptr, AttentionLibrary::automatic},
                                                               {"titan", AttentionLibrary::titan},
                                                               {"cudnn", AttentionLibrary::cudnn},
                                                               {"auto", AttentionLibrary::automatic}};
  for (const auto& [value, impl] : cases) {
    ScopedEnv env({{"TITAN_ATTENTION_IMPL", value}});
    EXPECT_EQ(attention_library_from_env(), impl) << (value ? value : "unset");
  }
  ScopedEnv env({{"TITAN_ATTENTION_IMPL", "cuDNN"}});
  EXPECT_NE(error_of([] { (void)attention_library_from_env(); }).find("expected titan or cudnn or auto"),
            std::string::npos);
}

// auto opens cuDNN where it can and otherwise says why; cudnn turns the same failure into an
// error. ctest runs this twice: as is (here without a GPU, on the card with one), and with
// TITAN_CUDNN_LIBRARY naming a library that does not exist.
TEST(CudnnAttentionChoice, AutoFallsBackWhereCudnnCannotOpenAndCudnnFails) {
  cuda::DeviceAllocator alloc;
  std::string why = "untouched";
  EXPECT_EQ(cuda::open_cudnn_attention(AttentionLibrary::titan, nullptr, alloc, &why), nullptr);
  EXPECT_EQ(why, "untouched");
  const char* library = std::getenv("TITAN_CUDNN_LIBRARY");
  const bool missing_library = library && std::string(library).find("no-such") != std::string::npos;
  bool loads = !missing_library;
  try {
    (void)cuda::cudnn::api();
  } catch (const UserError&) {
    loads = false;
  }
  const bool usable = loads && cuda::device_count() > 0;
  why.clear();
  const auto automatic = cuda::open_cudnn_attention(AttentionLibrary::automatic, nullptr, alloc, &why);
  EXPECT_EQ(automatic != nullptr, usable) << why;
  EXPECT_EQ(why.empty(), usable) << why;
  if (missing_library) {
    EXPECT_NE(why.find("cannot load"), std::string::npos) << why;
  }
  if (usable) return;
  std::printf("auto, cuDNN unusable: %s\n", why.c_str());
  std::string strict_error = "none";
  try {
    (void)cuda::open_cudnn_attention(AttentionLibrary::cudnn, nullptr, alloc, nullptr);
  } catch (const std::exception& e) {
    strict_error = e.what();
  }
  EXPECT_EQ(strict_error, why) << "cudnn must fail with the reason auto gives";
}

TEST(CudnnAttentionChoice, TakesOnlyShapesItWasCheckedOn) {
  EXPECT_TRUE(cuda::CudnnAttention::handles({4, 2048, 32, 8, 64}));
  EXPECT_TRUE(cuda::CudnnAttention::handles({2, 4096, 32, 8, 128}));
  EXPECT_FALSE(cuda::CudnnAttention::handles({8, 2048, 16, 16, 16}));  // debugmodel's head_dim
  EXPECT_FALSE(cuda::CudnnAttention::handles({1, 200, 4, 2, 64}));     // keys not a multiple of 128
  EXPECT_FALSE(cuda::CudnnAttention::handles({1, 256, 6, 4, 64}));     // heads not a multiple of kv_heads
}

// Every tensor and op descriptor of both graphs finalizes: cuDNN checks attribute types and
// matmul operand shapes here, on the host, before any device is involved.
TEST(CudnnAttentionGraph, EveryOpOfBothGraphsFinalizes) {
  try {
    (void)cuda::cudnn::api();
  } catch (const UserError& e) {
    GTEST_SKIP() << e.what();
  }
  for (const auto& s : kShapes) {
    cuda::cudnn::Graph fwd, bwd;
    const auto f = cuda::describe_attention_forward(fwd, s);
    const auto b = cuda::describe_attention_backward(bwd, s);
    // Each tensor bound at execute time is a distinct tensor of its graph.
    const std::set<int64_t> fwd_bound{f.q, f.k, f.v, f.o, f.stats, f.scale, f.neg_inf};
    const std::set<int64_t> bwd_bound{b.q, b.k, b.v, b.o, b.dout, b.stats, b.dq, b.dk, b.dv, b.scale, b.neg_inf,
                                      b.one, b.softmax_sum, b.dq_accum};
    EXPECT_EQ(fwd_bound.size(), 7u) << where(s);
    EXPECT_EQ(bwd_bound.size(), 14u) << where(s);
    EXPECT_EQ(fwd.op_count(), 14) << where(s);
    EXPECT_EQ(bwd.op_count(), s.heads == s.kv_heads ? 22 : 24) << where(s);
  }
}

// An H100 as cuDNN's device-properties JSON (cuDNN 9.8+ builds plans for a described GPU; its
// parser names the keys, the values are the H100 SXM's).
constexpr const char* kH100 = R"({"maxGridSize": [2147483647, 65535, 65535], "maxBlockSize": [1024, 1024, 64],
 "regsPerBlock": 65536, "multiProcessorCount": 132, "warpSize": 32, "maxSharedMemoryPerBlock": 49152,
 "maxSharedMemoryPerBlockOptin": 232448, "reservedSharedMemoryPerBlock": 1024, "maxRegistersPerSM": 65536,
 "maxCtasPerSM": 32, "maxThreadsPerBlock": 1024, "maxThreadsPerSM": 2048, "pciDeviceId": 0, "isTccDriver": 0,
 "supportCoopLaunch": 1, "smClockRateKHz": 1980000, "memClockRateKHz": 2619000, "l2CacheSize": 52428800,
 "deviceName": "NVIDIA H100 80GB HBM3", "smVersion": 90, "totalGlobalMem": 85030076416, "cudaDeviceId": 0,
 "deviceVer": 900, "driverVer": 13000})";

// Without a GPU: cuDNN builds both plans for an H100 as far as it can. Its fused attention
// engines accept the graphs and compile their kernels; only loading the compiled module needs
// a driver, and the CUDA toolkit's stub driver refuses that. So the best-ranked engine failing
// there, and not "not supported" or "no engine", shows it took the graph. Run alone (ctest
// gpu.cudnn_deviceless): the stub driver stays loaded in the process. On a machine with a GPU the tests above do this for real.
TEST(CudnnDeviceless, FusedEnginesCompileBothGraphsForHopper) {
  if (cuda::device_count() > 0) GTEST_SKIP() << "a GPU is here: the device tests build real plans";
  size_t version = 0;
  try {
    version = cuda::cudnn::api().get_version();
  } catch (const UserError& e) {
    GTEST_SKIP() << e.what();
  }
  if (version < 90800) GTEST_SKIP() << "cuDNN " << version << " cannot describe a device (9.8+)";
  const char* stub = "/usr/local/cuda/lib64/stubs/libcuda.so";
  if (!dlopen(stub, RTLD_NOW | RTLD_GLOBAL)) GTEST_SKIP() << "no CUDA stub driver at " << stub;
  std::printf("deviceless check with cuDNN %zu\n", version);  // scripts/cudnn_version_check.sh reads it
  cuda::cudnn::Descriptor h100(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR);
  const std::string json = kH100;
  h100.set(CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, static_cast<int64_t>(json.size()), json.data());
  h100.finalize();
  // The test shapes, and the benchmark shapes titan runs with cuDNN (150M, 1B, 8B layers).
  std::vector<cuda::AttentionShape> shapes = kShapes;
  shapes.insert(shapes.end(), {{16, 2048, 12, 4, 64}, {4, 2048, 32, 8, 64}, {2, 4096, 32, 8, 128}});
  for (const auto& s : shapes) {
    for (const bool backward : {false, true}) {
      cuda::cudnn::Graph g;
      if (backward) cuda::describe_attention_backward(g, s);
      else cuda::describe_attention_forward(g, s);
      // The error names the best-ranked engine's failure; a build that succeeds passes too.
      std::string failure;
      try {
        g.build_for_device(h100, backward ? "attention backward" : "attention forward");
      } catch (const UserError& e) {
        failure = e.what();
      }
      EXPECT_TRUE(failure.empty() || failure.find("CUDA_DRIVER") != std::string::npos)
          << where(s) << (backward ? " backward: " : " forward: ") << failure;
    }
  }
}

TEST(CudnnAttention, ForwardAndBackwardMatchCpuAndPairWithTitanKernels) {
  TITAN_REQUIRE_GPU();
  cuda::DeviceAllocator alloc;
  cuda::CudnnAttention cudnn(nullptr, alloc);
  for (const auto& s : kShapes) {
    const Case c(s);
    const std::string tag = "cudnn " + where(s);
    Outputs out(c);
    ASSERT_TRUE(cudnn.forward(c.dq_in.get(), c.dk_in.get(), c.dv_in.get(), out.o.get(), out.lse.get(), s)) << tag;
    expect_forward_matches(c, out, tag);
    ASSERT_TRUE(cudnn.backward(c.dq_in.get(), c.dk_in.get(), c.dv_in.get(), out.o.get(), out.lse.get(), c.ddo.get(),
                               out.dq.get(), out.dk.get(), out.dv.get(), s))
        << tag;
    expect_backward_matches(c, out, tag);
    // Again: the accumulator cuDNN keeps for dQ must start clean on every call.
    out.dq.poison();
    out.dk.poison();
    out.dv.poison();
    cudnn.backward(c.dq_in.get(), c.dk_in.get(), c.dv_in.get(), out.o.get(), out.lse.get(), c.ddo.get(), out.dq.get(),
                   out.dk.get(), out.dv.get(), s);
    expect_backward_matches(c, out, tag + " second backward");

    // titan's backward from cuDNN's forward, and cuDNN's backward from titan's forward.
    Outputs mixed(c);
    cuda::attention_backward(c.dq_in.get(), c.dk_in.get(), c.dv_in.get(), out.o.get(), out.lse.get(), c.ddo.get(),
                             mixed.dq.get(), mixed.dk.get(), mixed.dv.get(), mixed.delta.get(), s, nullptr);
    expect_backward_matches(c, mixed, tag + " titan backward after cudnn forward");
    Outputs titan_fwd(c);
    cuda::attention_forward(c.dq_in.get(), c.dk_in.get(), c.dv_in.get(), titan_fwd.o.get(), titan_fwd.lse.get(), s,
                            nullptr);
    cudnn.backward(c.dq_in.get(), c.dk_in.get(), c.dv_in.get(), titan_fwd.o.get(), titan_fwd.lse.get(), c.ddo.get(),
                   titan_fwd.dq.get(), titan_fwd.dk.get(), titan_fwd.dv.get(), s);
    expect_backward_matches(c, titan_fwd, tag + " cudnn backward after titan forward");
  }
  EXPECT_GT(alloc.stats().active, 0u) << "the backward's fp32 scratch comes from titan's allocator";
}

TEST(CudnnAttention, ReplaysFromACudaGraph) {
  TITAN_REQUIRE_GPU();
  cudaStream_t stream = nullptr;
  TITAN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  {
    cuda::DeviceAllocator alloc;
    cuda::CudnnAttention cudnn(stream, alloc);
    const cuda::AttentionShape s{2, 256, 8, 2, 64};
    const Case c(s);
    Outputs out(c);
    auto step = [&] {
      EXPECT_TRUE(cudnn.forward(c.dq_in.get(), c.dk_in.get(), c.dv_in.get(), out.o.get(), out.lse.get(), s));
      EXPECT_TRUE(cudnn.backward(c.dq_in.get(), c.dk_in.get(), c.dv_in.get(), out.o.get(), out.lse.get(), c.ddo.get(),
                                 out.dq.get(), out.dk.get(), out.dv.get(), s));
    };
    step();  // builds the plans outside the capture, as the trainer's eager first step does
    TITAN_CUDA_CHECK(cudaStreamSynchronize(stream));
    const auto eager_o = out.o.download();
    cudaGraph_t graph = nullptr;
    TITAN_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    step();
    TITAN_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    TITAN_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    out.o.poison();
    out.lse.poison();
    out.dq.poison();
    out.dk.poison();
    out.dv.poison();
    for (int replay = 0; replay < 2; ++replay) TITAN_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    TITAN_CUDA_CHECK(cudaStreamSynchronize(stream));
    EXPECT_EQ(out.o.download(), eager_o) << "replayed forward differs from the eager one";
    expect_forward_matches(c, out, "graph replay");
    expect_backward_matches(c, out, "graph replay");
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  cudaStreamDestroy(stream);
}

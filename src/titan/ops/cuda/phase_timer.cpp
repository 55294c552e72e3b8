#include "titan/ops/cuda/phase_timer.h"

#include "titan/ops/cuda/cuda_check.h"

namespace titan::cuda {

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::embedding: return "embedding";
    case Phase::norm_elementwise: return "norms, RoPE, SwiGLU, adds";
    case Phase::gemm: return "linear GEMMs";
    case Phase::attention_forward: return "attention forward";
    case Phase::attention_backward: return "attention backward";
    case Phase::classifier: return "classifier (GEMMs + cross-entropy)";
    case Phase::optimizer: return "grad norm + AdamW";
    case Phase::communication: return "waiting for FSDP collectives";
    default: return "?";
  }
}

PhaseTimer::~PhaseTimer() {
  for (cudaEvent_t e : pool_) cudaEventDestroy(e);
}

cudaEvent_t PhaseTimer::event(size_t i) {
  while (pool_.size() <= i) {
    cudaEvent_t e = nullptr;
    TITAN_CUDA_CHECK(cudaEventCreate(&e));
    pool_.push_back(e);
  }
  return pool_[i];
}

void PhaseTimer::mark(Phase p) {
  TITAN_CUDA_CHECK(cudaEventRecord(event(phases_.size()), stream_));
  phases_.push_back(p);
}

void PhaseTimer::finish_step() {
  if (phases_.empty()) return;
  const size_t n = phases_.size();
  TITAN_CUDA_CHECK(cudaEventRecord(event(n), stream_));
  TITAN_CUDA_CHECK(cudaEventSynchronize(event(n)));
  for (size_t i = 0; i < n; ++i) {
    float ms = 0;
    TITAN_CUDA_CHECK(cudaEventElapsedTime(&ms, event(i), event(i + 1)));
    totals_ms_[static_cast<size_t>(phases_[i])] += ms;
  }
  float span = 0;
  TITAN_CUDA_CHECK(cudaEventElapsedTime(&span, event(0), event(n)));
  span_ms_ += span;
  ++steps_;
  phases_.clear();
}

}  // namespace titan::cuda

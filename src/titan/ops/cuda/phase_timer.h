// Device time per phase of a step, from CUDA events: mark(phase) records an event and from
// then on the stream's time counts to that phase, until the next mark. Launch gaps inside a
// phase count to it; host time when the stream is idle (syncs, data) shows as the difference
// between a step's wall time and the events' span.
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <string>
#include <vector>

namespace titan::cuda {

// communication: the compute stream waiting for FSDP's collectives (exposed communication).
enum class Phase {
  embedding, norm_elementwise, gemm, attention_forward, attention_backward, classifier, optimizer, communication, count
};
const char* phase_name(Phase p);

class PhaseTimer {
 public:
  explicit PhaseTimer(cudaStream_t stream) : stream_(stream) {}
  ~PhaseTimer();
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

  void mark(Phase p);
  // Closes the open phase, waits for the stream and adds the step's intervals to the totals.
  void finish_step();
  const std::array<double, static_cast<size_t>(Phase::count)>& totals_ms() const { return totals_ms_; }
  double span_ms() const { return span_ms_; }  // from each step's first mark to its end, summed
  int64_t steps() const { return steps_; }

 private:
  cudaEvent_t event(size_t i);
  cudaStream_t stream_;
  std::vector<cudaEvent_t> pool_;
  std::vector<Phase> phases_;  // phase of the interval starting at event i
  std::array<double, static_cast<size_t>(Phase::count)> totals_ms_{};
  double span_ms_ = 0;
  int64_t steps_ = 0;
};

}  // namespace titan::cuda

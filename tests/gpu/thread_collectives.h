// W ranks as threads on one GPU, for the multi-rank tests (FSDP, tensor parallel) on a one-card
// machine. A collective meets at host barriers only to swap pointers and events; the data moves
// on each rank's own stream, ordered by events as NCCL orders it (a rank's copies wait for every
// sender's event; a sender's stream waits until every rank has copied), so a missing wait in
// the model shows up here too. Reductions add in rank order.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "titan/core/error.h"
#include "titan/ops/cuda/collectives.h"
#include "titan/ops/cuda/cuda_check.h"
#include "titan/ops/cuda/cuda_ops.h"

namespace titan::gpu_test {

class ThreadCollectives final : public cuda::DeviceCollectives {
 public:
  struct Meeting {
    explicit Meeting(int w)
        : world(w), barrier(w), send(static_cast<size_t>(w), nullptr), ready(static_cast<size_t>(w), nullptr),
          done(static_cast<size_t>(w), nullptr) {}
    int world;
    std::barrier<> barrier;
    // Set by a rank that failed (before it leaves the barrier): the others stop at their next
    // meeting instead of reading its freed buffers.
    std::atomic<bool> failed{false};
    void fail() {
      failed = true;
      barrier.arrive_and_drop();
    }
    void arrive_and_wait() {
      barrier.arrive_and_wait();
      if (failed) throw std::runtime_error("another rank of this collective failed");
    }
    std::vector<const void*> send;
    std::vector<cudaEvent_t> ready, done;
  };
  ThreadCollectives(Meeting& m, int rank) : m_(m), rank_(rank) {
    TITAN_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    TITAN_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }
  ~ThreadCollectives() override {
    cudaEventDestroy(ready_);
    cudaEventDestroy(done_);
  }
  int rank() const override { return rank_; }
  int size() const override { return m_.world; }
  void all_gather_bf16(const cuda::bf16* send, cuda::bf16* recv, int64_t count, cudaStream_t stream) override {
    all_gather_bytes(send, recv, count * static_cast<int64_t>(sizeof(cuda::bf16)), stream);
  }
  void all_gather_bytes(const void* send, void* recv, int64_t bytes, cudaStream_t stream) override {
    exchange(send, stream, [&] {
      for (int q = 0; q < m_.world; ++q)
        TITAN_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(recv) + q * bytes, m_.send[q], static_cast<size_t>(bytes),
                                         cudaMemcpyDeviceToDevice, stream));
    });
  }
  void reduce_scatter_f32(const float* send, float* recv, int64_t count, cudaStream_t stream) override {
    exchange(send, stream, [&] {  // rank 0's slice, then the others added in rank order
      TITAN_CUDA_CHECK(cudaMemcpyAsync(recv, static_cast<const float*>(m_.send[0]) + rank_ * count,
                                       count * sizeof(float), cudaMemcpyDeviceToDevice, stream));
      for (int q = 1; q < m_.world; ++q)
        cuda::accumulate_f32(recv, static_cast<const float*>(m_.send[q]) + rank_ * count, count, stream);
    });
  }
  void reduce_scatter_bf16(const cuda::bf16* send, cuda::bf16* recv, int64_t count, cudaStream_t stream) override {
    exchange(send, stream, [&] {  // in bf16, rounded after each addition as NCCL's bf16 sum rounds
      TITAN_CUDA_CHECK(cudaMemcpyAsync(recv, static_cast<const cuda::bf16*>(m_.send[0]) + rank_ * count,
                                       count * sizeof(cuda::bf16), cudaMemcpyDeviceToDevice, stream));
      for (int q = 1; q < m_.world; ++q)
        cuda::add(recv, static_cast<const cuda::bf16*>(m_.send[q]) + rank_ * count, recv, count, stream);
    });
  }
  void all_reduce_f32(float* data, int64_t count, cudaStream_t stream) override {
    // In place: every rank's values staged first, so no rank reads a sum another has written.
    float* staged = nullptr;
    TITAN_CUDA_CHECK(cudaMalloc(&staged, static_cast<size_t>(count) * sizeof(float)));
    TITAN_CUDA_CHECK(cudaMemcpyAsync(staged, data, count * sizeof(float), cudaMemcpyDeviceToDevice, stream));
    exchange(staged, stream, [&] {
      TITAN_CUDA_CHECK(cudaMemcpyAsync(data, m_.send[0], count * sizeof(float), cudaMemcpyDeviceToDevice, stream));
      for (int q = 1; q < m_.world; ++q) cuda::accumulate_f32(data, static_cast<const float*>(m_.send[q]), count, stream);
    });
    TITAN_CUDA_CHECK(cudaStreamSynchronize(stream));  // every rank's reads of `staged` are done (exchange's last wait)
    m_.arrive_and_wait();
    TITAN_CUDA_CHECK(cudaFree(staged));
  }
  void all_reduce_max_f32(float* data, int64_t count, cudaStream_t stream) override {
    // A few floats (the weights' amaxes): through host memory.
    std::vector<float> mine(static_cast<size_t>(count)), out;
    TITAN_CUDA_CHECK(cudaMemcpyAsync(mine.data(), data, count * sizeof(float), cudaMemcpyDeviceToHost, stream));
    TITAN_CUDA_CHECK(cudaStreamSynchronize(stream));
    m_.send[rank_] = mine.data();
    m_.arrive_and_wait();
    out = mine;
    auto bits = [](float v) {  // as NCCL's run compares them: unsigned bits, NaN above inf
      uint32_t u;
      std::memcpy(&u, &v, sizeof u);
      return u;
    };
    for (int q = 0; q < m_.world; ++q)
      for (int64_t i = 0; i < count; ++i) {
        const float v = static_cast<const float*>(m_.send[q])[i];
        if (bits(v) > bits(out[i])) out[i] = v;
      }
    m_.arrive_and_wait();  // nobody's `mine` goes before every rank has read it
    TITAN_CUDA_CHECK(cudaMemcpyAsync(data, out.data(), count * sizeof(float), cudaMemcpyHostToDevice, stream));
    TITAN_CUDA_CHECK(cudaStreamSynchronize(stream));  // `out` is about to go
  }
  void group_start() override {}
  void group_end() override {}
  void synchronize(cudaStream_t stream) override { TITAN_CUDA_CHECK(cudaStreamSynchronize(stream)); }

 private:
  template <typename Move>
  void exchange(const void* send, cudaStream_t stream, Move move) {
    TITAN_CUDA_CHECK(cudaEventRecord(ready_, stream));  // this rank's send buffer is written
    m_.send[rank_] = send;
    m_.ready[rank_] = ready_;
    m_.arrive_and_wait();
    for (int q = 0; q < m_.world; ++q) TITAN_CUDA_CHECK(cudaStreamWaitEvent(stream, m_.ready[q], 0));
    move();
    TITAN_CUDA_CHECK(cudaEventRecord(done_, stream));
    m_.done[rank_] = done_;
    m_.arrive_and_wait();
    for (int q = 0; q < m_.world; ++q) TITAN_CUDA_CHECK(cudaStreamWaitEvent(stream, m_.done[q], 0));
    m_.arrive_and_wait();  // nobody re-records its events before every rank has waited on them
  }
  Meeting& m_;
  int rank_;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
};

}  // namespace titan::gpu_test

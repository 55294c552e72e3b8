// A cuDNN operation graph built op by op, then made into one execution plan: the first engine
// the heuristics (mode A, then the fallback list) offer whose plan finalizes. Tensors are
// named by uid; virtual tensors live only inside the fused kernel.
#pragma once
#include <cudnn_graph.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "titan/ops/cuda/cudnn_api.h"

namespace titan::cuda::cudnn {

class Graph {
 public:
  struct TensorSpec {
    std::vector<int64_t> dims, strides;
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    bool is_virtual = false;
    bool by_value = false;  // a host scalar handed over at execute time (e.g. the softmax scale)
  };
  // Returns the new tensor's uid.
  int64_t tensor(const TensorSpec& spec);
  // Packed strides of `dims` (last dimension contiguous).
  static std::vector<int64_t> packed(const std::vector<int64_t>& dims);

  void matmul(int64_t a, int64_t b, int64_t c);
  // y = mode(x[, b[, t]]) computed in `precision`; GEN_INDEX takes `axis`.
  struct Pointwise {
    cudnnPointwiseMode_t mode;
    int64_t x, y, b = -1, t = -1, axis = -1;
    cudnnDataType_t precision = CUDNN_DATA_FLOAT;
  };
  void pointwise(const Pointwise& p);
  // The reduced axes are those where y's dimension is smaller than x's.
  void reduction(cudnnReduceTensorOp_t op, int64_t x, int64_t y);
  // y is x seen through other dims/strides (here: a transpose); no data moves.
  void reshape(int64_t x, int64_t y);

  // Finalizes the graph and picks its plan; throws UserError naming `what` when no engine of
  // the loaded cuDNN runs it.
  void build(cudnnHandle_t handle, const char* what) { build_for(handle, nullptr, what); }
  // The same ahead of time for a GPU described by a CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR
  // (cuDNN 9.8+): no GPU needed, so the tests check here that an engine takes the graph.
  void build_for_device(const Descriptor& device, const char* what) { build_for(nullptr, &device, what); }
  int64_t workspace_bytes() const { return workspace_bytes_; }
  int64_t op_count() const { return static_cast<int64_t>(ops_.size()); }
  cudnnBackendDescriptor_t op(int64_t i) const { return ops_[static_cast<size_t>(i)].get(); }
  // `pointers` pairs each non-virtual uid with its device (or, for by-value tensors, host) address.
  void execute(cudnnHandle_t handle, const std::vector<std::pair<int64_t, const void*>>& pointers,
               void* workspace) const;

 private:
  const Descriptor& tensor_desc(int64_t uid) const;
  void build_for(cudnnHandle_t handle, const Descriptor* device, const char* what);
  // The engine configs one heuristics mode ranks for the finalized graph, best first; a failed
  // query adds to `failures` and gives none.
  struct Ranked {
    Descriptor heur;
    std::vector<Descriptor> configs;
    const char* source = "";
  };
  Ranked ranked_configs(cudnnBackendHeurMode_t mode, const Descriptor* device, std::vector<std::string>& failures) const;

  std::vector<std::pair<int64_t, Descriptor>> tensors_;
  std::vector<Descriptor> op_parts_;  // matmul / pointwise / reduction settings the ops point at
  std::vector<Descriptor> ops_;
  Descriptor graph_, heur_, config_, plan_;
  int64_t next_uid_ = 1;
  int64_t workspace_bytes_ = 0;
};

}  // namespace titan::cuda::cudnn

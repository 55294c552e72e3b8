#include "titan/ops/cuda/cudnn_graph.h"

#include <algorithm>
#include <string>

#include "titan/core/error.h"

namespace titan::cuda::cudnn {

namespace {
// Every real tensor titan hands cuDNN comes from the caching allocator (256-byte aligned) or
// is a row offset of one; 16 bytes is what the fused attention engines ask for.
constexpr int64_t kByteAlignment = 16;
}  // namespace

std::vector<int64_t> Graph::packed(const std::vector<int64_t>& dims) {
  std::vector<int64_t> strides(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) strides[i - 1] = strides[i] * dims[i];
  return strides;
}

int64_t Graph::tensor(const TensorSpec& spec) {
  TITAN_CHECK(spec.dims.size() == spec.strides.size(), "cuDNN tensor: ", spec.dims.size(), " dims but ",
              spec.strides.size(), " strides");
  const int64_t uid = next_uid_++;
  Descriptor d(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  d.set_type(CUDNN_ATTR_TENSOR_DATA_TYPE, spec.type);
  d.set_ints(CUDNN_ATTR_TENSOR_DIMENSIONS, spec.dims);
  d.set_ints(CUDNN_ATTR_TENSOR_STRIDES, spec.strides);
  d.set_int(CUDNN_ATTR_TENSOR_UNIQUE_ID, uid);
  d.set_int(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, kByteAlignment);
  d.set_bool(CUDNN_ATTR_TENSOR_IS_VIRTUAL, spec.is_virtual);
  if (spec.by_value) d.set_bool(CUDNN_ATTR_TENSOR_IS_BY_VALUE, true);
  d.finalize();
  tensors_.emplace_back(uid, std::move(d));
  return uid;
}

const Descriptor& Graph::tensor_desc(int64_t uid) const {
  for (const auto& [id, d] : tensors_)
    if (id == uid) return d;
  throw InternalError(concat("cuDNN graph: no tensor with uid ", uid));
}

void Graph::matmul(int64_t a, int64_t b, int64_t c) {
  Descriptor mm(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
  mm.set_type(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_DATA_FLOAT);
  const double padding = 0.0;
  mm.set(CUDNN_ATTR_MATMUL_PADDING_VALUE, CUDNN_TYPE_DOUBLE, 1, &padding);
  mm.finalize();
  Descriptor op(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
  op.set_desc(CUDNN_ATTR_OPERATION_MATMUL_ADESC, tensor_desc(a));
  op.set_desc(CUDNN_ATTR_OPERATION_MATMUL_BDESC, tensor_desc(b));
  op.set_desc(CUDNN_ATTR_OPERATION_MATMUL_CDESC, tensor_desc(c));
  op.set_desc(CUDNN_ATTR_OPERATION_MATMUL_DESC, mm);
  op.finalize();
  op_parts_.push_back(std::move(mm));
  ops_.push_back(std::move(op));
}

void Graph::pointwise(const Pointwise& p) {
  Descriptor pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
  pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &p.mode);
  pw.set_type(CUDNN_ATTR_POINTWISE_MATH_PREC, p.precision);
  if (p.axis >= 0) pw.set_int(CUDNN_ATTR_POINTWISE_AXIS, p.axis);
  pw.finalize();
  Descriptor op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
  op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
  op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, tensor_desc(p.x));
  if (p.b >= 0) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, tensor_desc(p.b));
  if (p.t >= 0) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, tensor_desc(p.t));
  op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, tensor_desc(p.y));
  const float one = 1.0f;
  op.set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one);
  op.set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one);
  op.finalize();
  op_parts_.push_back(std::move(pw));
  ops_.push_back(std::move(op));
}

void Graph::reduction(cudnnReduceTensorOp_t reduce, int64_t x, int64_t y) {
  Descriptor rd(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
  rd.set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &reduce);
  rd.set_type(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_DATA_FLOAT);
  rd.finalize();
  Descriptor op(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
  op.set_desc(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, tensor_desc(x));
  op.set_desc(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, tensor_desc(y));
  op.set_desc(CUDNN_ATTR_OPERATION_REDUCTION_DESC, rd);
  op.finalize();
  op_parts_.push_back(std::move(rd));
  ops_.push_back(std::move(op));
}

void Graph::reshape(int64_t x, int64_t y) {
  Descriptor op(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
  op.set_desc(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, tensor_desc(x));
  op.set_desc(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, tensor_desc(y));
  op.finalize();
  ops_.push_back(std::move(op));
}

Graph::Ranked Graph::ranked_configs(cudnnBackendHeurMode_t mode, const Descriptor* device,
                                    std::vector<std::string>& failures) const {
  const char* source = mode == CUDNN_HEUR_MODE_A ? "heuristics A" : "fallback list";
  Ranked r;
  r.heur = Descriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  r.heur.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph_);
  r.heur.set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
  if (device) r.heur.set_desc(CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, *device);
  int64_t count = 0;
  cudnnStatus_t st = r.heur.try_finalize();
  if (st == CUDNN_STATUS_SUCCESS)
    st = api().get_attribute(r.heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                             nullptr);
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; st == CUDNN_STATUS_SUCCESS && i < count; ++i) {
    r.configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    raw.push_back(r.configs.back().get());
  }
  int64_t returned = 0;
  if (st == CUDNN_STATUS_SUCCESS && count > 0)
    st = api().get_attribute(r.heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                             &returned, raw.data());
  if (st != CUDNN_STATUS_SUCCESS) {
    failures.push_back(concat(source, ": ", describe(st)));
    r.configs.clear();
  }
  r.configs.resize(static_cast<size_t>(std::min(returned, count)));
  r.source = source;
  return r;
}

void Graph::build_for(cudnnHandle_t handle, const Descriptor* device, const char* what) {
  std::vector<cudnnBackendDescriptor_t> raw_ops;
  for (const auto& op : ops_) raw_ops.push_back(op.get());
  graph_ = Descriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  if (handle) graph_.set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  graph_.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(raw_ops.size()),
             raw_ops.data());
  if (const cudnnStatus_t st = graph_.try_finalize(); st != CUDNN_STATUS_SUCCESS)
    throw UserError(concat("cuDNN ", api().get_version(), " rejects the ", what, " graph: ", describe(st)));

  // Every engine tried, best ranked first; the error names the first one's failure, which is
  // the engine meant for this graph.
  std::vector<std::string> failures;
  for (const cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    Ranked ranked = ranked_configs(mode, device, failures);
    for (size_t i = 0; i < ranked.configs.size(); ++i) {
      Descriptor plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      if (handle) plan.set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
      if (device) plan.set_desc(CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP, *device);
      plan.set_desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, ranked.configs[i]);
      cudnnStatus_t st = plan.try_finalize();
      int64_t n = 0;
      if (st == CUDNN_STATUS_SUCCESS)
        st = api().get_attribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                 &workspace_bytes_);
      if (st != CUDNN_STATUS_SUCCESS) {
        failures.push_back(concat(ranked.source, " #", i, ": ", describe(st)));
        continue;
      }
      // The plan points at its engine config, and that at the heuristics' results: kept alive.
      plan_ = std::move(plan);
      config_ = std::move(ranked.configs[i]);
      heur_ = std::move(ranked.heur);
      return;
    }
  }
  throw UserError(concat("cuDNN ", api().get_version(), " has no engine for the ", what, " graph: ",
                         failures.empty() ? std::string("the heuristics offered none") : failures.front(),
                         failures.size() > 1 ? concat(" (and ", failures.size() - 1, " more failures)") : ""));
}

void Graph::execute(cudnnHandle_t handle, const std::vector<std::pair<int64_t, const void*>>& pointers,
                    void* workspace) const {
  TITAN_CHECK(plan_.get() != nullptr, "cuDNN graph executed before build()");
  std::vector<int64_t> uids;
  std::vector<void*> ptrs;
  for (const auto& [uid, p] : pointers) {
    uids.push_back(uid);
    ptrs.push_back(const_cast<void*>(p));
  }
  Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set_ints(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, uids);
  pack.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, static_cast<int64_t>(ptrs.size()), ptrs.data());
  pack.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
  pack.finalize();
  check(api().execute(handle, plan_.get(), pack.get()), "cudnnBackendExecute");
}

}  // namespace titan::cuda::cudnn

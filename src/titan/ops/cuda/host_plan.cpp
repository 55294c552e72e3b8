#include "titan/ops/cuda/host_plan.h"

#include <algorithm>

namespace titan::cuda {

size_t device_block_bytes(size_t bytes) {
  // 512-byte granules below 1 MiB, 2 MiB above: large blocks of nearby sizes share a bucket.
  const size_t g = bytes < (size_t{1} << 20) ? 512 : (size_t{2} << 20);
  return std::max<size_t>(g, (bytes + g - 1) / g * g);
}

std::vector<ScratchBuffer> backend_scratch(const PassDims& p, ClassifierBudget budget) {
  const auto n = static_cast<size_t>(p.shape.rows()), d = static_cast<size_t>(p.dim);
  const auto lse = static_cast<size_t>(p.shape.batch * p.heads * p.shape.seq);
  const auto chunks = static_cast<size_t>((p.shape.rows() + kRmsnormRowsPerChunk - 1) / kRmsnormRowsPerChunk);
  const auto rows = static_cast<size_t>(classifier_rows(p.shape.rows(), p.vocab, budget));
  std::vector<ScratchBuffer> out = {{"attention delta", 4 * lse},
          {"rmsnorm partial sums", 4 * chunks * d},
          {"classifier logits", 2 * rows * static_cast<size_t>(p.vocab)},
          {"classifier row losses", 4 * n},
          {"reduction scratch", 8 * static_cast<size_t>(kReduceBlocks)},
          {"loss and squared norm", 2 * 8},
          {"tokens", 4 * n},
          {"labels", 4 * n},
          {"embedding index ids", 4 * n},
          {"embedding index offsets", 4 * (n + 1)},
          {"embedding index positions", 4 * n}};
  if (p.float8) add_float8_scratch(p, out);
  if (p.tp_degree == 1) return out;
  const auto degree = static_cast<size_t>(p.tp_degree);
  if (p.loss_parallel) {  // this rank's (log-sum-exp, label logit) per row, every rank's, the whole log-sum-exp
    out.push_back({"loss parallel row statistics", 8 * 2 * n * (degree + 1)});
    out.push_back({"loss parallel log-sum-exp", 4 * n});
  } else {  // a group of rows' logits as gathered (rank-major), then row-major over the whole vocabulary
    const auto whole = static_cast<size_t>(p.vocab) * degree;
    const auto rows_gathered = static_cast<size_t>(gathered_logits_rows(p, budget));
    out.push_back({"gathered logits", 2 * rows_gathered * whole});
    out.push_back({"whole-vocabulary logits", 2 * rows_gathered * whole});
  }
  return out;
}

int64_t gathered_logits_rows(const PassDims& p, ClassifierBudget budget) {
  // The two buffers of the gathered path share the classifier's budget.
  return classifier_rows(p.shape.rows(), 2 * p.vocab * p.tp_degree, budget);
}

void add_float8_scratch(const PassDims& p, std::vector<ScratchBuffer>& out) {
  const auto n = static_cast<size_t>(p.shape.rows()), d = static_cast<size_t>(p.dim);
  // The float8 copies of the largest linear's operands (one byte each; the backward's
  // transposed copies reuse them) and the amax, scale and 1/scale of two operands at a time.
  const auto widest = static_cast<size_t>(std::max(p.heads * p.head_dim, p.ffn_hidden));
  // Scale vectors 256-byte aligned (cuBLASLt asks 16 of scale pointers): `longest` in 64-float steps.
  const size_t operand = n * std::max(d, widest), longest = (std::max({n, d, widest}) + 63) / 64 * 64;
  for (const char* name : {"float8 input", "float8 grad output", "float8 grad output transposed"})
    out.push_back({name, operand});
  out.push_back({"float8 weight", d * widest});
  out.push_back({"float8 scales", 4 * 6 * longest});
}

ScaleSpan scale_span(const float8::Cast& cast, float8::Axis axis) {
  if (cast.scaling == float8::Scaling::tensorwise) return ScaleSpan::tensor;
  return axis == float8::Axis::rows ? ScaleSpan::rows : ScaleSpan::columns;
}

int64_t scale_count(ScaleSpan span, int64_t rows, int64_t cols) {
  return span == ScaleSpan::tensor ? 1 : span == ScaleSpan::rows ? rows : cols;
}

int64_t aligned_elements(int64_t elements) { return (elements + kParameterAlign - 1) / kParameterAlign * kParameterAlign; }

FlatLayout flat_layout(const std::vector<int64_t>& numel) {
  FlatLayout f;
  for (int64_t e : numel) {
    f.offset.push_back(f.total);
    f.total += aligned_elements(e);
  }
  return f;
}

StepMode step_mode(bool compile, bool phase_times, std::string* why) {
  if (!compile) {
    if (why) *why = "training.compile is off: one op per kernel, run eagerly";
    return StepMode::eager;
  }
  if (phase_times) {
    if (why) *why = "profiling.phase_times times each op: no CUDA graph";
    return StepMode::eager;
  }
  if (why) *why = "fused kernels + CUDA graphs of the step";
  return StepMode::graphs;
}

}  // namespace titan::cuda

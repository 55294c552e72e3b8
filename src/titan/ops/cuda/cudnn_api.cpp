#include "titan/ops/cuda/cudnn_api.h"

#include <cstdlib>

#include "titan/core/dynamic_library.h"
#include "titan/core/error.h"

namespace titan::cuda::cudnn {

namespace {
// 9.0 introduced the graph API names used here (cudnnGetLastErrorString, cudnn_graph.h).
constexpr size_t kMinVersion = 90000;
}  // namespace

Api load_api(const std::string& name) {
  DynamicLibrary lib(name, "cuDNN attention needs cuDNN 9",
                     "install cuDNN 9, point LD_LIBRARY_PATH or TITAN_CUDNN_LIBRARY at libcudnn.so.9, "
                     "or unset TITAN_ATTENTION_IMPL");
  const char* need = "cuDNN 9 is needed";
  Api a;
  a.get_version = lib.symbol<decltype(a.get_version)>("cudnnGetVersion", need);
  a.error_string = lib.symbol<decltype(a.error_string)>("cudnnGetErrorString", need);
  a.last_error_string = lib.symbol<decltype(a.last_error_string)>("cudnnGetLastErrorString", need);
  a.create = lib.symbol<decltype(a.create)>("cudnnCreate", need);
  a.destroy = lib.symbol<decltype(a.destroy)>("cudnnDestroy", need);
  a.set_stream = lib.symbol<decltype(a.set_stream)>("cudnnSetStream", need);
  a.create_descriptor = lib.symbol<decltype(a.create_descriptor)>("cudnnBackendCreateDescriptor", need);
  a.destroy_descriptor = lib.symbol<decltype(a.destroy_descriptor)>("cudnnBackendDestroyDescriptor", need);
  a.finalize = lib.symbol<decltype(a.finalize)>("cudnnBackendFinalize", need);
  a.set_attribute = lib.symbol<decltype(a.set_attribute)>("cudnnBackendSetAttribute", need);
  a.get_attribute = lib.symbol<decltype(a.get_attribute)>("cudnnBackendGetAttribute", need);
  a.execute = lib.symbol<decltype(a.execute)>("cudnnBackendExecute", need);
  const size_t version = a.get_version();
  if (version < kMinVersion)
    throw UserError(concat(name, " is cuDNN ", version, "; cuDNN attention needs ", kMinVersion, " or newer"));
  lib.keep();
  return a;
}

const Api& api() {
  static const Api loaded = [] {
    const char* custom = std::getenv("TITAN_CUDNN_LIBRARY");
    return load_api(custom && *custom ? custom : "libcudnn.so.9");
  }();
  return loaded;
}

std::string describe(cudnnStatus_t status) {
  char last[1024] = {0};
  api().last_error_string(last, sizeof last);
  return concat(api().error_string(status), last[0] ? concat(" (", last, ")") : std::string());
}

void check(cudnnStatus_t status, const char* what) {
  if (status != CUDNN_STATUS_SUCCESS) throw InternalError(concat("cuDNN: ", what, ": ", describe(status)));
}

Descriptor::Descriptor(cudnnBackendDescriptorType_t type) {
  check(api().create_descriptor(type, &d_), "cudnnBackendCreateDescriptor");
}

Descriptor::~Descriptor() {
  if (d_) api().destroy_descriptor(d_);
}

Descriptor& Descriptor::operator=(Descriptor&& o) noexcept {
  if (this != &o) {
    if (d_) api().destroy_descriptor(d_);
    d_ = o.d_;
    o.d_ = nullptr;
  }
  return *this;
}

void Descriptor::set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
                     const void* values) {
  const cudnnStatus_t st = api().set_attribute(d_, name, type, count, values);
  if (st != CUDNN_STATUS_SUCCESS)
    throw InternalError(concat("cuDNN: setting attribute ", static_cast<int>(name), ": ", describe(st)));
}

void Descriptor::finalize() { check(api().finalize(d_), "cudnnBackendFinalize"); }

cudnnStatus_t Descriptor::try_finalize() { return api().finalize(d_); }

}  // namespace titan::cuda::cudnn

#include "titan/ops/cuda/cudnn_api.h"

#include <dlfcn.h>

#include <cstdlib>

#include "titan/core/error.h"

namespace titan::cuda::cudnn {

namespace {
// 9.0 introduced the graph API names used here (cudnnGetLastErrorString, cudnn_graph.h).
constexpr size_t kMinVersion = 90000;
}  // namespace

Api load_api(const std::string& name) {
  void* lib = ::dlopen(name.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!lib)
    throw UserError(concat("cuDNN attention needs cuDNN 9: cannot load ", name, " (", ::dlerror(),
                           "); install cuDNN 9, point LD_LIBRARY_PATH or TITAN_CUDNN_LIBRARY at libcudnn.so.9, "
                           "or unset TITAN_ATTENTION_IMPL"));
  auto sym = [&](const char* symbol) {
    void* f = ::dlsym(lib, symbol);
    if (!f) {
      ::dlclose(lib);
      throw UserError(concat(name, ": no symbol ", symbol, " (cuDNN 9 is needed)"));
    }
    return f;
  };
  Api a;
  a.get_version = reinterpret_cast<decltype(a.get_version)>(sym("cudnnGetVersion"));
  a.error_string = reinterpret_cast<decltype(a.error_string)>(sym("cudnnGetErrorString"));
  a.last_error_string = reinterpret_cast<decltype(a.last_error_string)>(sym("cudnnGetLastErrorString"));
  a.create = reinterpret_cast<decltype(a.create)>(sym("cudnnCreate"));
  a.destroy = reinterpret_cast<decltype(a.destroy)>(sym("cudnnDestroy"));
  a.set_stream = reinterpret_cast<decltype(a.set_stream)>(sym("cudnnSetStream"));
  a.create_descriptor = reinterpret_cast<decltype(a.create_descriptor)>(sym("cudnnBackendCreateDescriptor"));
  a.destroy_descriptor = reinterpret_cast<decltype(a.destroy_descriptor)>(sym("cudnnBackendDestroyDescriptor"));
  a.finalize = reinterpret_cast<decltype(a.finalize)>(sym("cudnnBackendFinalize"));
  a.set_attribute = reinterpret_cast<decltype(a.set_attribute)>(sym("cudnnBackendSetAttribute"));
  a.get_attribute = reinterpret_cast<decltype(a.get_attribute)>(sym("cudnnBackendGetAttribute"));
  a.execute = reinterpret_cast<decltype(a.execute)>(sym("cudnnBackendExecute"));
  const size_t version = a.get_version();
  if (version < kMinVersion) {
    ::dlclose(lib);
    throw UserError(concat(name, " is cuDNN ", version, "; cuDNN attention needs ", kMinVersion, " or newer"));
  }
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

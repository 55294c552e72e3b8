// cuDNN's graph (backend) API, loaded at run time: only a run that asks for cuDNN attention
// (TITAN_ATTENTION_IMPL=cudnn or auto) needs libcudnn.so.9, so the default build and CI do not.
// Descriptor owns one backend descriptor; every call is checked and a failure carries cuDNN's
// own last error message.
#pragma once
#include <cudnn_graph.h>

#include <cstdint>
#include <string>
#include <vector>

namespace titan::cuda::cudnn {

// The entry points titan uses, resolved once per process from libcudnn.so.9 (or
// $TITAN_CUDNN_LIBRARY). The first call throws UserError when the library is missing or older
// than 9.0.
struct Api {
  decltype(&cudnnGetVersion) get_version;
  decltype(&cudnnGetErrorString) error_string;
  decltype(&cudnnGetLastErrorString) last_error_string;
  decltype(&cudnnCreate) create;
  decltype(&cudnnDestroy) destroy;
  decltype(&cudnnSetStream) set_stream;
  decltype(&cudnnBackendCreateDescriptor) create_descriptor;
  decltype(&cudnnBackendDestroyDescriptor) destroy_descriptor;
  decltype(&cudnnBackendFinalize) finalize;
  decltype(&cudnnBackendSetAttribute) set_attribute;
  decltype(&cudnnBackendGetAttribute) get_attribute;
  decltype(&cudnnBackendExecute) execute;
};
const Api& api();
// Loads `library` afresh (api() does this once); throws UserError naming what is missing.
Api load_api(const std::string& library);

// Throws InternalError naming the call, cuDNN's status and its last error message.
void check(cudnnStatus_t status, const char* what);
// The same message without throwing, for callers that try several engines.
std::string describe(cudnnStatus_t status);

class Descriptor {
 public:
  Descriptor() = default;
  explicit Descriptor(cudnnBackendDescriptorType_t type);
  ~Descriptor();
  Descriptor(Descriptor&& o) noexcept : d_(o.d_) { o.d_ = nullptr; }
  Descriptor& operator=(Descriptor&& o) noexcept;
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;

  cudnnBackendDescriptor_t get() const { return d_; }

  void set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count, const void* values);
  void set_int(cudnnBackendAttributeName_t name, int64_t value) { set(name, CUDNN_TYPE_INT64, 1, &value); }
  void set_ints(cudnnBackendAttributeName_t name, const std::vector<int64_t>& v) {
    set(name, CUDNN_TYPE_INT64, static_cast<int64_t>(v.size()), v.data());
  }
  void set_bool(cudnnBackendAttributeName_t name, bool value) {
    const bool v = value;
    set(name, CUDNN_TYPE_BOOLEAN, 1, &v);
  }
  void set_type(cudnnBackendAttributeName_t name, cudnnDataType_t type) { set(name, CUDNN_TYPE_DATA_TYPE, 1, &type); }
  void set_desc(cudnnBackendAttributeName_t name, const Descriptor& d) {
    const cudnnBackendDescriptor_t raw = d.get();
    set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
  }
  void finalize();
  // finalize() that reports failure instead of throwing (an engine that cannot run a graph).
  cudnnStatus_t try_finalize();

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

}  // namespace titan::cuda::cudnn

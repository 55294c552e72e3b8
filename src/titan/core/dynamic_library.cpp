#include "titan/core/dynamic_library.h"

#include <dlfcn.h>

#include "titan/core/error.h"

namespace titan {

DynamicLibrary::DynamicLibrary(const std::string& name, const std::string& purpose, const std::string& advice)
    : name_(name), handle_(::dlopen(name.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
  if (!handle_) throw UserError(concat(purpose, ": cannot load ", name, " (", ::dlerror(), "); ", advice));
}

DynamicLibrary::~DynamicLibrary() {
  if (handle_ && !keep_) ::dlclose(handle_);
}

void* DynamicLibrary::address(const char* symbol_name, const std::string& requirement) const {
  void* f = ::dlsym(handle_, symbol_name);
  if (!f) throw UserError(concat(name_, ": no symbol ", symbol_name, " (", requirement, ")"));
  return f;
}

}  // namespace titan

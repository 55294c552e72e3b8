// A shared library opened at run time (dlopen), for the dependencies only some runs need
// (NCCL for GPU FSDP, cuDNN for its attention): failures are one-line UserErrors that say what
// the library is for and how to provide it.
#pragma once
#include <string>

namespace titan {

class DynamicLibrary {
 public:
  // Opens `name` with its symbols resolved now; on failure: "<purpose>: cannot load <name>
  // (<dlerror>); <advice>".
  DynamicLibrary(const std::string& name, const std::string& purpose, const std::string& advice);
  // Closes the library unless keep() was called.
  ~DynamicLibrary();
  DynamicLibrary(const DynamicLibrary&) = delete;
  DynamicLibrary& operator=(const DynamicLibrary&) = delete;

  // The symbol's address as F; on failure: "<name>: no symbol <symbol> (<requirement>)".
  template <typename F>
  F symbol(const char* symbol_name, const std::string& requirement) const {
    return reinterpret_cast<F>(address(symbol_name, requirement));
  }
  // Leaves the library loaded for the rest of the process (its functions are in use).
  void keep() { keep_ = true; }

 private:
  void* address(const char* symbol_name, const std::string& requirement) const;

  std::string name_;
  void* handle_ = nullptr;
  bool keep_ = false;
};

}  // namespace titan

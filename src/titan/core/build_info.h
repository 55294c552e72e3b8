// What `titan --version` says: titan's commit, the build (cpu or cuda), and on a CUDA build the
// CUDA runtime it was built with and the NCCL and cuDNN it would load at run time.
#pragma once
#include <string>

namespace titan {

std::string build_commit();
std::string version_text();

}  // namespace titan

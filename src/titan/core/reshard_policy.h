// FSDP's reshard_after_forward, one rule for the CPU hooks and the CUDA model: which units free
// their gathered weights after forward and gather them again for backward (less memory, one
// more all-gather).
#pragma once
#include <string>

namespace titan {

struct ReshardPolicy {
  bool reshard_blocks = true;
  bool reshard_root = false;
  bool reshard_last_block = false;
  // training.fsdp_reshard_after_forward: "default" (blocks free theirs, except the last one and
  // the root, whose backward follows at once: torchtitan's rule), "always", "never".
  static ReshardPolicy from_setting(const std::string& setting) {
    return {setting != "never", setting == "always", setting == "always"};
  }
};

}  // namespace titan

// `titan tokenizer encode | decode | train`.
#pragma once
#include <string>
#include <vector>

namespace titan::cli {

int tokenizer_main(const std::vector<std::string>& args);

}  // namespace titan::cli

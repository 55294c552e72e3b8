// `titan inspect`, `titan convert`, `titan generate`: tools around checkpoints.
#pragma once
#include <string>
#include <vector>

namespace titan::cli {

int inspect_main(const std::vector<std::string>& args);
int convert_main(const std::vector<std::string>& args);
int generate_main(const std::vector<std::string>& args);

}  // namespace titan::cli

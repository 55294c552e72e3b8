// `titan data tokenize`: text datasets to pre-tokenized shards.
#pragma once
#include <string>
#include <vector>

namespace titan::cli {

int data_main(const std::vector<std::string>& args);

}  // namespace titan::cli

// Appends to an output file whole or not at all: a reader (a plot script, TensorBoard, a person
// tailing metrics.jsonl) never meets half a line or half a record, even on a full disk.
#pragma once
#include <string>

namespace titan::metrics {

// Appends `bytes` to `path` (created if missing). On failure the file is cut back to its
// previous end and the reason returned ("No space left on device"); "" on success.
std::string append_whole(const std::string& path, const std::string& bytes);

}  // namespace titan::metrics

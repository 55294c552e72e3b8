// Pre-tokenized datasets: flat uint32 token shards (BOS and EOS already placed) plus an
// index.json. Window w of the stream is tokens [w * window, (w + 1) * window) of the shards
// repeated forever: the same windows the text source packs from the same documents, found in
// constant time.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "titan/data/text_source.h"
#include "titan/data/tokenizer.h"
#include "titan/data/window_source.h"

namespace titan::data {

struct ShardWriteStats {
  int64_t documents = 0, tokens = 0, shards = 0, skipped = 0;
};

// Tokenizes `files` into `out_dir` (created; files written under temporary names and renamed
// when complete). Throws UserError naming the file on failure.
ShardWriteStats write_token_shards(const std::vector<std::string>& files, const SourceOptions& options,
                                   const Tokenizer& tokenizer, const std::string& out_dir,
                                   int64_t tokens_per_shard);

bool is_token_shard_dir(const std::string& path);

// Opens a shard directory; refuses it (UserError) when its tokenizer fingerprint is not
// `fingerprint` or a shard is missing or the wrong size.
std::unique_ptr<WindowSource> make_shard_source(const std::string& dir, uint64_t fingerprint, int64_t window);

}  // namespace titan::data

// Tokenizers titan reads: tiktoken BPE files (Llama 3's tokenizer.model: `base64(bytes) rank`
// lines, then Llama 3's 256 special tokens) and Hugging Face tokenizer.json (byte-level BPE).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "titan/data/bpe.h"
#include "titan/data/pretokenizer.h"

namespace titan::data {

// Llama 3's special tokens in id order after the ranks: <|begin_of_text|>, <|end_of_text|>,
// reserved 0-3, <|start_header_id|>, <|end_header_id|>, reserved 4, <|eot_id|>, reserved 5-250.
std::vector<std::string> llama3_special_tokens();

class Tokenizer {
 public:
  // Reads either format (tokenizer.json when the file starts with '{'). Throws UserError
  // naming the file (and line or key) when it is missing or malformed.
  static Tokenizer load(const std::string& path);
  // The debug model's built-in tokenizer: 1,792 ranks trained on the default corpus
  // (assets/tokenizers/titan_debug_2048.tiktoken) plus the 256 special tokens: 2,048 ids.
  static Tokenizer builtin_default();
  // Builds a tiktoken-style tokenizer from ranks (id = rank) plus Llama 3's special tokens.
  static Tokenizer from_ranks(std::vector<std::string> ranks, const std::string& where);

  // Text to ids. Special-token strings are plain text unless allow_special is set.
  std::vector<int32_t> encode(std::string_view text, bool bos = false, bool eos = false,
                              bool allow_special = false) const;
  // Appends the ids of text (no special tokens) to out.
  void encode_ordinary(std::string_view text, std::vector<int32_t>& out) const;
  // Ids to bytes (may be partial UTF-8 when cut mid-character). Throws UserError on an id
  // outside the vocabulary.
  std::string decode(const std::vector<int32_t>& ids) const;

  int64_t vocab_size() const { return vocab_size_; }
  int64_t num_ranks() const { return bpe_.size(); }
  int32_t bos_id() const { return bos_; }  // -1 when the tokenizer has none
  int32_t eos_id() const { return eos_; }
  int32_t special_id(const std::string& name) const;  // -1 when absent
  // Identifies the vocabulary (every token's bytes and id, the specials, the pattern): a
  // dataset tokenized with one tokenizer is refused by a model using another.
  uint64_t fingerprint() const;
  const std::map<std::string, int32_t>& special_tokens() const { return specials_; }

 private:
  Tokenizer(BytePairEncoder bpe, PreTokenizer pre) : bpe_(std::move(bpe)), pre_(std::move(pre)) {}
  static Tokenizer load_tiktoken(const std::string& path, const std::string& text);
  static Tokenizer load_hf_json(const std::string& path, const std::string& text);
  void add_special(const std::string& name, int32_t id);

  BytePairEncoder bpe_;
  PreTokenizer pre_;
  std::map<std::string, int32_t> specials_;
  std::map<int32_t, std::string> special_names_;
  int64_t vocab_size_ = 0;
  int32_t bos_ = -1, eos_ = -1;
};

// The text of assets/tokenizers/titan_debug_2048.tiktoken, compiled in.
const char* default_tokenizer_text();

// RFC 4648 base64 (the tiktoken file format); false on malformed input.
bool base64_decode(std::string_view in, std::string& out);
std::string base64_encode(std::string_view in);

}  // namespace titan::data

// Splits text into pieces with a regex (PCRE2 with UTF, UCP and JIT), as tiktoken and HF
// tokenizers' Split pre-tokenizer do before BPE.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace titan::data {

// Llama 3's pattern (and cl100k's).
extern const char* const kLlama3Pattern;
// GPT-2's pattern (HF ByteLevel pre-tokenizer with use_regex = true).
extern const char* const kGpt2Pattern;

class PreTokenizer {
 public:
  // Throws UserError naming `where` if the pattern does not compile.
  PreTokenizer(const std::string& pattern, const std::string& where);
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // Calls piece(sv) for each piece in order. Bytes the pattern cannot match (invalid UTF-8)
  // come out as pieces of their own, so every input byte is covered exactly once.
  template <typename F>
  void split(std::string_view text, F&& piece) const {
    size_t pos = 0;
    while (pos < text.size()) {
      size_t start = 0, end = 0;
      if (!next_match(text, pos, start, end)) {
        piece(text.substr(pos));
        return;
      }
      if (start > pos) piece(text.substr(pos, start - pos));
      piece(text.substr(start, end - start));
      pos = end;
    }
  }
  const std::string& pattern() const { return pattern_; }

 private:
  // The first match at or after pos: [start, end). False when there is none.
  bool next_match(std::string_view text, size_t pos, size_t& start, size_t& end) const;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string pattern_;
};

}  // namespace titan::data

#include "titan/data/tokenizer.h"

#include <charconv>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "titan/core/error.h"
#include "titan/core/file_check.h"
#include "titan/core/rng.h"

namespace titan::data {

std::vector<std::string> llama3_special_tokens() {
  std::vector<std::string> names = {"<|begin_of_text|>", "<|end_of_text|>",
                                    "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                                    "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
                                    "<|start_header_id|>", "<|end_header_id|>",
                                    "<|reserved_special_token_4|>", "<|eot_id|>"};
  for (int i = 5; i < 256 - 5; ++i) names.push_back("<|reserved_special_token_" + std::to_string(i) + "|>");
  return names;
}

bool base64_decode(std::string_view in, std::string& out) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  out.clear();
  if (in.size() % 4 != 0 || in.empty()) return false;
  for (size_t i = 0; i < in.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int j = 0; j < 4; ++j) {
      const char c = in[i + j];
      if (c == '=' && i + 4 == in.size() && j >= 2) {
        v[j] = 0;
        ++pad;
      } else if (pad > 0 || (v[j] = value(c)) < 0) {
        return false;
      }
    }
    const uint32_t w = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out.push_back(static_cast<char>(w >> 16));
    if (pad < 2) out.push_back(static_cast<char>((w >> 8) & 0xff));
    if (pad < 1) out.push_back(static_cast<char>(w & 0xff));
  }
  return true;
}

std::string base64_encode(std::string_view in) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < in.size(); i += 3) {
    uint32_t w = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) w |= static_cast<unsigned char>(in[i + 1]) << 8;
    if (i + 2 < in.size()) w |= static_cast<unsigned char>(in[i + 2]);
    out.push_back(kAlphabet[(w >> 18) & 63]);
    out.push_back(kAlphabet[(w >> 12) & 63]);
    out.push_back(i + 1 < in.size() ? kAlphabet[(w >> 6) & 63] : '=');
    out.push_back(i + 2 < in.size() ? kAlphabet[w & 63] : '=');
  }
  return out;
}

namespace {
std::string read_file(const std::string& path) {
  require_readable_file(path, "tokenizer file");  // a directory is not "empty", a FIFO would block
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(concat(path, ": cannot open tokenizer file"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// GPT-2's byte <-> printable character table used by byte-level tokenizer.json files.
std::vector<int> byte_to_codepoint() {
  std::vector<int> table(256, -1);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? b : 256 + extra++;
  }
  return table;
}

// Decodes a byte-level token string (UTF-8 of mapped code points) back to raw bytes.
bool unmap_byte_level(const std::string& token, std::string& out) {
  static const std::vector<int> forward = byte_to_codepoint();
  static const std::vector<int> inverse = [] {
    std::vector<int> inv(512, -1);
    for (int b = 0; b < 256; ++b) inv[forward[b]] = b;
    return inv;
  }();
  out.clear();
  for (size_t i = 0; i < token.size();) {
    const unsigned char c = token[i];
    int cp, len;
    if (c < 0x80) { cp = c; len = 1; }
    else if ((c & 0xE0) == 0xC0 && i + 1 < token.size()) { cp = ((c & 0x1F) << 6) | (token[i + 1] & 0x3F); len = 2; }
    else return false;
    if (cp >= 512 || inverse[cp] < 0) return false;
    out.push_back(static_cast<char>(inverse[cp]));
    i += len;
  }
  return true;
}
}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  const std::string text = read_file(path);
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) throw UserError(concat(path, ": tokenizer file is empty"));
  return text[first] == '{' ? load_hf_json(path, text) : load_tiktoken(path, text);
}

Tokenizer Tokenizer::builtin_default() {
  return load_tiktoken("<built-in titan_debug_2048.tiktoken>", default_tokenizer_text());
}

Tokenizer Tokenizer::from_ranks(std::vector<std::string> ranks, const std::string& where) {
  const auto n = static_cast<int32_t>(ranks.size());
  Tokenizer t(BytePairEncoder::from_ranks(std::move(ranks), where), PreTokenizer(kLlama3Pattern, where));
  const auto names = llama3_special_tokens();
  for (int32_t i = 0; i < static_cast<int32_t>(names.size()); ++i) t.add_special(names[i], n + i);
  t.bos_ = t.special_id("<|begin_of_text|>");
  t.eos_ = t.special_id("<|end_of_text|>");
  return t;
}

Tokenizer Tokenizer::load_tiktoken(const std::string& path, const std::string& text) {
  std::vector<std::string> ranks;
  std::istringstream in(text);
  std::string line, bytes;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const size_t space = line.find(' ');
    int64_t rank = -1;
    const char* rank_end = line.data() + line.size();
    if (space == std::string::npos ||
        std::from_chars(line.data() + space + 1, rank_end, rank).ptr != rank_end || rank < 0)
      throw UserError(concat(path, ":", lineno, ": expected 'base64-token rank', found '", line.substr(0, 60), "'"));
    if (rank != static_cast<int64_t>(ranks.size()))
      throw UserError(concat(path, ":", lineno, ": rank ", rank, " out of order (expected ", ranks.size(), ")"));
    if (!base64_decode(std::string_view(line).substr(0, space), bytes))
      throw UserError(concat(path, ":", lineno, ": invalid base64 token"));
    ranks.push_back(bytes);
  }
  if (ranks.empty()) throw UserError(concat(path, ": no ranks found (not a tiktoken BPE file?)"));
  return from_ranks(std::move(ranks), path);
}

Tokenizer Tokenizer::load_hf_json(const std::string& path, const std::string& text) {
  using nlohmann::json;
  json root;
  try {
    root = json::parse(text);
  } catch (const json::parse_error& e) {
    throw UserError(concat(path, std::string(e.what()).find("UTF-8") != std::string::npos
                                     ? ": invalid UTF-8 inside a JSON string at byte " : ": invalid JSON at byte ", e.byte));
  }
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) throw UserError(concat(path, ": ", what));
  };
  try {
    need(root.is_object() && root.contains("model"), "no 'model' object (not a tokenizer.json?)");
    const json& model = root["model"];
    need(model.value("type", "") == "BPE", "model.type: only BPE is supported");
    need(!model.value("byte_fallback", false), "model.byte_fallback: not supported");
    need(!root.contains("normalizer") || root["normalizer"].is_null(), "normalizer: not supported (expected null)");

    // Pre-tokenizer: Split(regex) + ByteLevel(use_regex = false), or ByteLevel(use_regex = true).
    std::string pattern;
    const json& pre = root.value("pre_tokenizer", json());
    auto byte_level = [&](const json& p) { return p.is_object() && p.value("type", "") == "ByteLevel"; };
    if (byte_level(pre) && pre.value("use_regex", true) && !pre.value("add_prefix_space", false)) {
      pattern = kGpt2Pattern;
    } else if (pre.is_object() && pre.value("type", "") == "Sequence" && pre["pretokenizers"].size() == 2 &&
               pre["pretokenizers"][0].value("type", "") == "Split" && byte_level(pre["pretokenizers"][1]) &&
               !pre["pretokenizers"][1].value("use_regex", true) &&
               !pre["pretokenizers"][1].value("add_prefix_space", false)) {
      const json& split = pre["pretokenizers"][0];
      need(split.value("behavior", "") == "Isolated" && !split.value("invert", false),
           "pre_tokenizer Split: only behavior Isolated without invert is supported");
      need(split["pattern"].contains("Regex"), "pre_tokenizer Split: only Regex patterns are supported");
      pattern = split["pattern"]["Regex"].get<std::string>();
    } else {
      need(false, "pre_tokenizer: expected ByteLevel, or Sequence of Split(Regex) and ByteLevel");
    }

    const json& vocab = model["vocab"];
    need(vocab.is_object() && !vocab.empty(), "model.vocab: expected a non-empty object");
    int64_t max_id = -1;
    for (const auto& [tok, id] : vocab.items()) {
      need(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < (int64_t{1} << 31),
           concat("model.vocab[", json(tok).dump(), "]: expected a non-negative integer id"));
      max_id = std::max(max_id, id.get<int64_t>());
    }
    std::vector<std::string> tokens(max_id + 1);
    std::string bytes;
    for (const auto& [tok, id] : vocab.items()) {
      need(unmap_byte_level(tok, bytes), concat("model.vocab[", json(tok).dump(), "]: not a byte-level token"));
      tokens[id.get<int64_t>()] = bytes;
    }
    std::vector<std::pair<int32_t, int32_t>> merges;
    const json& jm = model.value("merges", json::array());
    merges.reserve(jm.size());
    for (size_t i = 0; i < jm.size(); ++i) {
      std::string l, r;
      if (jm[i].is_string()) {
        const std::string s = jm[i].get<std::string>();
        const size_t sp = s.find(' ');
        need(sp != std::string::npos, concat("model.merges[", i, "]: expected 'left right'"));
        l = s.substr(0, sp);
        r = s.substr(sp + 1);
      } else {
        need(jm[i].is_array() && jm[i].size() == 2, concat("model.merges[", i, "]: expected a pair"));
        l = jm[i][0].get<std::string>();
        r = jm[i][1].get<std::string>();
      }
      need(vocab.contains(l) && vocab.contains(r), concat("model.merges[", i, "]: token not in the vocabulary"));
      merges.emplace_back(vocab[l].get<int32_t>(), vocab[r].get<int32_t>());
    }
    auto bpe = BytePairEncoder::from_merges(std::move(tokens), merges, model.value("ignore_merges", false), path);
    Tokenizer t(std::move(bpe), PreTokenizer(pattern, path));
    int64_t vocab_size = max_id + 1;
    const json added_tokens = root.value("added_tokens", json::array());
    for (size_t i = 0; i < added_tokens.size(); ++i) {
      const json& jid = added_tokens[i].at("id");
      const std::string content = added_tokens[i].at("content").get<std::string>(), where = concat("added_tokens[", i, "]");
      need(jid.is_number_integer() && jid.get<int64_t>() >= 0 && jid.get<int64_t>() < (int64_t{1} << 31),
           concat(where, " (", content, "): expected a non-negative integer id, found ", jid.dump()));
      const auto id = jid.get<int32_t>();
      // An id inside the vocabulary must be that token's own text (GPT-2 lists <|endoftext|> in both).
      const std::string vocab_text = id < t.bpe_.size() ? t.bpe_.bytes(id) : std::string();
      need(vocab_text.empty() || vocab_text == content,
           concat(where, " (", content, "): id ", id, " is the vocabulary's token for other text"));
      const auto named = t.special_names_.find(id);
      need(named == t.special_names_.end() || named->second == content,
           concat(where, " (", content, "): id ", id, " is already ", named == t.special_names_.end() ? "" : named->second));
      t.add_special(content, id);
      vocab_size = std::max<int64_t>(vocab_size, id + 1);
    }
    t.vocab_size_ = vocab_size;
    t.bos_ = t.special_id("<|begin_of_text|>");
    t.eos_ = t.special_id("<|end_of_text|>");
    return t;
  } catch (const json::exception& e) {
    throw UserError(concat(path, ": unexpected tokenizer.json structure: ", e.what()));
  }
}

void Tokenizer::add_special(const std::string& name, int32_t id) {
  specials_[name] = id;
  special_names_[id] = name;
  vocab_size_ = std::max<int64_t>(vocab_size_, std::max<int64_t>(bpe_.size(), id + 1));
}

uint64_t Tokenizer::fingerprint() const {
  std::string all = pre_.pattern();
  for (int32_t i = 0; i < bpe_.size(); ++i) all += bpe_.bytes(i) + '\x1f';
  for (const auto& [name, id] : specials_) all += name + '=' + std::to_string(id) + '\x1e';
  return fnv1a64(all) >> 11;  // 53 bits: survives JSON readers that use doubles
}

int32_t Tokenizer::special_id(const std::string& name) const {
  auto it = specials_.find(name);
  return it == specials_.end() ? -1 : it->second;
}

void Tokenizer::encode_ordinary(std::string_view text, std::vector<int32_t>& out) const {
  pre_.split(text, [&](std::string_view piece) { bpe_.encode_piece(piece, out); });
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool bos, bool eos, bool allow_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (bos) {
    if (bos_ < 0) throw UserError("this tokenizer has no <|begin_of_text|> token");
    out.push_back(bos_);
  }
  if (!allow_special || specials_.empty()) {
    encode_ordinary(text, out);
  } else {
    size_t pos = 0;
    while (pos < text.size()) {
      // The earliest special token at or after pos (longest on ties).
      size_t best = std::string_view::npos, best_len = 0;
      int32_t best_id = -1;
      for (size_t at = text.find("<|", pos); at != std::string_view::npos && best == std::string_view::npos;
           at = text.find("<|", at + 1)) {
        for (const auto& [name, id] : specials_)
          if (text.substr(at, name.size()) == name && name.size() > best_len) {
            best = at;
            best_len = name.size();
            best_id = id;
          }
      }
      if (best == std::string_view::npos) {
        encode_ordinary(text.substr(pos), out);
        break;
      }
      encode_ordinary(text.substr(pos, best - pos), out);
      out.push_back(best_id);
      pos = best + best_len;
    }
  }
  if (eos) {
    if (eos_ < 0) throw UserError("this tokenizer has no <|end_of_text|> token");
    out.push_back(eos_);
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (auto it = special_names_.find(id); it != special_names_.end()) {
      out += it->second;
    } else if (id >= 0 && id < bpe_.size() && !bpe_.bytes(id).empty()) {
      out += bpe_.bytes(id);
    } else {
      throw UserError(concat("token id ", id, " at position ", i, " is not in the vocabulary (size ", vocab_size_, ")"));
    }
  }
  return out;
}

}  // namespace titan::data

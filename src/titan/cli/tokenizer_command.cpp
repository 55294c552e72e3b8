#include "titan/cli/tokenizer_command.h"

#include <filesystem>
#include <iostream>

#include <nlohmann/json.hpp>

#include "titan/cli/args.h"
#include "titan/core/error.h"
#include "titan/core/timer.h"
#include "titan/data/bpe_trainer.h"
#include "titan/data/text_source.h"
#include "titan/data/tokenizer.h"

namespace titan::cli {

namespace {
using nlohmann::json;

const char* kUsage =
    "usage:\n"
    "  titan tokenizer encode --tokenizer FILE [--bos] [--eos] [--allow-special]\n"
    "      stdin: JSON lines {\"text\": ...}; stdout: {\"ids\": [...]}\n"
    "  titan tokenizer decode --tokenizer FILE\n"
    "      stdin: JSON lines {\"ids\": [...]}; stdout: {\"text\": ...} (invalid UTF-8 as U+FFFD)\n"
    "  titan tokenizer train --input PATH [--input PATH ...] --vocab-size N --output FILE\n"
    "      [--field text]\n"
    "  titan tokenizer bench --tokenizer FILE --input PATH [--input PATH ...]\n"
    "      times encoding (one thread) of the documents, after reading them into memory\n";

json parse_line(const std::string& line, int64_t lineno) {
  try {
    return json::parse(line);
  } catch (const json::parse_error& e) {
    throw UserError(concat("stdin:", lineno, ": invalid JSON at column ", e.byte));
  }
}

int encode(const ParsedArgs& a) {
  const auto tok = data::Tokenizer::load(a.required("tokenizer", "tokenizer encode"));
  const bool bos = a.has("bos"), eos = a.has("eos"), special = a.has("allow-special");
  std::string line;
  for (int64_t lineno = 1; std::getline(std::cin, line); ++lineno) {
    if (line.empty()) continue;
    const json record = parse_line(line, lineno);
    if (!record.is_object() || !record.contains("text") || !record["text"].is_string())
      throw UserError(concat("stdin:", lineno, ": expected an object with a string field \"text\""));
    const auto ids = tok.encode(record["text"].get_ref<const std::string&>(), bos, eos, special);
    std::cout << json{{"ids", ids}}.dump() << '\n';
  }
  return 0;
}

int decode(const ParsedArgs& a) {
  const auto tok = data::Tokenizer::load(a.required("tokenizer", "tokenizer decode"));
  std::string line;
  for (int64_t lineno = 1; std::getline(std::cin, line); ++lineno) {
    if (line.empty()) continue;
    const json record = parse_line(line, lineno);
    if (!record.is_object() || !record.contains("ids") || !record["ids"].is_array())
      throw UserError(concat("stdin:", lineno, ": expected an object with an array field \"ids\""));
    std::vector<int32_t> ids;
    for (const auto& v : record["ids"]) {
      if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX)
        throw UserError(concat("stdin:", lineno, ": ids must be integers"));
      ids.push_back(v.get<int32_t>());
    }
    std::string text;
    try {
      text = tok.decode(ids);
    } catch (const UserError& e) {
      throw UserError(concat("stdin:", lineno, ": ", e.what()));
    }
    std::cout << json{{"text", text}}.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
  }
  return 0;
}
int train(const ParsedArgs& a) {
  const std::string cmd = "tokenizer train";
  const std::string output = a.required("output", cmd);
  std::error_code ec;
  if (std::filesystem::is_directory(output, ec))  // checked before the training, not at the write after it
    throw UserError(concat(cmd, ": --output ", output, " is a directory; give the file to write"));
  a.required("vocab-size", cmd);
  const int64_t ranks = a.get_int("vocab-size", 0, cmd);
  if (ranks < 256 + 1 || ranks > 1000000)
    throw UserError(concat(cmd, ": --vocab-size ", ranks, ": expected 257 to 1000000 ranks (special tokens come on top)"));
  if (!a.values.count("input")) throw UserError(concat(cmd, ": missing --input"));
  data::SourceOptions opts;
  opts.field = a.get("field", "text");
  data::DocumentReader reader(data::expand_data_paths(a.values.at("input")), opts);
  data::PreTokenizer pre(data::kLlama3Pattern, cmd);
  data::BpeTrainer trainer(pre);
  data::Document doc;
  int64_t docs = 0, bytes = 0;
  while (reader.next(doc)) {
    trainer.add_text(doc.text);
    ++docs;
    bytes += static_cast<int64_t>(doc.text.size());
  }
  if (docs == 0) throw UserError(concat(cmd, ": the input holds no documents"));
  const auto result = trainer.train(ranks);
  data::write_tiktoken(result, output);
  std::cerr << "trained " << result.size() << " ranks (+256 special tokens) on " << docs << " documents, "
            << bytes << " bytes, " << trainer.distinct_words() << " distinct words -> " << output << "\n";
  return 0;
}
int bench(const ParsedArgs& a) {
  const std::string cmd = "tokenizer bench";
  const auto tok = data::Tokenizer::load(a.required("tokenizer", cmd));
  if (!a.values.count("input")) throw UserError(concat(cmd, ": missing --input"));
  data::DocumentReader reader(data::expand_data_paths(a.values.at("input")), {a.get("field", "text"), false});
  std::vector<std::string> docs;
  data::Document doc;
  int64_t bytes = 0;
  while (reader.next(doc)) {
    bytes += static_cast<int64_t>(doc.text.size());
    docs.push_back(std::move(doc.text));
  }
  std::vector<int32_t> ids;
  int64_t tokens = 0;
  Timer t;
  for (const auto& d : docs) {
    ids.clear();
    tok.encode_ordinary(d, ids);
    tokens += static_cast<int64_t>(ids.size());
  }
  const double s = t.seconds();
  std::cout << json{{"bytes", bytes}, {"tokens", tokens}, {"seconds", s}, {"mb_per_s", bytes / s / 1e6},
                    {"tokens_per_s", tokens / s}}.dump() << "\n";
  return 0;
}
}  // namespace

int tokenizer_subcommand(const std::string& sub, const std::vector<std::string>& rest);

int tokenizer_main(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    return tokenizer_subcommand(args[0], rest);
  } catch (const HelpRequested&) {
    std::cout << kUsage;
    return 0;
  }
}

int tokenizer_subcommand(const std::string& sub, const std::vector<std::string>& rest) {
  const std::vector<std::string> args = {sub};
  if (args[0] == "encode") return encode(parse_args(rest, {"tokenizer"}, {"bos", "eos", "allow-special"}, "tokenizer encode"));
  if (args[0] == "decode") return decode(parse_args(rest, {"tokenizer"}, {}, "tokenizer decode"));
  if (args[0] == "bench") return bench(parse_args(rest, {"tokenizer", "field"}, {}, "tokenizer bench", {"input"}));
  if (args[0] == "train") return train(parse_args(rest, {"vocab-size", "output", "field"}, {}, "tokenizer train", {"input"}));
  throw UserError(concat("tokenizer: unknown sub-command '", args[0], "' (expected encode, decode or train)"));
}

}  // namespace titan::cli

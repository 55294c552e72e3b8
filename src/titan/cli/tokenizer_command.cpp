#include "titan/cli/tokenizer_command.h"

#include <iostream>

#include <nlohmann/json.hpp>

#include "titan/cli/args.h"
#include "titan/core/error.h"
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
    "      [--field text]\n";

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
}  // namespace

int tokenizer_main(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "encode") return encode(parse_args(rest, {"tokenizer"}, {"bos", "eos", "allow-special"}, "tokenizer encode"));
  if (args[0] == "decode") return decode(parse_args(rest, {"tokenizer"}, {}, "tokenizer decode"));
  throw UserError(concat("tokenizer: unknown sub-command '", args[0], "' (expected encode, decode or train)"));
}

}  // namespace titan::cli

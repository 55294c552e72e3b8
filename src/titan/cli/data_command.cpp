#include "titan/cli/data_command.h"

#include <iostream>

#include "titan/cli/args.h"
#include "titan/core/error.h"
#include "titan/core/timer.h"
#include "titan/data/loader.h"
#include "titan/data/token_shards.h"

namespace titan::cli {

namespace {
const char* kUsage =
    "usage:\n"
    "  titan data tokenize --input PATH [--input PATH ...] --output DIR [--tokenizer FILE]\n"
    "      [--field text] [--skip-bad-records] [--shard-tokens N]\n"
    "  Writes uint32 token shards (BOS/EOS placed) and index.json; train on them with\n"
    "  training.dataset = DIR. Without --tokenizer: the built-in debug tokenizer.\n"
    "  titan data bench --input PATH [--input PATH ...] [--tokenizer FILE] [--seq-len 2048]\n"
    "      [--batch 8] [--batches 200]\n"
    "      times the training loader alone (reading, tokenizing, packing, prefetching)\n";

int64_t positive_int(const ParsedArgs& a, const std::string& flag, int64_t fallback, const std::string& cmd) {
  const int64_t x = a.get_int(flag, fallback, cmd);
  if (x <= 0) throw UserError(concat(cmd, ": --", flag, ": expected a positive integer, found ", x));
  return x;
}

int tokenize(const ParsedArgs& a) {
  const std::string cmd = "data tokenize";
  if (!a.values.count("input")) throw UserError(concat(cmd, ": missing --input"));
  const std::string out = a.required("output", cmd);
  const std::string tok_path = a.get("tokenizer", "");
  const auto tok = tok_path.empty() ? data::Tokenizer::builtin_default() : data::Tokenizer::load(tok_path);
  const int64_t per_shard = positive_int(a, "shard-tokens", 64 << 20, cmd);
  data::SourceOptions opts{a.get("field", "text"), a.has("skip-bad-records")};
  Timer t;
  const auto st = data::write_token_shards(data::expand_data_paths(a.values.at("input")), opts, tok, out, per_shard);
  std::cerr << "tokenized " << st.documents << " documents into " << st.tokens << " tokens, " << st.shards
            << " shards in " << out << " (" << static_cast<int64_t>(st.tokens / t.seconds()) << " tokens/s"
            << (st.skipped ? concat(", ", st.skipped, " bad records skipped") : "") << ")\n";
  return 0;
}
int bench(const ParsedArgs& a) {
  const std::string cmd = "data bench";
  if (!a.values.count("input")) throw UserError(concat(cmd, ": missing --input"));
  const std::string tok_path = a.get("tokenizer", "");
  auto tok = std::make_shared<data::Tokenizer>(tok_path.empty() ? data::Tokenizer::builtin_default()
                                                                 : data::Tokenizer::load(tok_path));
  const int64_t seq = positive_int(a, "seq-len", 2048, cmd), batch = positive_int(a, "batch", 8, cmd);
  if (batch > (int64_t{1} << 40) / seq)
    throw UserError(concat(cmd, ": --batch ", batch, " x --seq-len ", seq, " is more than 2^40 tokens per batch"));
  const int64_t batches = positive_int(a, "batches", 200, cmd);
  data::DataLoader loader(data::make_text_source(data::expand_data_paths(a.values.at("input")), {}, tok, seq + 1, nullptr),
                          seq, batch, 0, batch);
  loader.next();  // start-up (opening files, first batch) is not throughput
  Timer t;
  for (int64_t i = 1; i < batches; ++i) loader.next();
  const double s = t.seconds(), tokens = static_cast<double>((batches - 1) * batch * seq);
  std::cout << "{\"tokens\": " << static_cast<int64_t>(tokens) << ", \"seconds\": " << s
            << ", \"tokens_per_s\": " << tokens / s << "}\n";
  return 0;
}
}  // namespace

int data_subcommand(const std::string& sub, const std::vector<std::string>& rest);

int data_main(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    return data_subcommand(args[0], rest);
  } catch (const HelpRequested&) {
    std::cout << kUsage;
    return 0;
  }
}

int data_subcommand(const std::string& sub, const std::vector<std::string>& rest) {
  const std::vector<std::string> args = {sub};
  if (args[0] == "tokenize")
    return tokenize(parse_args(rest, {"output", "tokenizer", "field", "shard-tokens"}, {"skip-bad-records"},
                               "data tokenize", {"input"}));
  if (args[0] == "bench")
    return bench(parse_args(rest, {"tokenizer", "seq-len", "batch", "batches"}, {}, "data bench", {"input"}));
  throw UserError(concat("data: unknown sub-command '", args[0], "' (expected tokenize or bench)"));
}

}  // namespace titan::cli

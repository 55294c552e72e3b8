// Tokenizer edge cases, text sources and their bad-data errors, packing, resumable loading.
#include <gtest/gtest.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>

#include "titan/core/error.h"
#include "titan/data/loader.h"
#include "titan/data/text_source.h"
#include "titan/data/token_shards.h"
#include "titan/data/tokenizer.h"
#include "titan/data/window_source.h"

using namespace titan;
using namespace titan::data;
namespace fs = std::filesystem;

namespace {
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("titan_data_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static int& counter() {
    static int c = 0;
    return c;
  }
  std::string write(const std::string& name, const std::string& bytes) const {
    const auto p = path / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  }
  std::string write_gz(const std::string& name, const std::string& bytes) const {
    const auto p = (path / name).string();
    gzFile f = gzopen(p.c_str(), "wb");
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
    return p;
  }
  std::string write_zst(const std::string& name, const std::string& bytes) const {
    std::string out(ZSTD_compressBound(bytes.size()), '\0');
    out.resize(ZSTD_compress(out.data(), out.size(), bytes.data(), bytes.size(), 3));
    return write(name, out);
  }
};

std::vector<std::string> read_all(const std::vector<std::string>& files, SourceOptions o = {}) {
  DocumentReader r(files, o);
  std::vector<std::string> out;
  Document d;
  while (r.next(d)) out.push_back(d.text);
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

const std::string kJsonl = "{\"text\": \"first doc\", \"url\": \"x\"}\n{\"text\": \"second\"}\n\n{\"text\": \"third one\"}\n";
}  // namespace

TEST(Tokenizer, BuiltinDefaultHas2048Ids) {
  const auto t = Tokenizer::builtin_default();
  EXPECT_EQ(t.vocab_size(), 2048);
  EXPECT_EQ(t.num_ranks(), 1792);
  EXPECT_EQ(t.bos_id(), 1792);
  EXPECT_EQ(t.eos_id(), 1793);
  EXPECT_EQ(t.special_id("<|eot_id|>"), 1792 + 9);
}

TEST(Tokenizer, InvalidUtf8RoundTripsByteForByte) {
  const auto t = Tokenizer::builtin_default();
  const std::string text = std::string("ok \xff\xfe bytes \xc3 cut \xe2\x82 end") + '\0' + "nul";
  const auto ids = t.encode(text);
  EXPECT_EQ(t.decode(ids), text);
}

TEST(TextSource, Utf8CheckAndReplacement) {
  const std::string ok = "caf\xC3\xA9 \xF0\x9F\x99\x82";
  EXPECT_TRUE(data::is_valid_utf8(ok));
  EXPECT_EQ(data::with_replacement_characters(ok), ok);
  // A character cut after its first byte, a stray continuation byte, an overlong form.
  EXPECT_FALSE(data::is_valid_utf8("ab\xC3"));
  EXPECT_EQ(data::with_replacement_characters("ab\xC3"), "ab\xEF\xBF\xBD");
  EXPECT_EQ(data::with_replacement_characters("\x80x"), "\xEF\xBF\xBDx");
  EXPECT_EQ(data::with_replacement_characters("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(Tokenizer, SpecialTokensOnlyWhenAllowed) {
  const auto t = Tokenizer::builtin_default();
  const std::string text = "a<|end_of_text|>b";
  const auto plain = t.encode(text);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), t.eos_id()), 0);
  const auto special = t.encode(text, true, false, true);
  EXPECT_EQ(special.front(), t.bos_id());
  EXPECT_EQ(std::count(special.begin(), special.end(), t.eos_id()), 1);
  EXPECT_EQ(t.decode(special), "<|begin_of_text|>" + text);
  EXPECT_THROW(t.decode({0, 5000}), UserError);
}

TEST(Tokenizer, BadFilesGiveClearErrors) {
  TempDir d;
  EXPECT_NE(error_of([&] { Tokenizer::load((d.path / "none").string()); }).find("cannot open"), std::string::npos);
  EXPECT_NE(error_of([&] { Tokenizer::load(d.write("empty", "")); }).find("empty"), std::string::npos);
  EXPECT_NE(error_of([&] { Tokenizer::load(d.write("b64", "QQ== 0\n!!!! 1\n")); }).find(":2: invalid base64"), std::string::npos);
  EXPECT_NE(error_of([&] { Tokenizer::load(d.write("order", "QQ== 0\nQg== 5\n")); }).find(":2: rank 5 out of order"), std::string::npos);
  EXPECT_NE(error_of([&] { Tokenizer::load(d.write("bytes", "QQ== 0\nQg== 1\n")); }).find("no token for the single byte"), std::string::npos);
  EXPECT_NE(error_of([&] { Tokenizer::load(d.write("json", "{\"model\": ")); }).find("invalid JSON"), std::string::npos);
  EXPECT_NE(error_of([&] { Tokenizer::load(d.write("wp.json", "{\"model\": {\"type\": \"WordPiece\"}}")); }).find("only BPE"), std::string::npos);
}

TEST(TextSource, ReadsJsonlGzipZstdTxtDirectoriesAndGlobs) {
  TempDir d;
  d.write("a/1.jsonl", kJsonl);
  d.write_gz("a/2.json.gz", "{\"text\": \"zipped\"}\n");
  d.write_zst("a/3.jsonl.zst", "{\"text\": \"zstd\"}\n{\"text\": \"zstd two\"}");  // no final newline
  d.write("a/4.txt", "a whole file\nwith lines\n");
  d.write("a/ignored.bin", "x");
  const auto files = expand_data_paths({(d.path / "a").string()});
  ASSERT_EQ(files.size(), 4u);
  EXPECT_EQ(read_all(files), (std::vector<std::string>{"first doc", "second", "third one", "zipped", "zstd",
                                                       "zstd two", "a whole file\nwith lines\n"}));
  EXPECT_EQ(expand_data_paths({(d.path / "a/*.jsonl*").string()}).size(), 2u);
  EXPECT_NE(error_of([&] { expand_data_paths({(d.path / "nope").string()}); }).find("no such file"), std::string::npos);
  EXPECT_NE(error_of([&] { expand_data_paths({(d.path / "*.csv").string()}); }).find("no files match"), std::string::npos);
}

TEST(TextSource, CustomFieldAndOtherFieldsIgnored) {
  TempDir d;
  const auto f = d.write("c.jsonl", "{\"content\": \"x\", \"text\": 5}\n");
  SourceOptions o;
  o.field = "content";
  EXPECT_EQ(read_all({f}, o), std::vector<std::string>{"x"});
}

TEST(TextSource, BadRecordsNameFileAndLineOrAreSkipped) {
  TempDir d;
  const auto f = d.write("bad.jsonl", "{\"text\": \"good\"}\n{\"text\": \"unterminated}\n{\"body\": \"no text\"}\n"
                                      "{\"text\": 7}\n{\"text\": \"bad utf8 \xff\"}\n[1]\n{\"text\": \"last\"}\n");
  EXPECT_NE(error_of([&] { read_all({f}); }).find("bad.jsonl:2: invalid JSON"), std::string::npos);
  SourceOptions skip;
  skip.skip_bad_records = true;
  DocumentReader r({f}, skip);
  std::vector<std::string> docs;
  Document doc;
  while (r.next(doc)) docs.push_back(doc.text);
  EXPECT_EQ(docs, (std::vector<std::string>{"good", "last"}));
  EXPECT_EQ(r.skipped_records(), 5);
  const auto missing = d.write("missing.jsonl", "{\"body\": 1}\n");
  EXPECT_NE(error_of([&] { read_all({missing}); }).find("missing.jsonl:1: no field 'text'"), std::string::npos);
  const auto txt = d.write("bad.txt", "caf\xe9");
  EXPECT_NE(error_of([&] { read_all({txt}); }).find("not valid UTF-8"), std::string::npos);
}

TEST(TextSource, TruncatedCompressedFilesAreErrors) {
  TempDir d;
  std::string big;
  for (int i = 0; i < 20000; ++i) big += "{\"text\": \"document number " + std::to_string(i) + "\"}\n";
  const auto gz = d.write_gz("t.json.gz", big);
  const auto zst = d.write_zst("t.jsonl.zst", big);
  for (const auto& f : {gz, zst}) {
    std::ifstream in(f, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    const auto cut = d.write("cut_" + fs::path(f).filename().string(), bytes.substr(0, bytes.size() * 2 / 3));
    const auto err = error_of([&] { read_all({cut}); });
    EXPECT_NE(err.find("truncated"), std::string::npos) << f << ": " << err;
    EXPECT_NE(err.find("cut_"), std::string::npos) << err;
  }
}

TEST(WindowSource, PacksBosTextEosIntoConsecutiveWindows) {
  TempDir d;
  const auto f = d.write("p.jsonl", kJsonl);
  auto tok = std::make_shared<Tokenizer>(Tokenizer::builtin_default());
  std::vector<int32_t> expect;
  for (const char* t : {"first doc", "second", "third one"}) {
    auto ids = tok->encode(t, true, true);
    expect.insert(expect.end(), ids.begin(), ids.end());
  }
  const int64_t window = 5;
  auto src = make_text_source({f}, {}, tok, window, nullptr);
  std::vector<int32_t> w(window), got;
  for (size_t i = 0; i < expect.size() / window; ++i) {
    src->next(w.data());
    got.insert(got.end(), w.begin(), w.end());
  }
  expect.resize(got.size());
  EXPECT_EQ(got, expect);
  // The stream loops over the data forever, counting epochs.
  for (int i = 0; i < 20; ++i) src->next(w.data());
  EXPECT_GE(src->state().epoch, 2);
}

TEST(WindowSource, EmptyDatasetIsAnErrorNotAHang) {
  TempDir d;
  const auto f = d.write("e.jsonl", "\n\n");
  auto src = make_text_source({f}, {}, std::make_shared<Tokenizer>(Tokenizer::builtin_default()), 8, nullptr);
  std::vector<int32_t> w(8);
  EXPECT_NE(error_of([&] { src->next(w.data()); }).find("no documents"), std::string::npos);
}

TEST(DataLoader, ResumesExactlyAndAgreesAcrossRankCounts) {
  TempDir d;
  std::string text;
  for (int i = 0; i < 40; ++i) text += "{\"text\": \"doc " + std::to_string(i) + " says " + std::string(i % 37, 'x') + "\"}\n";
  const auto f1 = d.write("r1.jsonl", text);
  const auto f2 = d.write_gz("r2.json.gz", text);
  auto tok = std::make_shared<Tokenizer>(Tokenizer::builtin_default());
  const int64_t seq = 16, global_rows = 4, steps = 30;
  auto make = [&] { return make_text_source({f1, f2}, {}, tok, seq + 1, nullptr); };
  // One rank, uninterrupted.
  std::vector<Batch> whole;
  {
    DataLoader l(make(), seq, global_rows, 0, global_rows);
    for (int i = 0; i < steps; ++i) whole.push_back(l.next());
  }
  EXPECT_GE(whole.back().state_after.epoch, 1);  // the run wrapped around the data
  // Stop after 11 batches, save the state as JSON, resume at two ranks of two rows each.
  StreamState saved;
  {
    DataLoader l(make(), seq, global_rows, 0, global_rows);
    for (int i = 0; i < 11; ++i) l.next();
    saved = StreamState::from_json(l.state().to_json(), "test");
  }
  for (int rank = 0; rank < 2; ++rank) {
    auto src = make();
    src->restore(saved);
    DataLoader l(std::move(src), seq, global_rows, rank * 2, 2);
    for (int i = 11; i < steps; ++i) {
      const Batch b = l.next();
      const auto& w = whole[i];
      ASSERT_TRUE(std::equal(b.tokens.begin(), b.tokens.end(), w.tokens.begin() + rank * 2 * seq)) << "step " << i;
      ASSERT_TRUE(std::equal(b.labels.begin(), b.labels.end(), w.labels.begin() + rank * 2 * seq)) << "step " << i;
    }
  }
  EXPECT_THROW(StreamState::from_json("{\"windows\": 1}", "ckpt"), UserError);
}

TEST(DataLoader, BackgroundErrorsReachTheCaller) {
  TempDir d;
  const auto f = d.write("b.jsonl", "{\"text\": \"fine\"}\nnot json\n");
  DataLoader l(make_text_source({f}, {}, std::make_shared<Tokenizer>(Tokenizer::builtin_default()), 4, nullptr), 3, 1, 0, 1);
  std::string err;
  try {
    for (int i = 0; i < 10; ++i) l.next();
  } catch (const UserError& e) {
    err = e.what();
  }
  EXPECT_NE(err.find("b.jsonl:2: invalid JSON"), std::string::npos) << err;
}

TEST(TokenShards, GiveTheSameWindowsAsOnTheFlyPackingInConstantTime) {
  TempDir d;
  std::string text;
  for (int i = 0; i < 30; ++i) text += "{\"text\": \"shard doc " + std::to_string(i * 7919) + "\"}\n";
  const auto f = d.write("s.jsonl", text);
  const auto tok = std::make_shared<Tokenizer>(Tokenizer::builtin_default());
  const auto dir = (d.path / "shards").string();
  const auto st = write_token_shards({f}, {}, *tok, dir, 50);  // several small shards
  EXPECT_GT(st.shards, 2);
  EXPECT_TRUE(is_token_shard_dir(dir));
  const int64_t window = 13;
  auto text_src = make_text_source({f}, {}, tok, window, nullptr);
  auto shard_src = make_shard_source(dir, tok->fingerprint(), window);
  std::vector<int32_t> a(window), b(window);
  for (int i = 0; i < 100; ++i) {  // several epochs
    text_src->next(a.data());
    shard_src->next(b.data());
    ASSERT_EQ(a, b) << "window " << i;
  }
  auto jump = make_shard_source(dir, tok->fingerprint(), window);
  jump->restore(shard_src->state());
  text_src->next(a.data());
  jump->next(b.data());
  EXPECT_EQ(a, b);
  // Constant time: window w is found by arithmetic, not by stepping over the w windows before it
  // (a resume late in a long run). The whole stream read as one window gives the expected tokens.
  std::vector<int32_t> stream(st.tokens);
  make_shard_source(dir, tok->fingerprint(), st.tokens)->next(stream.data());
  StreamState far;
  far.windows = 200'000'000;
  auto far_src = make_shard_source(dir, tok->fingerprint(), window);
  double seconds = 1e9;
  for (int attempt = 0; attempt < 3; ++attempt) {  // the fastest of three: a busy machine's pause is not the code's
    far_src->restore(far);
    const auto t0 = std::chrono::steady_clock::now();
    far_src->next(b.data());
    seconds = std::min(seconds, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  for (int64_t i = 0; i < window; ++i) EXPECT_EQ(b[i], stream[(far.windows * window + i) % st.tokens]) << i;
  // Measured 2e-6 s; a source that stepped over the 2e8 windows took 1.4 s.
  EXPECT_LT(seconds, 0.05);
}

TEST(TokenShards, RefuseAnotherTokenizerAndDamagedShards) {
  TempDir d;
  const auto f = d.write("s.jsonl", kJsonl);
  const auto tok = Tokenizer::builtin_default();
  const auto dir = (d.path / "shards").string();
  write_token_shards({f}, {}, tok, dir, 1000);
  EXPECT_NE(error_of([&] { make_shard_source(dir, tok.fingerprint() + 1, 4); }).find("another tokenizer"), std::string::npos);
  fs::resize_file(fs::path(dir) / "shard-00000.bin", 8);
  EXPECT_NE(error_of([&] { make_shard_source(dir, tok.fingerprint(), 4); }).find("the index says"), std::string::npos);
  fs::remove(fs::path(dir) / "shard-00000.bin");
  EXPECT_NE(error_of([&] { make_shard_source(dir, tok.fingerprint(), 4); }).find("missing shard"), std::string::npos);
}

#include "titan/data/token_shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "titan/core/error.h"
#include "titan/core/file_check.h"

namespace titan::data {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
constexpr const char* kFormat = "titan-token-shards-v1";

std::string shard_name(int64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "shard-%05lld.bin", static_cast<long long>(i));
  return buf;
}

void rename_into_place(const fs::path& tmp, const fs::path& final_path) {
  std::error_code ec;
  fs::rename(tmp, final_path, ec);
  if (ec) throw UserError(concat(final_path.string(), ": cannot rename into place: ", ec.message()));
}
}  // namespace

bool is_token_shard_dir(const std::string& path) { return fs::is_regular_file(fs::path(path) / "index.json"); }

ShardWriteStats write_token_shards(const std::vector<std::string>& files, const SourceOptions& options,
                                   const Tokenizer& tokenizer, const std::string& out_dir,
                                   int64_t tokens_per_shard) {
  if (tokenizer.bos_id() < 0 || tokenizer.eos_id() < 0)
    throw UserError("the tokenizer has no <|begin_of_text|>/<|end_of_text|> tokens to place");
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw UserError(concat(out_dir, ": cannot create: ", ec.message()));
  ShardWriteStats st;
  json shards = json::array();
  std::ofstream out;
  int64_t in_shard = 0;
  auto close_shard = [&] {
    if (!out.is_open()) return;
    out.close();
    if (!out) throw UserError(concat(out_dir, ": write failed"));
    const fs::path final_path = fs::path(out_dir) / shard_name(st.shards);
    rename_into_place(final_path.string() + ".tmp", final_path);
    shards.push_back({{"file", shard_name(st.shards)}, {"tokens", in_shard}});
    ++st.shards;
    in_shard = 0;
  };
  DocumentReader reader(files, options);
  Document doc;
  std::vector<int32_t> ids;
  while (reader.next(doc)) {
    ids.clear();
    ids.push_back(tokenizer.bos_id());
    tokenizer.encode_ordinary(doc.text, ids);
    ids.push_back(tokenizer.eos_id());
    ++st.documents;
    for (size_t i = 0; i < ids.size();) {
      if (!out.is_open()) {
        out.open((fs::path(out_dir) / shard_name(st.shards)).string() + ".tmp", std::ios::binary | std::ios::trunc);
        if (!out) throw UserError(concat(out_dir, ": cannot write ", shard_name(st.shards)));
      }
      const size_t n = std::min<size_t>(ids.size() - i, static_cast<size_t>(tokens_per_shard - in_shard));
      static_assert(sizeof(int32_t) == sizeof(uint32_t));
      out.write(reinterpret_cast<const char*>(ids.data() + i), static_cast<std::streamsize>(n * 4));
      in_shard += static_cast<int64_t>(n);
      st.tokens += static_cast<int64_t>(n);
      i += n;
      if (in_shard == tokens_per_shard) close_shard();
    }
  }
  close_shard();
  st.skipped = reader.skipped_records();
  if (st.tokens == 0) throw UserError("the input holds no documents");
  const json index = {{"format", kFormat},
                      {"tokenizer", {{"vocab_size", tokenizer.vocab_size()}, {"fingerprint", tokenizer.fingerprint()}}},
                      {"documents", st.documents},
                      {"total_tokens", st.tokens},
                      {"shards", shards}};
  const fs::path index_path = fs::path(out_dir) / "index.json";
  std::ofstream(index_path.string() + ".tmp") << index.dump(1) << "\n";
  rename_into_place(index_path.string() + ".tmp", index_path);
  return st;
}

namespace {
class ShardWindowSource : public WindowSource {
 public:
  ShardWindowSource(const std::string& dir, uint64_t fingerprint, int64_t window) : dir_(dir), window_(window) {
    const std::string index_path = (fs::path(dir) / "index.json").string();
    json index;
    try {
      std::ifstream in(index_path);
      index = json::parse(in);
      if (index.at("format") != kFormat) throw UserError(concat(index_path, ": not a titan token shard index"));
      if (index.at("tokenizer").at("fingerprint").get<uint64_t>() != fingerprint)
        throw UserError(concat(index_path, ": tokenized with another tokenizer (fingerprint ",
                               index["tokenizer"]["fingerprint"].get<uint64_t>(), ", the model's is ", fingerprint, ")"));
      vocab_ = index["tokenizer"].at("vocab_size").get<int64_t>();
      for (const auto& s : index.at("shards")) open_shard(s.at("file").get<std::string>(), s.at("tokens").get<int64_t>());
    } catch (const json::exception& e) {
      throw UserError(concat(index_path, ": malformed index: ", e.what()));
    }
    if (total_ == 0) throw UserError(concat(index_path, ": the dataset holds no tokens"));
  }
  ~ShardWindowSource() override {
    for (auto& s : shards_) munmap(const_cast<uint32_t*>(s.data), static_cast<size_t>(s.tokens) * 4);
  }

  void next(int32_t* out) override {
    int64_t pos = (state_.windows * window_) % total_;
    for (int64_t i = 0; i < window_; ++i, ++pos) {
      if (pos == total_) pos = 0;
      out[i] = token_at(pos);
    }
    ++state_.windows;
    state_.epoch = state_.windows * window_ / total_;
  }
  StreamState state() const override { return state_; }
  void restore(const StreamState& s) override { state_ = s; }

 private:
  struct Shard {
    const uint32_t* data;
    int64_t tokens, first;  // first = global index of its first token
    std::string file;
  };

  void open_shard(const std::string& name, int64_t tokens) {
    const std::string path = (fs::path(dir_) / name).string();
    // A FIFO would block and a directory is not "missing": say what it is.
    if (const std::string why = unreadable_file_reason(path); !why.empty() && why != kNoSuchFile)
      throw UserError(concat(path, ": cannot open shard: ", why));
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw UserError(concat(path, ": missing shard"));
    struct stat st {};
    fstat(fd, &st);
    if (st.st_size != tokens * 4) {
      ::close(fd);
      throw UserError(concat(path, ": ", st.st_size, " bytes, the index says ", tokens, " tokens (", tokens * 4, " bytes)"));
    }
    void* p = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) throw UserError(concat(path, ": cannot map"));
    shards_.push_back({static_cast<const uint32_t*>(p), tokens, total_, path});
    total_ += tokens;
  }

  int32_t token_at(int64_t pos) {
    while (pos < shards_[cur_].first) --cur_;  // windows move forward; rare back steps at wrap
    while (pos >= shards_[cur_].first + shards_[cur_].tokens) ++cur_;
    const Shard& s = shards_[cur_];
    const uint32_t t = s.data[pos - s.first];
    if (t >= static_cast<uint64_t>(vocab_))
      throw UserError(concat(s.file, ": token ", t, " at index ", pos - s.first, " is outside the vocabulary (", vocab_, ")"));
    return static_cast<int32_t>(t);
  }

  std::string dir_;
  int64_t window_, vocab_ = 0, total_ = 0;
  size_t cur_ = 0;
  std::vector<Shard> shards_;
  StreamState state_;
};
}  // namespace

std::unique_ptr<WindowSource> make_shard_source(const std::string& dir, uint64_t fingerprint, int64_t window) {
  return std::make_unique<ShardWindowSource>(dir, fingerprint, window);
}

}  // namespace titan::data

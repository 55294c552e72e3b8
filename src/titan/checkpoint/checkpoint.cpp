#include "titan/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "titan/core/error.h"
#include "titan/core/file_check.h"

namespace titan::checkpoint {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
constexpr const char* kFormat = "titan-checkpoint-v1";

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) throw UserError(concat(path, ": cannot open to sync"));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw UserError(concat(path, ": fsync failed"));
}

// Writes all bytes at `offset` or throws naming the file. Every 64 MiB it starts writeback of
// what came before and drops the previous chunk from the page cache: measured on the CI
// machine, letting 4 GiB of dirty pages pile up until the final fsync ran 4-5x below the disk's
// speed (dirty-page throttling), while dd alone ran at full speed.
void write_all(int fd, const void* data, size_t n, int64_t offset, const std::string& path) {
  constexpr int64_t kChunk = 64 << 20;
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const size_t len = std::min<size_t>(n, kChunk - offset % kChunk);
    const ssize_t w = ::write(fd, p, len);
    if (w < 0) throw UserError(concat(path, ": write failed: ", std::strerror(errno)));
    p += w;
    n -= static_cast<size_t>(w);
    offset += w;
    if (offset % kChunk == 0) {
      ::sync_file_range(fd, offset - kChunk, kChunk, SYNC_FILE_RANGE_WRITE);
      if (offset >= 2 * kChunk) {
        ::sync_file_range(fd, offset - 2 * kChunk, kChunk,
                          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
        ::posix_fadvise(fd, offset - 2 * kChunk, kChunk, POSIX_FADV_DONTNEED);
      }
    }
  }
}

struct Piece {
  std::string tensor;
  const Parameter* p;
  const Tensor* t;
};

constexpr const char* kMetadataChecksumKey = "metadata_xxh3";

// The checksum covers the metadata's canonical text (compact, keys sorted) without its own field.
std::string metadata_checksum(const json& without_checksum) {
  const std::string text = without_checksum.dump();
  return concat(std::hex, XXH3_64bits(text.data(), text.size()));
}

std::vector<Piece> pieces(const std::deque<Parameter>& params, bool optimizer, bool unsliced) {
  std::vector<Piece> out;
  auto add = [&](const char* prefix, Tensor Parameter::*t) {
    for (const auto& p : params)
      if (unsliced || p.slice.partial()) out.push_back({prefix + p.name, &p, &(p.*t)});
  };
  add("model/", &Parameter::master);
  if (optimizer) {
    add("optim/exp_avg/", &Parameter::exp_avg);
    add("optim/exp_avg_sq/", &Parameter::exp_avg_sq);
  }
  return out;
}

// Columns [begin, end) of dim 1 a parameter's block covers in its whole tensor (1-D: [0, 1)).
std::pair<int64_t, int64_t> block_columns(const Parameter& p) {
  if (p.global_shape.size() < 2) return {0, 1};
  return {p.slice.col_offset, p.slice.col_offset + p.global_shape[1]};
}
}  // namespace

std::string rank_file_name(int rank) {
  char b[32];
  std::snprintf(b, sizeof b, "rank-%05d.bin", rank);
  return b;
}

std::string step_dir_name(int64_t step) { return "step-" + std::to_string(step); }

std::ifstream open_rank_file(const std::string& path) {
  if (const std::string why = unreadable_file_reason(path); why == kNoSuchFile)
    throw UserError(concat(path, ": missing rank file"));
  else if (!why.empty())
    throw UserError(concat(path, ": cannot read rank file: ", why));
  return std::ifstream(path, std::ios::binary);
}

std::optional<int64_t> step_of_dir_name(const std::string& name) {
  if (name.size() <= 5 || name.size() > 5 + 18 || name.rfind("step-", 0) != 0 ||
      name.find_first_not_of("0123456789", 5) != std::string::npos)
    return std::nullopt;
  return std::stoll(name.substr(5));
}

std::vector<ShardEntry> plan_rank_file(const std::string& dir, int rank, const std::deque<Parameter>& params,
                                       bool optimizer, bool unsliced) {
  std::vector<ShardEntry> entries;
  int64_t offset = 0;
  for (const auto& piece : pieces(params, optimizer, unsliced)) {
    const Parameter& p = *piece.p;
    const Tensor& t = *piece.t;
    // A non-finite state would resume into the same failure: it is never saved.
    if (const int64_t at = first_nonfinite(t.data<float>(), static_cast<int64_t>(t.bytes() / 4)); at >= 0)
      throw NonFiniteState(concat(dir, ": tensor ", piece.tensor, " holds a value that is not finite (", t.data<float>()[at],
                                  " at element ", at, ")"));
    const auto [col_begin, col_end] = block_columns(p);
    entries.push_back({piece.tensor, p.whole_shape(), rank, p.slice.row_offset + p.rows.begin,
                       p.slice.row_offset + p.rows.end, offset, static_cast<int64_t>(t.bytes()),
                       XXH3_64bits(t.data<char>(), t.bytes()), col_begin, col_end});
    offset += static_cast<int64_t>(t.bytes());
  }
  return entries;
}

void write_rank_data(const std::string& dir, int rank, const std::deque<Parameter>& params, bool optimizer, bool unsliced) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw UserError(concat(dir, ": cannot create: ", ec.message()));
  const std::string path = (fs::path(dir) / rank_file_name(rank)).string();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw UserError(concat(path, ": cannot create: ", std::strerror(errno)));
  try {
    int64_t offset = 0;
    for (const auto& piece : pieces(params, optimizer, unsliced)) {
      write_all(fd, piece.t->data<char>(), piece.t->bytes(), offset, path);
      offset += static_cast<int64_t>(piece.t->bytes());
    }
    if (::fsync(fd) != 0) throw UserError(concat(path, ": fsync failed"));
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

std::vector<ShardEntry> write_rank_file(const std::string& dir, int rank, const std::deque<Parameter>& params,
                                        bool optimizer, bool unsliced) {
  auto entries = plan_rank_file(dir, rank, params, optimizer, unsliced);
  write_rank_data(dir, rank, params, optimizer, unsliced);
  return entries;
}

namespace {
json entries_to_json(const std::vector<ShardEntry>& entries) {
  json shards = json::array();
  for (const auto& e : entries) {
    json j = {{"tensor", e.tensor}, {"global_shape", e.global_shape}, {"dtype", "float32"}, {"rank", e.rank},
              {"rows", {e.row_begin, e.row_end}}, {"offset", e.offset}, {"bytes", e.bytes},
              {"xxh3", concat(std::hex, e.checksum)}};
    if (e.partial_columns()) j["cols"] = {e.col_begin, e.columns_end()};  // a tensor-parallel row-wise slice
    shards.push_back(std::move(j));
  }
  return shards;
}

// Throws json or logic errors on malformed input; callers name the file.
std::vector<ShardEntry> entries_from_json(const json& shards, const std::string& path) {
  std::vector<ShardEntry> out;
  for (const auto& e : shards) {
    ShardEntry x;
    x.tensor = e.at("tensor").get<std::string>();
    x.global_shape = e.at("global_shape").get<Shape>();
    if (e.at("dtype") != "float32") throw UserError(concat(path, ": tensor ", x.tensor, " has dtype ", e.at("dtype").dump(), ", expected float32"));
    x.rank = e.at("rank").get<int>();
    x.row_begin = e.at("rows").at(0).get<int64_t>();
    x.row_end = e.at("rows").at(1).get<int64_t>();
    x.offset = e.at("offset").get<int64_t>();
    x.bytes = e.at("bytes").get<int64_t>();
    x.checksum = std::stoull(e.at("xxh3").get<std::string>(), nullptr, 16);
    // Each entry must describe itself consistently before anything is sized or read from it.
    int64_t row_elems = 1;
    bool shape_ok = !x.global_shape.empty() && x.global_shape[0] > 0;
    for (size_t d = 1; d < x.global_shape.size() && shape_ok; ++d) {
      shape_ok = x.global_shape[d] > 0 && x.global_shape[d] <= (int64_t{1} << 40) / row_elems;
      if (shape_ok) row_elems *= x.global_shape[d];
    }
    if (!shape_ok || x.global_shape[0] > (int64_t{1} << 40) / row_elems)
      throw UserError(concat(path, ": tensor ", x.tensor, ": bad shape ", e.at("global_shape").dump()));
    const int64_t cols = x.global_shape.size() > 1 ? x.global_shape[1] : 1;
    x.col_begin = 0;
    x.col_end = cols;
    if (e.contains("cols")) {
      x.col_begin = e.at("cols").at(0).get<int64_t>();
      x.col_end = e.at("cols").at(1).get<int64_t>();
    }
    const bool cols_ok = x.col_begin >= 0 && x.col_begin < x.col_end && x.col_end <= cols;
    if (x.rank < 0 || x.offset < 0 || x.row_begin < 0 || x.row_begin > x.row_end || x.row_end > x.global_shape[0] ||
        !cols_ok || x.bytes != (x.row_end - x.row_begin) * (row_elems / cols * (x.col_end - x.col_begin)) * 4)
      throw UserError(concat(path, ": tensor ", x.tensor, " rank ", x.rank, ": rows ", e.at("rows").dump(),
                             e.contains("cols") ? ", cols " + e.at("cols").dump() : std::string(), ", offset ",
                             x.offset, " and bytes ", x.bytes, " do not describe a shard of shape ",
                             e.at("global_shape").dump()));
    out.push_back(std::move(x));
  }
  return out;
}

}  // namespace

std::string entries_text(const std::vector<ShardEntry>& entries) { return entries_to_json(entries).dump(); }

std::string state_text(const TrainState& s) {
  return json{{"step", s.step}, {"data", s.data_state}, {"model_signature", s.model_signature}, {"config", s.config_toml},
              {"global_batch", s.global_batch}}
      .dump();  // one line: JSON escapes the config's newlines
}

TrainState state_from_text(const std::string& text, const std::string& where) {
  try {
    const json j = json::parse(text);
    return {j.at("step").get<int64_t>(), j.at("data").get<std::string>(), j.at("model_signature").get<std::string>(),
            j.at("config").get<std::string>(), j.at("global_batch").get<int64_t>()};
  } catch (const json::exception& e) {
    throw UserError(concat(where, ": malformed: ", e.what()));
  }
}

std::vector<ShardEntry> entries_from_text(const std::string& text, const std::string& where) {
  try {
    return entries_from_json(json::parse(text), where);
  } catch (const json::exception& e) {
    throw UserError(concat(where, ": malformed checkpoint entries: ", e.what()));
  } catch (const std::logic_error& e) {
    throw UserError(concat(where, ": malformed checkpoint entries: ", e.what()));
  }
}

namespace {
constexpr const char* kWriterMark = ".writer-";   // + rank: this rank writes into this folder
constexpr const char* kWrittenMark = ".written-"; // + rank: and its file is whole
void touch(const fs::path& path) {
  std::ofstream out(path.string());
  if (!out) throw UserError(concat(path.string(), ": cannot create"));
}
}  // namespace

void mark_writer(const std::string& dir, int rank) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw UserError(concat(dir, ": cannot create: ", ec.message()));
  touch(fs::path(dir) / concat(kWriterMark, rank));
}

std::vector<int> folder_writers(const std::string& dir) {
  std::vector<int> ranks;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(kWriterMark, 0) == 0 && name.size() > std::strlen(kWriterMark) &&
        name.find_first_not_of("0123456789", std::strlen(kWriterMark)) == std::string::npos)
      ranks.push_back(std::stoi(name.substr(std::strlen(kWriterMark))));
  }
  if (ec) throw UserError(concat(dir, ": cannot list: ", ec.message()));
  std::sort(ranks.begin(), ranks.end());
  return ranks;
}

void mark_written(const std::string& dir, int rank) {
  touch(fs::path(dir) / concat(kWrittenMark, rank));
  fsync_path(dir, true);
}

void wait_for_writers(const std::string& dir, const std::vector<int>& ranks, int world, double timeout_seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
  for (const int r : ranks) {
    while (!fs::exists(fs::path(dir) / concat(kWrittenMark, r))) {
      if (std::chrono::steady_clock::now() > deadline)
        throw UserError(concat(dir, ": rank ", r, " of ", world, " did not write its part of the checkpoint within ",
                               timeout_seconds, " s (comm.train_timeout_seconds)"));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  for (const int r : ranks) {  // metadata.json now describes the folder
    std::error_code ec;
    fs::remove(fs::path(dir) / concat(kWriterMark, r), ec);
    fs::remove(fs::path(dir) / concat(kWrittenMark, r), ec);
  }
}

void commit(const std::string& dir, const std::string& final_dir, const Metadata& meta, bool replace_existing) {
  const json shards = entries_to_json(meta.shards);
  json j = {{"format", kFormat},
                  {"world", meta.world},
                  {"has_optimizer", meta.has_optimizer},
                  {"state",
                   {{"step", meta.state.step},
                    {"data", meta.state.data_state},
                    {"model_signature", meta.state.model_signature},
                    {"config", meta.state.config_toml},
                    {"global_batch", meta.state.global_batch}}},
                  {"shards", shards}};
  j[kMetadataChecksumKey] = metadata_checksum(j);
  const std::string path = (fs::path(dir) / "metadata.json").string();
  {
    std::ofstream out(path);
    out << j.dump(1) << "\n";
    if (!out) throw UserError(concat(path, ": write failed"));
  }
  fsync_path(path, false);
  fsync_path(dir, true);
  std::error_code ec;
  const bool exists = fs::symlink_status(final_dir, ec).type() != fs::file_type::not_found;
  if (ec && ec != std::errc::no_such_file_or_directory)
    throw UserError(concat(final_dir, ": cannot check for an earlier save: ", ec.message()));
  // A folder without metadata.json is no checkpoint (list_steps skips it): it may be replaced.
  const bool saved = exists && fs::symlink_status(fs::path(final_dir) / "metadata.json", ec).type() != fs::file_type::not_found;
  if (saved && !replace_existing)
    throw UserError(concat(final_dir, ": already holds a saved checkpoint; titan replaces one only after a resume "
                           "from an earlier step (checkpoint.load_step), so this save is not committed"));
  if (exists) {
    // One atomic exchange: step-N is never missing, and the old save leaves under the .tmp name
    // that the next start-up removes should this process die before deleting it.
    if (::renameat2(AT_FDCWD, dir.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
      fsync_path(fs::path(final_dir).parent_path().string(), true);
      fs::remove_all(dir, ec);
      return;
    }
    if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
      throw UserError(concat(final_dir, ": cannot swap the new save into place: ", std::strerror(errno)));
    // No exchange on this filesystem: the old save steps aside under a name the next start-up
    // renames back should this process die before the new one is in place.
    const std::string aside = final_dir + kReplacedSuffix;
    fs::rename(final_dir, aside, ec);
    if (ec) throw UserError(concat(final_dir, ": cannot move the earlier save aside: ", ec.message()));
    fs::rename(dir, final_dir, ec);
    if (ec) throw UserError(concat(final_dir, ": cannot rename into place (the earlier save is in ", aside, "): ", ec.message()));
    fsync_path(fs::path(final_dir).parent_path().string(), true);
    fs::remove_all(aside, ec);
    return;
  }
  fs::rename(dir, final_dir, ec);
  if (ec) throw UserError(concat(final_dir, ": cannot rename into place: ", ec.message()));
  fsync_path(fs::path(final_dir).parent_path().string(), true);
}

Metadata read_metadata(const std::string& step_dir) {
  const std::string path = (fs::path(step_dir) / "metadata.json").string();
  if (const std::string why = unreadable_file_reason(path); why == kNoSuchFile)
    throw UserError(concat(path, ": missing (not a titan checkpoint, or an incomplete one)"));
  else if (!why.empty())
    throw UserError(concat(path, ": cannot read the checkpoint's metadata: ", why));
  std::ifstream in(path);
  try {
    json j = json::parse(in);
    if (!j.is_object() || j.value("format", json()) != kFormat)
      throw UserError(concat(path, ": not a titan checkpoint (format ", j.is_object() ? j.value("format", json()).dump() : "absent", ")"));
    if (j.contains(kMetadataChecksumKey)) {  // absent only in checkpoints saved before titan wrote it
      const json saved = j[kMetadataChecksumKey];
      j.erase(kMetadataChecksumKey);
      if (!saved.is_string() || saved.get<std::string>() != metadata_checksum(j))
        throw UserError(concat(path, ": checksum mismatch: the metadata was changed or damaged after the save"));
    }
    Metadata m;
    m.world = j.at("world").get<int>();
    m.has_optimizer = j.at("has_optimizer").get<bool>();
    const json& s = j.at("state");
    m.state.step = s.at("step").get<int64_t>();
    m.state.data_state = s.at("data").get<std::string>();
    m.state.model_signature = s.at("model_signature").get<std::string>();
    if (!json::parse(m.state.model_signature).is_object())
      throw UserError(concat(path, ": malformed metadata: model_signature is not a JSON object"));
    m.state.config_toml = s.at("config").get<std::string>();
    m.state.global_batch = s.value("global_batch", int64_t{0});
    m.shards = entries_from_json(j.at("shards"), path);
    if (m.state.step < 0) throw UserError(concat(path, ": malformed metadata: step ", m.state.step, " is negative"));
    if (m.world < 1) throw UserError(concat(path, ": malformed metadata: saved by ", m.world, " ranks"));
    for (const auto& e : m.shards)
      if (e.rank >= m.world)
        throw UserError(concat(path, ": malformed metadata: tensor ", e.tensor, " names rank ", e.rank, " of ", m.world));
    // A step-N folder holds step N: a resume must not continue from a different step than it names.
    fs::path folder = fs::path(step_dir).lexically_normal();
    if (folder.filename().empty()) folder = folder.parent_path();
    const std::string name = folder.filename().string();
    if (const auto named = step_of_dir_name(name); named && *named != m.state.step)
      throw UserError(concat(path, ": malformed metadata: the folder is ", name, " but it records step ", m.state.step));
    return m;
  } catch (const json::exception& e) {
    throw UserError(concat(path, ": malformed metadata: ", e.what()));
  } catch (const std::logic_error& e) {
    throw UserError(concat(path, ": malformed metadata: ", e.what()));
  }
}

void load_parameters(const std::string& step_dir, const Metadata& meta, std::deque<Parameter>& params, bool optimizer) {
  std::map<std::string, std::vector<const ShardEntry*>> by_tensor;
  for (const auto& e : meta.shards) by_tensor[e.tensor].push_back(&e);
  std::map<int, std::ifstream> files;
  auto file = [&](int rank) -> std::ifstream& {
    auto it = files.find(rank);
    if (it != files.end()) return it->second;
    return files.emplace(rank, open_rank_file((fs::path(step_dir) / rank_file_name(rank)).string())).first->second;
  };
  std::vector<char> buf;
  // The parameter's block of its whole tensor: rows [r0, r1) x columns [c0, c1) (the rest of
  // each row's elements, for tensors of more than two dimensions, in between).
  auto load = [&](const std::string& tensor, const Parameter& p, Tensor& dst) {
    auto it = by_tensor.find(tensor);
    if (it == by_tensor.end()) throw UserError(concat(step_dir, ": the checkpoint has no tensor ", tensor));
    const Shape& whole = p.whole_shape();
    const int64_t whole_cols = whole.size() > 1 ? whole[1] : 1;
    const int64_t inner = (whole.size() > 1 ? shape_numel(whole) / whole[0] : 1) / whole_cols;  // elements per column
    const int64_t r0 = p.slice.row_offset + p.rows.begin, r1 = p.slice.row_offset + p.rows.end;
    const auto [c0, c1] = block_columns(p);
    int64_t covered = 0;
    for (const ShardEntry* e : it->second) {
      if (e->global_shape != whole)
        throw UserError(concat(step_dir, ": tensor ", tensor, " has shape ", shape_str(e->global_shape),
                               ", the model expects ", shape_str(whole)));
      const int64_t ra = std::max(e->row_begin, r0), rb = std::min(e->row_end, r1);
      const int64_t ca = std::max(e->col_begin, c0), cb = std::min(e->columns_end(), c1);
      if (ra >= rb || ca >= cb) continue;
      buf.resize(static_cast<size_t>(e->bytes));
      std::ifstream& in = file(e->rank);
      in.seekg(e->offset);
      in.read(buf.data(), e->bytes);
      if (in.gcount() != e->bytes) {
        in.clear();
        throw UserError(concat(step_dir, "/", rank_file_name(e->rank), ": truncated (tensor ", tensor, ")"));
      }
      if (XXH3_64bits(buf.data(), buf.size()) != e->checksum)
        throw UserError(concat(step_dir, "/", rank_file_name(e->rank), ": checksum mismatch in tensor ", tensor));
      const int64_t src_row = (e->columns_end() - e->col_begin) * inner, dst_row = (c1 - c0) * inner;
      const size_t run = static_cast<size_t>((cb - ca) * inner) * 4;
      for (int64_t r = ra; r < rb; ++r)
        std::memcpy(dst.data<char>() + ((r - r0) * dst_row + (ca - c0) * inner) * 4,
                    buf.data() + ((r - e->row_begin) * src_row + (ca - e->col_begin) * inner) * 4, run);
      covered += (rb - ra) * (cb - ca);
    }
    if (covered != (r1 - r0) * (c1 - c0))
      throw UserError(concat(step_dir, ": tensor ", tensor, ": rows [", r0, ", ", r1, ")",
                             whole.size() > 1 && c1 - c0 != whole_cols ? concat(" x columns [", c0, ", ", c1, ")") : "",
                             " not all saved"));
  };
  for (auto& p : params) {
    load("model/" + p.name, p, p.master);
    if (optimizer && meta.has_optimizer) {
      load("optim/exp_avg/" + p.name, p, p.exp_avg);
      load("optim/exp_avg_sq/" + p.name, p, p.exp_avg_sq);
    }
  }
}

std::vector<int64_t> list_steps(const std::string& folder) {
  std::vector<int64_t> steps;
  std::error_code ec;
  const auto type = fs::status(folder, ec).type();
  if (type == fs::file_type::not_found) return steps;  // nothing saved yet
  // Any other failure is an error: taking it for "no checkpoint" would train from scratch and
  // replace what was saved.
  if (ec) throw UserError(concat(folder, ": cannot read the checkpoint folder: ", ec.message()));
  if (type != fs::file_type::directory) throw UserError(concat(folder, ": the checkpoint folder is not a directory"));
  fs::directory_iterator it(folder, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const auto step = step_of_dir_name(name);
    if (!step) continue;
    if (name != step_dir_name(*step))
      throw UserError(concat(it->path().string(), ": titan names step folders ", step_dir_name(*step),
                             " (no leading zeros); rename it to resume from it"));
    std::error_code mec;
    const auto meta = fs::status(it->path() / "metadata.json", mec).type();
    if (mec && meta != fs::file_type::not_found)
      throw UserError(concat((it->path() / "metadata.json").string(), ": cannot check the checkpoint: ", mec.message()));
    if (meta != fs::file_type::not_found) steps.push_back(*step);
  }
  if (ec) throw UserError(concat(folder, ": cannot list the checkpoint folder: ", ec.message()));
  std::sort(steps.begin(), steps.end());
  return steps;
}

}  // namespace titan::checkpoint

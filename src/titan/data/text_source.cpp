#include "titan/data/text_source.h"

#include <glob.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <nlohmann/json.hpp>

#include "titan/core/error.h"
#include "titan/core/file_check.h"

namespace titan::data {

namespace fs = std::filesystem;

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_data_file(const std::string& p) {
  for (const char* ext : {".jsonl", ".json", ".json.gz", ".jsonl.gz", ".json.zst", ".jsonl.zst", ".zst", ".txt"})
    if (ends_with(p, ext)) return true;
  return false;
}
}  // namespace

namespace {
// Bytes of the well-formed UTF-8 sequence starting at p[i], or 0 when none starts there.
size_t utf8_sequence(const unsigned char* p, size_t n, size_t i) {
  const unsigned char c = p[i];
  if (c < 0x80) return 1;
  size_t len;
  uint32_t cp;
  if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
  else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
  else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
  else return 0;
  if (i + len > n) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((p[i + k] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i + k] & 0x3F);
  }
  if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
      (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return len;
}
}  // namespace

bool is_valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    const size_t len = utf8_sequence(p, s.size(), i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

std::string with_replacement_characters(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t len = utf8_sequence(p, s.size(), i);
    if (len == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD for the byte that starts no character
      ++i;
    } else {
      out.append(s, i, len);
      i += len;
    }
  }
  return out;
}

namespace {
std::string oversized_problem() {
  return concat("document of more than ", kMaxDocumentBytes >> 20,
                " MiB (titan's maximum document size, which bounds the loader's memory; split it, or set "
                "training.skip_bad_records = true to skip it)");
}
}  // namespace

std::vector<std::string> expand_data_paths(const std::vector<std::string>& specs) {
  std::vector<std::string> files;
  for (const auto& spec : specs) {
    std::vector<std::string> matched;
    if (spec.find_first_of("*?[") != std::string::npos) {
      glob_t g{};
      if (glob(spec.c_str(), 0, nullptr, &g) == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i) matched.emplace_back(g.gl_pathv[i]);
      globfree(&g);
      if (matched.empty()) throw UserError(concat(spec, ": no files match this pattern"));
    } else if (fs::is_directory(spec)) {
      for (const auto& e : fs::recursive_directory_iterator(spec))
        if (e.is_regular_file() && is_data_file(e.path().string())) matched.push_back(e.path().string());
      if (matched.empty())
        throw UserError(concat(spec, ": no data files in this directory (expected .jsonl, .json, .json.gz, .zst or .txt)"));
    } else if (fs::exists(spec)) {
      matched.push_back(spec);
    } else {
      throw UserError(concat(spec, ": no such file or directory"));
    }
    std::sort(matched.begin(), matched.end());
    for (auto& m : matched) {
      require_readable_file(m, "data file");  // a FIFO would block the loader forever
      if (!is_data_file(m)) throw UserError(concat(m, ": unknown data format (expected .jsonl, .json, .json.gz, .zst or .txt)"));
      files.push_back(std::move(m));
    }
  }
  if (files.empty()) throw UserError("no data files given");
  return files;
}

// Reads lines from a plain, gzip or zstd file; every failure names the file.
struct DocumentReader::LineReader {
  enum Kind { plain, gzip, zstd } kind;
  std::string path;
  FILE* file = nullptr;
  gzFile gz = nullptr;
  ZSTD_DCtx* zctx = nullptr;
  std::vector<char> in_buf, out_buf;
  ZSTD_inBuffer zin{nullptr, 0, 0};
  size_t zstd_frame_remaining = 0;  // ZSTD_decompressStream's hint: 0 means a frame just ended
  std::string pending;
  size_t pending_pos = 0;
  bool eof = false;

  explicit LineReader(const std::string& p) : path(p) {
    kind = ends_with(p, ".gz") ? gzip : ends_with(p, ".zst") ? zstd : plain;
    if (kind == gzip) {
      gz = gzopen(p.c_str(), "rb");
      if (!gz) throw UserError(concat(p, ": cannot open"));
      gzbuffer(gz, 1 << 17);
    } else {
      file = std::fopen(p.c_str(), "rb");
      if (!file) throw UserError(concat(p, ": cannot open"));
      if (kind == zstd) {
        zctx = ZSTD_createDCtx();
        in_buf.resize(ZSTD_DStreamInSize());
      }
    }
    out_buf.resize(1 << 17);
  }
  ~LineReader() {
    if (gz) gzclose(gz);
    if (file) std::fclose(file);
    if (zctx) ZSTD_freeDCtx(zctx);
  }

  // Appends the next block of decompressed bytes to pending; false at a clean end.
  bool fill() {
    if (eof) return false;
    size_t got = 0;
    if (kind == plain) {
      got = std::fread(out_buf.data(), 1, out_buf.size(), file);
      if (got == 0 && std::ferror(file)) throw UserError(concat(path, ": read error"));
    } else if (kind == gzip) {
      const int n = gzread(gz, out_buf.data(), static_cast<unsigned>(out_buf.size()));
      int err = Z_OK;
      const char* msg = gzerror(gz, &err);
      if (n < 0 || (err != Z_OK && err != Z_STREAM_END))
        throw UserError(concat(path, ": corrupt or truncated gzip data (", msg, ")"));
      got = static_cast<size_t>(n);
    } else {
      while (got == 0) {
        if (zin.pos == zin.size) {
          zin.size = std::fread(in_buf.data(), 1, in_buf.size(), file);
          zin.src = in_buf.data();
          zin.pos = 0;
          if (zin.size == 0) {
            if (zstd_frame_remaining != 0) throw UserError(concat(path, ": truncated zstd data (frame incomplete)"));
            break;
          }
        }
        ZSTD_outBuffer zout{out_buf.data(), out_buf.size(), 0};
        zstd_frame_remaining = ZSTD_decompressStream(zctx, &zout, &zin);
        if (ZSTD_isError(zstd_frame_remaining))
          throw UserError(concat(path, ": corrupt zstd data (", ZSTD_getErrorName(zstd_frame_remaining), ")"));
        got = zout.pos;
      }
    }
    if (got == 0) {
      eof = true;
      return false;
    }
    pending.erase(0, pending_pos);
    pending_pos = 0;
    pending.append(out_buf.data(), got);
    return true;
  }

  // The next line into `out`; false at the end. A line over kMaxDocumentBytes is not held: its
  // bytes are passed over, `out` is left empty and `oversized` set.
  bool line(std::string& out, bool& oversized) {
    oversized = false;
    size_t scanned = 0;  // bytes after pending_pos already searched for a newline
    for (;;) {
      const size_t nl = pending.find('\n', pending_pos + scanned);
      if (nl != std::string::npos) {
        if (oversized) out.clear();
        else out.assign(pending, pending_pos, nl - pending_pos);
        pending_pos = nl + 1;
        return true;
      }
      if (pending.size() - pending_pos > static_cast<size_t>(kMaxDocumentBytes)) {
        oversized = true;
        pending_pos = pending.size();
      }
      scanned = pending.size() - pending_pos;
      if (!fill()) {
        if (pending_pos < pending.size() || oversized) {  // last line without a newline
          if (oversized) out.clear();
          else out.assign(pending, pending_pos, std::string::npos);
          pending_pos = pending.size();
          return true;
        }
        return false;
      }
    }
  }

  // The rest of the file, or false (and nothing held) when it is over kMaxDocumentBytes.
  bool all(std::string& out) {
    bool oversized = false;
    while (fill())
      if (pending.size() - pending_pos > static_cast<size_t>(kMaxDocumentBytes)) {
        oversized = true;
        pending_pos = pending.size();
      }
    out = oversized ? std::string() : pending.substr(pending_pos);
    return !oversized;
  }
};

DocumentReader::DocumentReader(std::vector<std::string> files, SourceOptions options)
    : files_(std::move(files)), options_(std::move(options)) {}
DocumentReader::~DocumentReader() = default;

bool DocumentReader::open_next_file() {
  reader_.reset();
  ++file_index_;
  records_in_file_ = 0;
  txt_done_ = false;
  if (file_index_ >= static_cast<int64_t>(files_.size())) return false;
  reader_ = std::make_unique<LineReader>(files_[file_index_]);
  return true;
}

// One record of the current file into doc; false when the file has no more. Bad records are
// either errors or (skip_bad_records) counted, logged and passed over.
bool DocumentReader::read_record(Document& doc) {
  const std::string& path = files_[file_index_];
  if (ends_with(path, ".txt")) {
    if (txt_done_) return false;
    txt_done_ = true;
    ++records_in_file_;
    const bool whole = reader_->all(doc.text);
    doc.file = path;
    doc.line = 0;
    if (!whole || !is_valid_utf8(doc.text)) {
      const std::string problem = whole ? "not valid UTF-8" : oversized_problem();
      if (!options_.skip_bad_records) throw UserError(concat(path, ": ", problem));
      ++skipped_;
      std::cerr << "warning: " << path << ": skipped (" << problem << ")\n";
      return read_record(doc);
    }
    return true;
  }
  std::string line;
  bool oversized = false;
  while (reader_->line(line, oversized)) {
    ++records_in_file_;
    std::string problem;
    if (oversized) {
      problem = oversized_problem();
    } else if (line.find_first_not_of(" \t\r") == std::string::npos) {
      continue;
    } else {
      try {
        auto j = nlohmann::json::parse(line);
        auto it = j.is_object() ? j.find(options_.field) : j.end();
        if (!j.is_object()) problem = "expected a JSON object";
        else if (it == j.end()) problem = concat("no field '", options_.field, "'");
        else if (!it->is_string()) problem = concat("field '", options_.field, "' is not a string");
        else {
          doc.text = it->get<std::string>();
          doc.file = path;
          doc.line = records_in_file_;
          return true;
        }
      } catch (const nlohmann::json::parse_error& e) {
        // nlohmann rejects ill-formed UTF-8 inside strings as a parse error too: say which it was.
        problem = concat(std::string(e.what()).find("UTF-8") != std::string::npos ? "invalid UTF-8 inside a JSON string"
                                                                                  : "invalid JSON",
                         " at column ", e.byte);
      }
    }
    if (!options_.skip_bad_records) throw UserError(concat(path, ":", records_in_file_, ": ", problem));
    ++skipped_;
    std::cerr << "warning: " << path << ":" << records_in_file_ << ": skipped bad record (" << problem << ")\n";
  }
  return false;
}

bool DocumentReader::next(Document& doc) {
  if (file_index_ < 0 && !open_next_file()) return false;
  while (file_index_ < static_cast<int64_t>(files_.size())) {
    if (read_record(doc)) return true;
    if (!open_next_file()) return false;
  }
  return false;
}

void DocumentReader::skip_to(int64_t file_index, int64_t records) {
  file_index_ = file_index - 1;
  if (!open_next_file()) return;
  std::string line;
  if (ends_with(files_[file_index_], ".txt")) {
    if (records > 0) txt_done_ = true;
    records_in_file_ = records;
    return;
  }
  bool oversized = false;
  while (records_in_file_ < records && reader_->line(line, oversized)) ++records_in_file_;
}

}  // namespace titan::data

// Documents from text files: JSON lines (plain, .gz or .zst; field `text` by default, other
// fields ignored) and plain .txt (one document per file); a file, a directory (recursive) or
// a glob. Real C4 shards (en/c4-train.000NN-of-01024.json.gz) read unchanged.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace titan::data {

// The longest document (a JSON line, or a .txt file) titan reads. A longer one is a bad record:
// an error, or skipped under skip_bad_records, without ever being held in memory whole (a 200 MB
// line without spaces once took 10 GB to tokenize).
inline constexpr int64_t kMaxDocumentBytes = int64_t{32} << 20;

struct Document {
  std::string text;
  std::string file;  // where it came from, for messages
  int64_t line = 0;  // 1-based line (0 for .txt)
};

struct SourceOptions {
  std::string field = "text";
  // Bad records (invalid JSON line, missing field, non-UTF-8 text, over kMaxDocumentBytes) are skipped and counted
  // instead of stopping the run. Broken files (truncated gzip/zst, unreadable) always stop it.
  bool skip_bad_records = false;
};

// Resolves files, directories and globs into a sorted list of readable data files.
// Throws UserError when a path matches nothing or no data file is found.
std::vector<std::string> expand_data_paths(const std::vector<std::string>& specs);

// One pass over the documents of a list of files, in order.
class DocumentReader {
 public:
  DocumentReader(std::vector<std::string> files, SourceOptions options);
  ~DocumentReader();
  // Next document; false at the end of the last file. Throws UserError naming file and line.
  bool next(Document& doc);
  // Position: file index and records read in it (bad records included), so a reader can be
  // put back exactly by skip_to().
  int64_t file_index() const { return file_index_; }
  int64_t records_in_file() const { return records_in_file_; }
  void skip_to(int64_t file_index, int64_t records);
  int64_t skipped_records() const { return skipped_; }

 private:
  struct LineReader;
  bool open_next_file();
  bool read_record(Document& doc);

  std::vector<std::string> files_;
  SourceOptions options_;
  int64_t file_index_ = -1;
  int64_t records_in_file_ = 0;
  int64_t skipped_ = 0;
  bool txt_done_ = false;
  std::unique_ptr<LineReader> reader_;
};

bool is_valid_utf8(const std::string& s);
// s with each byte that starts no well-formed character replaced by U+FFFD (printable text from
// token bytes that split a character).
std::string with_replacement_characters(const std::string& s);

}  // namespace titan::data

// The job configuration: torchtitan's TOML schema (plus titan's own keys), read from a file,
// then overridden by `--section.key value` flags. Every key is in the schema table with its
// type, default, meaning and status; anything else is an error naming file, key and line.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace titan::config {

// string_list: a TOML array of strings; on the command line, comma-separated.
enum class KeyType { boolean, integer, real, string, string_or_int, string_list };

// What titan does with a key: implemented; accepted but meaningless in C++ (logged once);
// or implemented only at its default, any other value refused as not supported yet.
enum class KeyStatus { implemented, accepted_noop, default_only };

struct KeySpec {
  std::string section, key;
  KeyType type;
  std::string default_value;  // as it would be written on the command line
  std::string help;
  KeyStatus status = KeyStatus::implemented;
  std::string full() const { return section + "." + key; }
};

const std::vector<KeySpec>& schema();

// torchtitan's later name of a key whose meaning is the same ([lr_scheduler], [parallelism],
// training.local_batch_size, checkpoint.enable, ...): setting it sets `key`, negated where
// `negated` (metrics.disable_color_printing). Setting both names to different values is refused.
struct KeyAlias {
  std::string alias, key;
  bool negated = false;
};
const std::vector<KeyAlias>& key_aliases();

using Value = std::variant<bool, int64_t, double, std::string, std::vector<std::string>>;

class JobConfig {
 public:
  JobConfig();  // every key at its default
  // Reads a TOML file over the defaults. Throws UserError "file:line: key: problem".
  void load_file(const std::string& path);
  // The same from TOML text (a checkpoint's saved config); `name` stands for the file in errors.
  void load_string(const std::string& text, const std::string& name);
  // Applies CLI flags after the file. Throws UserError naming the flag.
  void apply_overrides(const std::vector<std::string>& args);
  // Cross-key and range checks; throws UserError naming the key and its source.
  void validate() const;

  bool get_bool(const std::string& full_key) const;
  int64_t get_int(const std::string& full_key) const;
  double get_real(const std::string& full_key) const;
  std::string get_string(const std::string& full_key) const;
  std::vector<std::string> get_strings(const std::string& full_key) const;
  bool is_default(const std::string& full_key) const;
  // Where a key's value came from: "file:line", "--flag" or "default".
  std::string origin(const std::string& full_key) const;

  std::string to_toml() const;  // the resolved config
  // The keys whose value differs from the default, one "  key = value  (origin)" line each, in
  // schema order, floats in their shortest exact form (8e-4, not 0.00080000000000000004).
  std::vector<std::string> changed_lines() const;
  // Notices for keys that were set but mean nothing here (printed once at start).
  std::vector<std::string> notices() const;

 private:
  void set(const KeySpec& spec, const std::string& text, const std::string& origin);
  const Value& value(const std::string& full_key) const;

  void load_text(const std::string& text, const std::string& path);
  // Sets a key through its name or an alias, refusing a second name that contradicts the first.
  void set_named(const std::string& name, const KeySpec& spec, Value v, const std::string& origin);

  std::map<std::string, Value> values_;
  std::map<std::string, std::string> origins_;
  std::map<std::string, std::string> set_as_;  // key -> the name it was last set by
};

// `titan train --help`: every key with its type, default and meaning.
std::string help_text();

}  // namespace titan::config

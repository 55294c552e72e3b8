// Integer and word settings from environment variables, with one-line errors naming the variable.
#pragma once
#include <initializer_list>
#include <string>

namespace titan {

// The variable's integer value, or `fallback` when unset; a UserError for anything but an
// integer in [min_value, max_value].
int env_int(const char* name, int fallback, int min_value, int max_value);

// Likewise for a variable that takes one of `allowed` (e.g. a kernel layout: 16 or 32).
int env_one_of(const char* name, std::initializer_list<int> allowed, int fallback);

// The variable's word, one of `allowed` (e.g. titan or cudnn), or `fallback` when unset.
std::string env_word(const char* name, std::initializer_list<const char*> allowed, const char* fallback);

}  // namespace titan

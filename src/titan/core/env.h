// Integer settings from environment variables, with one-line errors naming the variable.
#pragma once
#include <initializer_list>

namespace titan {

// The variable's integer value, or `fallback` when unset; a UserError for anything but an
// integer in [min_value, max_value].
int env_int(const char* name, int fallback, int min_value, int max_value);

// Likewise for a variable that takes one of `allowed` (e.g. a kernel layout: 16 or 32).
int env_one_of(const char* name, std::initializer_list<int> allowed, int fallback);

}  // namespace titan

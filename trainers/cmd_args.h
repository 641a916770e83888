// A small option parser for the `kiln tokenizer` and `kiln data` commands:
// --name VALUE, --name=VALUE, list options that take every value up to the
// next --option (--text A B C), and flags. Anything unknown or malformed is
// reported with a message for the usage line. Numeric values are parsed
// whole and range-checked, and a refused one is reported with its range.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace kiln {

struct ParsedArgs {
  std::map<std::string, std::vector<std::string>> values;  // option -> its values
  std::set<std::string> flags;
  std::string error;  // empty when parsing succeeded

  bool has(const std::string& name) const { return values.count(name) > 0; }
  const std::string& one(const std::string& name) const { return values.at(name).front(); }
};

/// Parses all of `s` as a decimal integer in [lo, hi] (no sign tricks, no
/// trailing characters, no overflow: strtoll's ERANGE counts as outside).
inline bool parse_integer(const std::string& s, long long lo, long long hi, long long* v) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  *v = std::strtoll(s.c_str(), &end, 10);
  return errno == 0 && end == s.c_str() + s.size() && *v >= lo && *v <= hi;
}

/// Parses all of `s` as a finite number in [lo, hi].
inline bool parse_number(const std::string& s, double lo, double hi, double* v) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  *v = std::strtod(s.c_str(), &end);
  return errno == 0 && end == s.c_str() + s.size() && *v >= lo && *v <= hi;
}

/// "--name: expected an integer in [lo, hi], got 'value'": the message for a
/// value parse_integer refused, with the whole allowed range.
inline std::string integer_range_error(const std::string& name, const std::string& value, long long lo, long long hi) {
  return name + ": expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + value + "'";
}

/// `single`: options with exactly one value; `lists`: options with one or
/// more; `flag_names`: options without a value. Names include the "--".
inline ParsedArgs parse_args(int argc, char** argv, int first, const std::set<std::string>& single,
                             const std::set<std::string>& lists, const std::set<std::string>& flag_names) {
  ParsedArgs out;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    std::string inline_value;
    bool has_inline = false;
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_inline = true;
    }
    if (flag_names.count(a)) {
      if (has_inline) {
        out.error = a + " takes no value";
        return out;
      }
      out.flags.insert(a);
    } else if (single.count(a) || lists.count(a)) {
      if (out.values.count(a)) {
        out.error = a + " given twice";
        return out;
      }
      std::vector<std::string>& v = out.values[a];
      if (has_inline) v.push_back(inline_value);
      while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0 && (v.empty() || lists.count(a)))
        v.emplace_back(argv[++i]);
      if (v.empty() || (v.size() == 1 && v[0].empty())) {
        out.error = a + " needs a value";
        return out;
      }
    } else {
      out.error = (a.rfind("-", 0) == 0 ? "unknown option " : "unexpected argument ") + std::string(argv[i]);
      return out;
    }
  }
  return out;
}

}  // namespace kiln

// A small option parser for the `kiln tokenizer` and `kiln data` commands:
// --name VALUE, --name=VALUE, list options that take every value up to the
// next --option (--text A B C), and flags. Anything unknown or malformed is
// reported with a message for the usage line.
#pragma once

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

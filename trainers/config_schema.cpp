// The schema engine: YAML tree -> checked values -> struct, and back.
//
// Loading happens in four passes so that every error names the right place:
//   1. walk the document: unknown keys, duplicate keys and non-map sections
//      are found here, and every given key is recorded with its location;
//   2. overrides replace or add given keys (same unknown-key checks);
//   3. defaults are set, then every given field is converted and range
//      checked (type errors carry the value's line and column);
//   4. required keys and "does not apply" conditions are checked on the
//      resolved values, then the owner's cross-field checks run.
#include "trainers/config_schema.h"

#include <yaml-cpp/depthguard.h>  // YAML::DeepRecursion
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "runtime/error.h"

namespace kiln::config {

// --- small text helpers ------------------------------------------------------

size_t edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  // d[i][j]: distance between a[:i] and b[:j]; three rows suffice for the
  // transposition term.
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

static std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string nearest(const std::string& word, const std::vector<std::string>& candidates) {
  const std::string w = lower(word);
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    const size_t d = edit_distance(w, lower(c));
    if (d < best_d) best_d = d, best = c;
  }
  // A third of the word's length (at least one edit) is a plausible typo;
  // beyond that a suggestion is more confusing than none.
  const size_t limit = std::max<size_t>(1, w.size() / 3);
  if (!best.empty() && best_d <= limit) return best;
  // "optimizer" for "optim", "lr_rate" for "lr": one name extends the other.
  std::string pref;
  size_t pref_len = 0;
  for (const auto& c : candidates) {
    const std::string lc = lower(c);
    const size_t shorter = std::min(lc.size(), w.size());
    if (shorter < 2) continue;
    if (lc.compare(0, shorter, w, 0, shorter) == 0 && shorter > pref_len) pref = c, pref_len = shorter;
  }
  return pref;
}

std::string format_number(double v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v);  // shortest round-trip form
  std::string s(buf, res.ptr);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // 'n': inf / nan
  return s;
}

static std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

/// "a, b or c" for messages.
static std::string either(const std::vector<std::string>& v) {
  if (v.size() <= 1) return join(v, "");
  std::vector<std::string> head(v.begin(), v.end() - 1);
  return join(head, ", ") + " or " + v.back();
}

static std::string child_path(const std::string& parent, const std::string& name) {
  return parent.empty() ? name : parent + "." + name;
}

// Offset of the first byte of `s` that is not part of well-formed UTF-8
// (overlong forms, surrogates and code points above U+10FFFF are not), or
// npos.
static size_t invalid_utf8_at(const std::string& s) {
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned c = b[i];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      return i;
    }
    if (i + len > n || b[i + 1] < lo || b[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if (b[i + k] < 0x80 || b[i + k] > 0xBF) return i;
    i += len;
  }
  return std::string::npos;
}

// yaml-cpp refuses documents nested deeper than its parser's recursion limit
// (DepthGuard<500>) with DeepRecursion, whose message says only "bad file".
static std::string too_deep(const YAML::DeepRecursion& e) {
  return "nested too deeply: maps and lists " + std::to_string(e.depth()) +
         " levels inside each other reach yaml-cpp's limit (a kiln config is a few levels deep: section, "
         "subsection, value)";
}

static std::string mark_text(const std::string& source, const YAML::Mark& m) {
  if (m.is_null() || m.line < 0) return source;
  return source + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
}

/// What a node is, for "expected X, got Y".
static std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null: return "nothing";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Scalar:
      if (n.Tag() == "!") return "the quoted string '" + n.Scalar() + "'";
      return "'" + n.Scalar() + "'";
    default: return "an undefined value";
  }
}

static const char* kind_text(Kind k) {
  switch (k) {
    case Kind::boolean: return "true or false";
    case Kind::integer: return "an integer";
    case Kind::number: return "a number";
    case Kind::string: return "a string";
    case Kind::choice: return "one of";
    case Kind::integer_list: return "a list of integers";
    case Kind::number_list: return "a list of numbers";
    case Kind::string_list: return "a list of strings";
  }
  return "?";
}

static std::string expected(const Field& f) {
  if (f.kind == Kind::choice) return "one of " + either(f.choices);
  return kind_text(f.kind);
}

// --- FieldRef / Locator --------------------------------------------------------

void FieldRef::set_bound(bool lower_bound, double fv, int64_t iv) {
  if (lower_bound) {
    f_->has_min = true;
    f_->min_open = false;
    f_->fmin = fv;
    f_->imin = iv;
  } else {
    f_->has_max = true;
    f_->max_open = false;
    f_->fmax = fv;
    f_->imax = iv;
  }
}

std::string Locator::where(const std::string& path) const {
  auto it = where_.find(path);
  return it == where_.end() ? source_ : it->second;
}

bool Locator::given(const std::string& path) const { return where_.count(path) != 0; }

void Locator::fail(const std::string& path, const std::string& message) const {
  throw InputError(where(path) + ": " + path + ": " + message);
}

// --- Schema: registration and lookup -------------------------------------------

struct Schema::Given {
  std::string path;
  bool is_section = false;
  YAML::Node node;    // fields only
  std::string where;  // "file:line:col" of the key, or the override text
  bool from_override = false;  // the node's marks are in the override, not the file
};

Schema::Schema() {
  Section root;
  root.doc = "top level";
  sections_.push_back(root);
  section_index_[""] = 0;
}

Field& Schema::add_field(Field f) {
  KILN_CHECK(!field_index_.count(f.path) && !section_index_.count(f.path),
             "config schema declares '" << f.path << "' twice");
  const size_t parent = section_index_.at(f.parent);
  fields_.push_back(std::move(f));
  const size_t i = fields_.size() - 1;
  field_index_[fields_[i].path] = i;
  sections_[parent].children.emplace_back(false, i);
  return fields_[i];
}

size_t Schema::add_section(const std::string& parent, const std::string& name, const std::string& doc) {
  Section s;
  s.name = name;
  s.parent = parent;
  s.path = child_path(parent, name);
  s.doc = doc;
  KILN_CHECK(!field_index_.count(s.path) && !section_index_.count(s.path),
             "config schema declares '" << s.path << "' twice");
  const size_t p = section_index_.at(parent);
  sections_.push_back(std::move(s));
  const size_t i = sections_.size() - 1;
  section_index_[sections_[i].path] = i;
  sections_[p].children.emplace_back(true, i);
  return i;
}

const Field* Schema::find_field(const std::string& path) const {
  auto it = field_index_.find(path);
  return it == field_index_.end() ? nullptr : &fields_[it->second];
}

const Section* Schema::find_section(const std::string& path) const {
  auto it = section_index_.find(path);
  return it == section_index_.end() ? nullptr : &sections_[it->second];
}

// --- conditions ------------------------------------------------------------------

bool Schema::condition_holds(const void* root, const Condition& c) const {
  const Field* key = find_field(c.key);
  KILN_CHECK(key && key->kind == Kind::choice,
             "config schema: condition on '" << c.key << "', which is not a choice field");
  const std::string v = std::get<std::string>(key->get(root));
  return std::find(c.values.begin(), c.values.end(), v) != c.values.end();
}

const Condition* Schema::failing_condition(const void* root, const std::string& path, std::string* owner) const {
  // Outermost first, so a whole section that does not apply is reported as
  // such rather than through its first field.
  std::vector<std::string> prefixes;
  for (size_t dot = path.find('.'); dot != std::string::npos; dot = path.find('.', dot + 1))
    prefixes.push_back(path.substr(0, dot));
  prefixes.push_back(path);
  for (const auto& p : prefixes) {
    const Condition* c = nullptr;
    if (const Section* s = find_section(p); s && s->has_condition) c = &s->when;
    if (const Field* f = find_field(p); f && f->has_condition) c = &f->when;
    if (c && !condition_holds(root, *c)) {
      *owner = p;
      return c;
    }
  }
  return nullptr;
}

bool Schema::applies(const void* root, const std::string& path) const {
  std::string owner;
  return failing_condition(root, path, &owner) == nullptr;
}

// --- reading ---------------------------------------------------------------------

void Schema::unknown_key(const std::string& where, const Section& sec, const std::string& key) const {
  const std::string full = child_path(sec.path, key);
  std::vector<std::string> names;
  std::vector<std::string> paths;
  for (const auto& [is_sec, i] : sec.children) {
    names.push_back(is_sec ? sections_[i].name : fields_[i].name);
    paths.push_back(is_sec ? sections_[i].path : fields_[i].path);
  }
  std::string suggestion;
  const std::string near = nearest(key, names);
  if (!near.empty()) {
    suggestion = child_path(sec.path, near);
  } else {
    // The key may belong one level down ("model.n_layer" for
    // "model.gpt.n_layer"): look through the section's descendants.
    std::vector<std::string> deep_names, deep_paths;
    const std::string prefix = sec.path.empty() ? "" : sec.path + ".";
    for (const auto& f : fields_) {
      if (f.path.compare(0, prefix.size(), prefix) == 0 && f.parent != sec.path) {
        deep_names.push_back(f.name);
        deep_paths.push_back(f.path);
      }
    }
    const std::string deep = nearest(key, deep_names);
    for (size_t i = 0; i < deep_names.size() && !deep.empty(); ++i) {
      if (deep_names[i] == deep) {
        suggestion = deep_paths[i];
        break;
      }
    }
  }
  if (suggestion.empty()) {
    // Right name, wrong section ("train.lr" for "optim.lr"): exact matches only,
    // anything looser across sections would mostly mislead.
    for (const auto& f : fields_) {
      if (f.name == key) {
        suggestion = f.path;
        break;
      }
    }
  }
  std::string msg = where + ": unknown key '" + full + "'";
  if (!suggestion.empty()) {
    msg += "; did you mean '" + suggestion + "'?";
  } else {
    msg += sec.path.empty() ? "; valid top-level keys: " : "; valid keys in '" + sec.path + "': ";
    msg += join(names, ", ");
  }
  throw InputError(msg);
}

void Schema::walk(const YAML::Node& map, const Section& sec, const std::string& source, std::vector<Given>& given,
                  Locator& loc) const {
  if (map.IsNull()) return;  // "train:" with nothing under it: all defaults
  if (!map.IsMap()) {
    const std::string what = sec.path.empty() ? "the document" : sec.path;
    throw InputError(mark_text(source, map.Mark()) + ": " + what + ": expected a map of settings, got " +
                     describe(map));
  }
  std::map<std::string, std::string> seen;  // key -> where it first appeared
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node k = it->first;  // copies: it-> yields a temporary proxy
    const YAML::Node v = it->second;
    const std::string where = mark_text(source, k.Mark());
    if (!k.IsScalar())
      throw InputError(where + ": " + (sec.path.empty() ? "top level" : sec.path) + ": keys must be plain names, got " +
                       describe(k));
    const std::string key = k.Scalar();
    const std::string full = child_path(sec.path, key);
    if (auto s = seen.find(key); s != seen.end())
      throw InputError(where + ": duplicate key '" + full + "' (first given at " + s->second + ")");
    seen[key] = where;

    const Section* sub = find_section(full);
    const Field* f = find_field(full);
    if (sub && sub->parent == sec.path) {
      given.push_back({full, true, YAML::Node(), where});
      loc.where_[full] = where;
      walk(v, *sub, source, given, loc);
    } else if (f && f->parent == sec.path) {
      given.push_back({full, false, v, where});
      loc.where_[full] = where;
    } else {
      unknown_key(where, sec, key);
    }
  }
}

void Schema::apply_override(const std::string& text, std::vector<Given>& given, Locator& loc) const {
  const std::string where = "command-line override '" + text + "'";
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw InputError(where + ": expected key.sub=value (e.g. train.batch_size=128)");
  std::string key = text.substr(0, eq);
  while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back()))) key.pop_back();
  while (!key.empty() && std::isspace(static_cast<unsigned char>(key.front()))) key.erase(0, 1);
  const std::string value = text.substr(eq + 1);

  // Walk the dotted path through the sections, so an unknown component is
  // reported (with a suggestion) at the level where it goes wrong.
  const Section* sec = &sections_[0];
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    const size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  const Field* field = nullptr;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].empty()) throw InputError(where + ": empty name in key '" + key + "'");
    const std::string full = child_path(sec->path, parts[i]);
    const Section* sub = find_section(full);
    const Field* f = find_field(full);
    if (sub && sub->parent == sec->path) {
      sec = sub;
    } else if (f && f->parent == sec->path) {
      if (i + 1 != parts.size())
        throw InputError(where + ": '" + full + "' is a value, not a section; it has no key '" + parts[i + 1] + "'");
      field = f;
    } else {
      unknown_key(where, *sec, parts[i]);
    }
  }
  if (!field) {
    const auto& first = sec->children.front();
    const std::string example = first.first ? sections_[first.second].path : fields_[first.second].path;
    throw InputError(where + ": '" + sec->path + "' is a section; override one of its keys, e.g. '" + example +
                     "=...'");
  }

  YAML::Node node;
  try {
    node = YAML::Load(value);
  } catch (const YAML::DeepRecursion& e) {
    throw InputError(where + ": " + field->path + ": malformed value: " + too_deep(e));
  } catch (const YAML::Exception& e) {
    throw InputError(where + ": " + field->path + ": malformed value: " + e.msg);
  }

  // Sections along the way count as given (for "does not apply" checks).
  for (size_t dot = key.find('.'); dot != std::string::npos; dot = key.find('.', dot + 1)) {
    const std::string sp = key.substr(0, dot);
    if (!loc.given(sp)) {
      given.push_back({sp, true, YAML::Node(), where});
      loc.where_[sp] = where;
    }
  }
  for (auto& g : given) {
    if (g.path == field->path) {  // a later value for the same key wins
      g.node = node;
      g.where = where;
      g.from_override = true;
      loc.where_[field->path] = where;
      return;
    }
  }
  given.push_back({field->path, false, node, where, true});
  loc.where_[field->path] = where;
}

// --- conversion of one value -------------------------------------------------------

namespace {

struct Converter {
  const Field& f;
  std::string source;
  bool use_marks = true;  // false for override values: their marks mean nothing here

  [[noreturn]] void fail(const YAML::Node& n, const std::string& fallback_where, const std::string& path,
                         const std::string& msg) const {
    // Null values ("lr:" with nothing after it) carry the mark of whatever
    // follows them; the key's own location is the useful one there.
    const bool own_mark = use_marks && !n.IsNull() && !n.Mark().is_null();
    const std::string where = own_mark ? mark_text(source, n.Mark()) : fallback_where;
    throw InputError(where + ": " + path + ": " + msg);
  }

  std::string range_text() const {
    const bool is_int = f.kind == Kind::integer || f.kind == Kind::integer_list;
    auto num = [&](bool lo) {
      return is_int ? std::to_string(lo ? f.imin : f.imax) : format_number(lo ? f.fmin : f.fmax);
    };
    if (f.has_min && f.has_max)
      return std::string("in ") + (f.min_open ? "(" : "[") + num(true) + ", " + num(false) + (f.max_open ? ")" : "]");
    if (f.has_min) return std::string(f.min_open ? "> " : ">= ") + num(true);
    return std::string(f.max_open ? "< " : "<= ") + num(false);
  }

  void check_int(int64_t v, const YAML::Node& n, const std::string& w, const std::string& path) const {
    const bool low = f.has_min && (f.min_open ? v <= f.imin : v < f.imin);
    const bool high = f.has_max && (f.max_open ? v >= f.imax : v > f.imax);
    if (low || high) fail(n, w, path, std::to_string(v) + " is out of range: must be " + range_text());
  }

  void check_number(double v, const YAML::Node& n, const std::string& w, const std::string& path) const {
    const bool low = f.has_min && (f.min_open ? v <= f.fmin : v < f.fmin);
    const bool high = f.has_max && (f.max_open ? v >= f.fmax : v > f.fmax);
    if (low || high) fail(n, w, path, n.Scalar() + " is out of range: must be " + range_text());
  }

  // Scalars only; quoted scalars are strings, never numbers or booleans.
  void need_plain_scalar(const YAML::Node& n, const std::string& w, const std::string& path, const char* what) const {
    if (!n.IsScalar() || n.Tag() == "!") fail(n, w, path, std::string("expected ") + what + ", got " + describe(n));
  }

  int64_t to_int(const YAML::Node& n, const std::string& w, const std::string& path) const {
    need_plain_scalar(n, w, path, "an integer");
    const std::string& s = n.Scalar();
    const char* b = s.data();
    const char* e = s.data() + s.size();
    if (b != e && *b == '+') ++b;  // from_chars takes '-' but not '+'
    int64_t v = 0;
    auto r = std::from_chars(b, e, v);
    if (r.ec == std::errc::result_out_of_range)
      fail(n, w, path, s + " is out of range: must be " + range_text());
    if (r.ec != std::errc() || r.ptr != e || b == e) fail(n, w, path, "expected an integer, got " + describe(n));
    check_int(v, n, w, path);
    return v;
  }

  double to_number(const YAML::Node& n, const std::string& w, const std::string& path) const {
    need_plain_scalar(n, w, path, "a number");
    const std::string& s = n.Scalar();
    const char* b = s.data();
    const char* e = s.data() + s.size();
    if (b != e && *b == '+') ++b;
    double v = 0;
    auto r = std::from_chars(b, e, v);
    if (r.ec != std::errc() || r.ptr != e || b == e || !std::isfinite(v))
      fail(n, w, path, "expected a number, got " + describe(n));
    check_number(v, n, w, path);
    return v;
  }

  bool to_bool(const YAML::Node& n, const std::string& w, const std::string& path) const {
    need_plain_scalar(n, w, path, "true or false");
    const std::string s = n.Scalar();
    if (s == "true" || s == "True" || s == "TRUE") return true;
    if (s == "false" || s == "False" || s == "FALSE") return false;
    fail(n, w, path, "expected true or false, got " + describe(n));
  }

  std::string to_string(const YAML::Node& n, const std::string& w, const std::string& path) const {
    if (!n.IsScalar()) fail(n, w, path, "expected a string, got " + describe(n));
    // YAML is UTF-8 text, but yaml-cpp passes other bytes through; the
    // emitter would then write U+FFFD for them, so the saved config.yaml
    // would not read back as the config that ran.
    const std::string& s = n.Scalar();
    const size_t bad = invalid_utf8_at(s);
    if (bad != std::string::npos) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "0x%02X", static_cast<unsigned char>(s[bad]));
      fail(n, w, path, "expected UTF-8 text, got byte " + std::string(hex) + " at offset " + std::to_string(bad) +
                           " that is not UTF-8");
    }
    return s;
  }

  std::string to_choice(const YAML::Node& n, const std::string& w, const std::string& path) const {
    if (!n.IsScalar()) fail(n, w, path, "expected one of " + either(f.choices) + ", got " + describe(n));
    const std::string& s = n.Scalar();
    if (std::find(f.choices.begin(), f.choices.end(), s) != f.choices.end()) return s;
    std::string msg = "expected one of " + either(f.choices) + ", got '" + s + "'";
    const std::string near = nearest(s, f.choices);
    if (!near.empty()) msg += "; did you mean '" + near + "'?";
    fail(n, w, path, msg);
  }

  template <class T, class Fn>
  std::vector<T> to_list(const YAML::Node& n, const std::string& w, Fn one) const {
    if (!n.IsSequence()) fail(n, w, f.path, std::string("expected ") + kind_text(f.kind) + ", got " + describe(n));
    if (n.size() < f.min_items || n.size() > f.max_items) {
      std::string want = f.max_items == std::numeric_limits<size_t>::max()
                             ? "at least " + std::to_string(f.min_items)
                             : (f.min_items == f.max_items ? std::to_string(f.min_items)
                                                           : std::to_string(f.min_items) + " to " +
                                                                 std::to_string(f.max_items));
      fail(n, w, f.path, "expected " + want + " elements, got " + std::to_string(n.size()));
    }
    std::vector<T> out;
    for (size_t i = 0; i < n.size(); ++i) {
      const YAML::Node e = n[i];
      out.push_back(one(e, f.path + "[" + std::to_string(i) + "]"));
    }
    return out;
  }

  Value convert(const YAML::Node& n, const std::string& w) const {
    const std::string& p = f.path;
    switch (f.kind) {
      case Kind::boolean: return to_bool(n, w, p);
      case Kind::integer: return to_int(n, w, p);
      case Kind::number: return to_number(n, w, p);
      case Kind::string: return to_string(n, w, p);
      case Kind::choice: return to_choice(n, w, p);
      case Kind::integer_list:
        return to_list<int64_t>(n, w, [&](const YAML::Node& e, const std::string& ep) { return to_int(e, w, ep); });
      case Kind::number_list:
        return to_list<double>(n, w, [&](const YAML::Node& e, const std::string& ep) { return to_number(e, w, ep); });
      case Kind::string_list:
        return to_list<std::string>(n, w,
                                    [&](const YAML::Node& e, const std::string& ep) { return to_string(e, w, ep); });
    }
    throw Error("config schema: unhandled field kind for '" + f.path + "'");
  }
};

}  // namespace

// --- load --------------------------------------------------------------------------

void Schema::apply_defaults(void* root) const {
  for (const auto& f : fields_) f.set(root, f.default_value);
}

void Schema::load(void* root, const YAML::Node& doc, const std::string& source,
                  const std::vector<std::string>& overrides, const PostLoad& post) const {
  std::vector<Given> given;
  Locator loc;
  loc.source_ = source;
  walk(doc, sections_[0], source, given, loc);
  for (const auto& o : overrides) apply_override(o, given, loc);

  apply_defaults(root);
  for (const auto& g : given) {
    if (g.is_section) continue;
    const Field& f = *find_field(g.path);
    // The value's own mark when it has one (null values have none: use the key's).
    f.set(root, Converter{f, source, !g.from_override}.convert(g.node, g.where));
  }

  auto conditional = [&](const std::string& path) {
    for (size_t dot = 0; dot != std::string::npos;) {
      dot = path.find('.', dot + 1);
      const std::string p = dot == std::string::npos ? path : path.substr(0, dot);
      const Section* s = find_section(p);
      const Field* f = find_field(p);
      if ((s && s->has_condition) || (f && f->has_condition)) return true;
    }
    return false;
  };
  auto missing = [&](const Field& f) {
    throw InputError(source + ": missing required key '" + f.path + "' (" + f.doc + ")");
  };
  // Required keys that always apply first: conditions may depend on them.
  for (const auto& f : fields_)
    if (f.required && !loc.given(f.path) && !conditional(f.path)) missing(f);

  for (const auto& g : given) {
    std::string owner;
    if (const Condition* c = failing_condition(root, g.path, &owner)) {
      const std::string actual = std::get<std::string>(find_field(c->key)->get(root));
      std::string msg = g.where + ": " + g.path + ": does not apply when " + c->key + " is '" + actual + "' (";
      msg += owner == g.path ? "it" : "'" + owner + "'";
      msg += " applies only when " + c->key + " is " + either(c->values) + ")";
      throw InputError(msg);
    }
  }
  for (const auto& f : fields_)
    if (f.required && !loc.given(f.path) && applies(root, f.path)) missing(f);

  if (post) post(root, loc);
}

void Schema::load_text(void* root, const std::string& text, const std::string& source,
                       const std::vector<std::string>& overrides, const PostLoad& post) const {
  YAML::Node doc;
  try {
    doc = YAML::Load(text);
  } catch (const YAML::DeepRecursion& e) {  // a ParserException whose message is only "bad file"
    throw InputError(mark_text(source, e.mark) + ": malformed YAML: " + too_deep(e));
  } catch (const YAML::ParserException& e) {
    throw InputError(mark_text(source, e.mark) + ": malformed YAML: " + e.msg);
  } catch (const YAML::Exception& e) {
    throw InputError(source + ": malformed YAML: " + e.msg);
  }
  load(root, doc, source, overrides, post);
}

// --- writing -------------------------------------------------------------------------

namespace {

void emit_value(YAML::Emitter& out, const Field& f, const Value& v) {
  switch (f.kind) {
    case Kind::boolean: out << (std::get<bool>(v) ? "true" : "false"); break;
    case Kind::integer: out << std::get<int64_t>(v); break;
    case Kind::number: out << format_number(std::get<double>(v)); break;
    case Kind::string:
    case Kind::choice: {
      const std::string& s = std::get<std::string>(v);
      // The emitter quotes what would not read back as the same string;
      // empty strings it quotes too.
      out << s;
      break;
    }
    case Kind::integer_list:
      out << YAML::Flow << YAML::BeginSeq;
      for (int64_t x : std::get<std::vector<int64_t>>(v)) out << x;
      out << YAML::EndSeq;
      break;
    case Kind::number_list:
      out << YAML::Flow << YAML::BeginSeq;
      for (double x : std::get<std::vector<double>>(v)) out << format_number(x);
      out << YAML::EndSeq;
      break;
    case Kind::string_list:
      out << YAML::Flow << YAML::BeginSeq;
      for (const auto& x : std::get<std::vector<std::string>>(v)) out << x;
      out << YAML::EndSeq;
      break;
  }
}

std::string value_text(const Field& f, const Value& v) {
  YAML::Emitter out;
  emit_value(out, f, v);
  return out.c_str();
}

}  // namespace

std::string Schema::to_yaml(const void* root, bool docs) const {
  YAML::Emitter out;
  std::function<void(const Section&)> emit_section = [&](const Section& sec) {
    out << YAML::BeginMap;
    for (const auto& [is_sec, i] : sec.children) {
      if (is_sec) {
        const Section& s = sections_[i];
        if (!applies(root, s.path)) continue;
        out << YAML::Key << s.name << YAML::Value;
        if (docs && !s.doc.empty()) out << YAML::Comment(s.doc);
        emit_section(s);
      } else {
        const Field& f = fields_[i];
        if (!applies(root, f.path)) continue;
        out << YAML::Key << f.name << YAML::Value;
        emit_value(out, f, f.get(root));
        if (docs && !f.doc.empty()) out << YAML::Comment(f.doc);
      }
    }
    out << YAML::EndMap;
  };
  emit_section(sections_[0]);
  KILN_CHECK(out.good(), "config to_yaml: emitter error: " << out.GetLastError());
  std::string s = out.c_str();
  if (s.empty() || s.back() != '\n') s += '\n';
  return s;
}

bool Schema::equal(const void* a, const void* b) const {
  for (const auto& f : fields_)
    if (!(f.get(a) == f.get(b))) return false;
  return true;
}

std::string Schema::reference() const {
  std::ostringstream os;
  for (const auto& f : fields_) {
    os << f.path << " (" << expected(f) << ")";
    if (f.required) {
      os << ", required";
    } else {
      os << ", default " << value_text(f, f.default_value);
    }
    const bool ranged = f.kind == Kind::integer || f.kind == Kind::number || f.kind == Kind::integer_list ||
                        f.kind == Kind::number_list;
    if (ranged && (f.has_min || f.has_max)) os << ", " << Converter{f, "", false}.range_text();
    os << "\n    " << f.doc;
    std::string cond;
    for (size_t dot = 0; dot != std::string::npos;) {
      dot = f.path.find('.', dot + 1);
      const std::string p = dot == std::string::npos ? f.path : f.path.substr(0, dot);
      const Section* s = find_section(p);
      const Field* ff = find_field(p);
      const Condition* c = s && s->has_condition ? &s->when : (ff && ff->has_condition ? &ff->when : nullptr);
      if (c) cond = " (only when " + c->key + " is " + either(c->values) + ")";
    }
    os << cond << "\n";
  }
  return os.str();
}

}  // namespace kiln::config

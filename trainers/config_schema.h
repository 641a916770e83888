// A small declarative schema for YAML configs: each field is declared once,
// in one line, with its name, type, default, allowed range or values, a doc
// line and (optionally) the condition under which it applies. The schema then
// does all the work every config needs and nobody should write twice:
//
//   - reads a YAML document into a typed struct (through member pointers),
//   - rejects unknown keys at any depth with a "did you mean" suggestion,
//     duplicate keys (yaml-cpp keeps both silently, so every map is walked),
//     wrong types, out-of-range values and keys that do not apply (a
//     `model.gpt` section when `model.type` is mlp), each as a kiln::InputError
//     that names the file, line, column and the key path,
//   - applies `key.sub=value` overrides (values parsed as YAML) with the same
//     checks,
//   - fills defaults, prints the resolved struct back as YAML (every field that
//     applies, defaults included) and compares two structs field by field.
//
// Declaring a struct:
//
//   Schema s;
//   auto root = s.root<Config>();
//   root.integer("seed", &Config::seed, 1337, "random seed").range(0, INT64_MAX);
//   auto train = root.section("train", &Config::train, "the training loop");
//   train.integer("batch_size", &Train::batch_size, 64, "micro-batch per process").range(1, 1 << 20);
//   auto gpt = model.section("gpt", &Model::gpt, "GPT options").when("model.type", {"gpt"});
//
// The schema holds type-erased accessors from the root object, so the engine
// (config_schema.cpp) knows nothing about any particular config.
#pragma once

#include <cmath>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace YAML {
class Node;
}

namespace kiln::config {

/// What a field holds. Choice fields hold one of a fixed set of names.
enum class Kind { boolean, integer, number, string, choice, integer_list, number_list, string_list };

/// A field's value, as the engine sees it (choices as their name).
using Value = std::variant<bool, int64_t, double, std::string, std::vector<int64_t>, std::vector<double>,
                           std::vector<std::string>>;

/// "applies only when `key` (a full dotted path of a choice field) is one of
/// `values`".
struct Condition {
  std::string key;
  std::vector<std::string> values;
};

/// One leaf of the schema.
struct Field {
  std::string path;    ///< full dotted path: "train.batch_size"
  std::string name;    ///< last component: "batch_size"
  std::string parent;  ///< path of the enclosing section ("" = top level)
  Kind kind = Kind::string;
  std::string doc;
  bool required = false;  ///< no default: the key must be given
  Value default_value;

  // Allowed range, for numbers and integers (and each element of their lists).
  bool has_min = false, has_max = false;
  bool min_open = false, max_open = false;  ///< exclusive bounds
  int64_t imin = 0, imax = 0;               ///< integer bounds
  double fmin = 0, fmax = 0;                ///< number bounds

  std::vector<std::string> choices;  ///< Kind::choice
  size_t min_items = 0;              ///< lists
  size_t max_items = std::numeric_limits<size_t>::max();

  bool has_condition = false;
  Condition when;

  std::function<void(void* root, const Value&)> set;
  std::function<Value(const void* root)> get;
};

/// One map in the schema (the root is the section with path "").
struct Section {
  std::string path, name, parent, doc;
  bool has_condition = false;
  Condition when;
  /// Children in declaration order: (is_section, index into fields / sections).
  std::vector<std::pair<bool, size_t>> children;
};

class Schema;

/// Chained modifiers for the field just declared.
class FieldRef {
 public:
  explicit FieldRef(Field* f) : f_(f) {}
  /// Inclusive range [lo, hi] (for lists: of every element).
  template <class A, class B>
  FieldRef& range(A lo, B hi) { return min(lo).max(hi); }
  /// Inclusive lower bound.
  template <class T>
  FieldRef& min(T lo) {
    set_bound(true, static_cast<double>(lo), to_int(lo, true));
    return *this;
  }
  /// Inclusive upper bound.
  template <class T>
  FieldRef& max(T hi) {
    set_bound(false, static_cast<double>(hi), to_int(hi, false));
    return *this;
  }
  /// Exclusive lower bound (e.g. lr > 0).
  template <class T>
  FieldRef& above(T lo) {
    min(lo);
    f_->min_open = true;
    return *this;
  }
  /// Exclusive upper bound (e.g. beta < 1).
  template <class T>
  FieldRef& below(T hi) {
    max(hi);
    f_->max_open = true;
    return *this;
  }
  /// Lists: allowed number of elements.
  FieldRef& items(size_t lo, size_t hi = std::numeric_limits<size_t>::max()) {
    f_->min_items = lo;
    f_->max_items = hi;
    return *this;
  }
  /// The key must be given (the declared default is ignored).
  FieldRef& required() {
    f_->required = true;
    return *this;
  }
  /// Applies only when the choice field `key` is one of `values`; giving it
  /// otherwise is an error, and to_yaml leaves it out.
  FieldRef& when(const std::string& key, std::vector<std::string> values) {
    f_->has_condition = true;
    f_->when = Condition{key, std::move(values)};
    return *this;
  }
  const Field& field() const { return *f_; }

 private:
  template <class T>
  static int64_t to_int(T v, bool lower) {
    if constexpr (std::is_integral_v<T>) {
      return static_cast<int64_t>(v);
    } else {
      // A fractional bound on an integer field: round inward.
      const double r = lower ? std::ceil(static_cast<double>(v)) : std::floor(static_cast<double>(v));
      if (r >= 9.2e18) return std::numeric_limits<int64_t>::max();
      if (r <= -9.2e18) return std::numeric_limits<int64_t>::min();
      return static_cast<int64_t>(r);
    }
  }
  void set_bound(bool lower, double fv, int64_t iv);
  Field* f_;
};

template <class S>
class SectionBuilder;

/// Where each given key came from, for errors raised after the schema checks
/// (cross-field rules written by the config that owns the schema).
class Locator {
 public:
  /// "file:line:col" (or "command-line override 'k=v'") of `path` if it was
  /// given, else the source name alone.
  std::string where(const std::string& path) const;
  /// Whether the key (field or section) was given in the file or an override.
  bool given(const std::string& path) const;
  /// The name of the YAML source ("configs/x.yaml").
  const std::string& source() const { return source_; }
  /// Throws InputError "<where(path)>: <path>: <message>".
  [[noreturn]] void fail(const std::string& path, const std::string& message) const;

 private:
  friend class Schema;
  std::string source_;
  std::map<std::string, std::string> where_;
};

/// Cross-field checks and derived defaults, run after every field is set.
using PostLoad = std::function<void(void* root, const Locator&)>;

class Schema {
 public:
  Schema();
  Schema(const Schema&) = delete;
  Schema& operator=(const Schema&) = delete;

  /// Builder for the root struct type.
  template <class Root>
  SectionBuilder<Root> root();

  /// Reads `doc` (the parsed YAML of `source`) plus `overrides` into `root`:
  /// every field is set, from the document, an override or its default. Then
  /// runs `post` (if any). Throws InputError on any problem.
  void load(void* root, const YAML::Node& doc, const std::string& source, const std::vector<std::string>& overrides,
            const PostLoad& post) const;
  /// Parses YAML text first (malformed YAML is an InputError with the line and
  /// column), then load().
  void load_text(void* root, const std::string& text, const std::string& source,
                 const std::vector<std::string>& overrides, const PostLoad& post) const;

  /// Sets every field to its default (required fields get their type's zero).
  void apply_defaults(void* root) const;
  /// The resolved config as YAML: every field that applies, in declaration
  /// order; with `docs`, each followed by its doc line as a comment.
  std::string to_yaml(const void* root, bool docs = true) const;
  /// Field-by-field equality of two roots.
  bool equal(const void* a, const void* b) const;
  /// A plain-text table of every key: path, type, default, allowed values, doc.
  std::string reference() const;

  const std::deque<Field>& fields() const { return fields_; }
  const std::deque<Section>& sections() const { return sections_; }
  /// nullptr when no such field / section.
  const Field* find_field(const std::string& path) const;
  const Section* find_section(const std::string& path) const;

  // Registration (used by SectionBuilder).
  Field& add_field(Field f);
  size_t add_section(const std::string& parent, const std::string& name, const std::string& doc);
  Section& section_at(size_t i) { return sections_[i]; }

  /// Whether the field or section at `path` applies for the values in `root`
  /// (its own condition and those of all enclosing sections hold).
  bool applies(const void* root, const std::string& path) const;

 private:
  struct Given;
  void walk(const YAML::Node& map, const Section& sec, const std::string& source, std::vector<Given>& given,
            Locator& loc) const;
  void apply_override(const std::string& text, std::vector<Given>& given, Locator& loc) const;
  [[noreturn]] void unknown_key(const std::string& where, const Section& sec, const std::string& key) const;
  bool condition_holds(const void* root, const Condition& c) const;
  /// First condition along the path that fails (nullptr if none), and the
  /// path of the node that carries it.
  const Condition* failing_condition(const void* root, const std::string& path, std::string* owner) const;

  std::deque<Field> fields_;
  std::deque<Section> sections_;
  std::map<std::string, size_t> field_index_, section_index_;
};

// ---------------------------------------------------------------------------
// Typed builder: binds names to struct members through the root object.

template <class S>
class SectionBuilder {
 public:
  using Access = std::function<S*(void*)>;
  SectionBuilder(Schema* schema, size_t index, Access access)
      : schema_(schema), index_(index), access_(std::move(access)) {}

  /// A nested map whose fields live in `member`.
  template <class Sub>
  SectionBuilder<Sub> section(const std::string& name, Sub S::*member, const std::string& doc) {
    const size_t i = schema_->add_section(path(), name, doc);
    Access outer = access_;
    return SectionBuilder<Sub>(schema_, i, [outer, member](void* r) { return &(outer(r)->*member); });
  }
  /// This section applies only when the choice field `key` is one of `values`.
  SectionBuilder& when(const std::string& key, std::vector<std::string> values) {
    Section& s = schema_->section_at(index_);
    s.has_condition = true;
    s.when = Condition{key, std::move(values)};
    return *this;
  }

  FieldRef boolean(const std::string& name, bool S::*m, bool def, const std::string& doc) {
    return add(name, Kind::boolean, Value(def), doc, member_setter<bool>(m), member_getter<bool>(m));
  }
  /// Integer field; the member type's own limits are the default range.
  template <class T>
  FieldRef integer(const std::string& name, T S::*m, int64_t def, const std::string& doc) {
    static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>, "integer() needs an integer member");
    Access a = access_;
    FieldRef f = add(
        name, Kind::integer, Value(def), doc,
        [a, m](void* r, const Value& v) { a(r)->*m = static_cast<T>(std::get<int64_t>(v)); },
        [a, m](const void* r) { return Value(static_cast<int64_t>(a(const_cast<void*>(r))->*m)); });
    limit_to<T>(f);
    return f;
  }
  FieldRef number(const std::string& name, double S::*m, double def, const std::string& doc) {
    return add(name, Kind::number, Value(def), doc, member_setter<double>(m), member_getter<double>(m));
  }
  FieldRef string(const std::string& name, std::string S::*m, const std::string& def, const std::string& doc) {
    return add(name, Kind::string, Value(def), doc, member_setter<std::string>(m), member_getter<std::string>(m));
  }
  /// Choice stored as its name.
  FieldRef choice(const std::string& name, std::string S::*m, std::vector<std::string> choices, const std::string& def,
                  const std::string& doc) {
    FieldRef f = add(name, Kind::choice, Value(def), doc, member_setter<std::string>(m), member_getter<std::string>(m));
    const_cast<Field&>(f.field()).choices = std::move(choices);
    return f;
  }
  /// Choice stored as an enum value; `table` maps each name to its value.
  template <class E>
  FieldRef choice(const std::string& name, E S::*m, std::vector<std::pair<std::string, E>> table,
                  const std::string& def, const std::string& doc) {
    static_assert(std::is_enum_v<E>, "choice() with a table needs an enum member");
    Access a = access_;
    std::vector<std::string> names;
    for (const auto& [n, e] : table) names.push_back(n);
    FieldRef f = add(
        name, Kind::choice, Value(def), doc,
        [a, m, table](void* r, const Value& v) {
          const std::string& s = std::get<std::string>(v);
          for (const auto& [n, e] : table)
            if (n == s) a(r)->*m = e;
        },
        [a, m, table](const void* r) {
          const E e = a(const_cast<void*>(r))->*m;
          for (const auto& [n, v] : table)
            if (v == e) return Value(n);
          return Value(std::string("<invalid>"));
        });
    const_cast<Field&>(f.field()).choices = std::move(names);
    return f;
  }
  template <class T>
  FieldRef integers(const std::string& name, std::vector<T> S::*m, std::vector<int64_t> def, const std::string& doc) {
    static_assert(std::is_integral_v<T>, "integers() needs a vector of integers");
    Access a = access_;
    FieldRef f = add(
        name, Kind::integer_list, Value(std::move(def)), doc,
        [a, m](void* r, const Value& v) {
          const auto& src = std::get<std::vector<int64_t>>(v);
          (a(r)->*m).assign(src.begin(), src.end());
        },
        [a, m](const void* r) {
          const auto& src = a(const_cast<void*>(r))->*m;
          return Value(std::vector<int64_t>(src.begin(), src.end()));
        });
    limit_to<T>(f);
    return f;
  }
  FieldRef numbers(const std::string& name, std::vector<double> S::*m, std::vector<double> def,
                   const std::string& doc) {
    return add(name, Kind::number_list, Value(std::move(def)), doc, member_setter<std::vector<double>>(m),
               member_getter<std::vector<double>>(m));
  }
  FieldRef strings(const std::string& name, std::vector<std::string> S::*m, std::vector<std::string> def,
                   const std::string& doc) {
    return add(name, Kind::string_list, Value(std::move(def)), doc, member_setter<std::vector<std::string>>(m),
               member_getter<std::vector<std::string>>(m));
  }

  const std::string& path() const { return schema_->sections()[index_].path; }

 private:
  template <class T>
  std::function<void(void*, const Value&)> member_setter(T S::*m) {
    Access a = access_;
    return [a, m](void* r, const Value& v) { a(r)->*m = std::get<T>(v); };
  }
  template <class T>
  std::function<Value(const void*)> member_getter(T S::*m) {
    Access a = access_;
    return [a, m](const void* r) { return Value(a(const_cast<void*>(r))->*m); };
  }
  template <class T>
  static void limit_to(FieldRef& f) {
    f.min(static_cast<int64_t>(std::numeric_limits<T>::min()));
    // uint64_t's max does not fit int64_t; the engine's integers are int64.
    if constexpr (std::numeric_limits<T>::max() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      f.max(std::numeric_limits<int64_t>::max());
    else
      f.max(static_cast<int64_t>(std::numeric_limits<T>::max()));
  }
  FieldRef add(const std::string& name, Kind kind, Value def, const std::string& doc,
               std::function<void(void*, const Value&)> set, std::function<Value(const void*)> get) {
    Field f;
    f.name = name;
    f.parent = path();
    f.path = f.parent.empty() ? name : f.parent + "." + name;
    f.kind = kind;
    f.default_value = std::move(def);
    f.doc = doc;
    f.set = std::move(set);
    f.get = std::move(get);
    return FieldRef(&schema_->add_field(std::move(f)));
  }

  Schema* schema_;
  size_t index_;
  Access access_;
};

template <class Root>
SectionBuilder<Root> Schema::root() {
  return SectionBuilder<Root>(this, 0, [](void* r) { return static_cast<Root*>(r); });
}

/// Edit distance (optimal string alignment: insertions, deletions,
/// substitutions and adjacent transpositions each cost 1).
size_t edit_distance(const std::string& a, const std::string& b);

/// The candidate nearest to `word` if it is close enough to be a plausible
/// typo (or one is a prefix of the other), else "".
std::string nearest(const std::string& word, const std::vector<std::string>& candidates);

/// Shortest decimal text that reads back as the same double ("0.001", "1e-08",
/// "2.0": always with a '.' or exponent so it reads as a number, not an int).
std::string format_number(double v);

}  // namespace kiln::config

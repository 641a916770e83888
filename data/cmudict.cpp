#include "data/cmudict.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "data/file_io.h"
#include "data/sampler.h"
#include "runtime/atomic_file.h"
#include "runtime/error.h"

namespace kiln {

namespace {

namespace fs = std::filesystem;

constexpr size_t kKeptSkipped = 5;
constexpr const char* kManifest = "cmudict.json";
constexpr const char* kFormat = "kiln-cmudict-1";
const char* const kSplitNames[3] = {"train", "val", "test"};

// ARPAbet as CMUdict uses it: 15 vowels (each with a stress digit) and 24
// consonants.
const std::set<std::string>& vowels() {
  static const std::set<std::string> v = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER",
                                          "EY", "IH", "IY", "OW", "OY", "UH", "UW"};
  return v;
}
const std::set<std::string>& consonants() {
  static const std::set<std::string> c = {"B",  "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M",  "N",
                                          "NG", "P",  "R", "S",  "SH", "T", "TH", "V", "W", "Y", "Z", "ZH"};
  return c;
}

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// "N  AY1 T # comment" -> "N AY1 T"; "" when a phone is not ARPAbet.
std::string clean_pron(const std::string& raw) {
  std::string s = raw.substr(0, raw.find('#'));
  std::istringstream is(s);
  std::string phone, out;
  while (is >> phone) {
    if (!is_arpabet_phone(phone)) return "";
    if (!out.empty()) out += ' ';
    out += phone;
  }
  return out;
}

// "word(2)" -> ("word", 2); "word" -> ("word", 1).
std::pair<std::string, int> split_variant(const std::string& key) {
  if (key.size() >= 4 && key.back() == ')') {
    const size_t open = key.rfind('(');
    if (open != std::string::npos && open > 0 && open + 2 < key.size()) {
      const std::string num = key.substr(open + 1, key.size() - open - 2);
      if (std::all_of(num.begin(), num.end(), [](char c) { return c >= '0' && c <= '9'; }) && num.size() <= 3)
        return {key.substr(0, open), std::stoi(num)};
    }
  }
  return {key, 1};
}

bool usable_word(const std::string& w) {
  if (w.empty()) return false;
  for (const char c : w)
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7F) return false;
  return true;
}

std::string lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

struct Collector {
  CmudictReadStats* st;
  std::map<std::string, std::vector<std::pair<int, std::string>>> words;
  void add(const std::string& key, const std::string& raw) {
    ++st->entries;
    const auto [w0, variant] = split_variant(key);
    const std::string w = lower(w0);
    const std::string pron = clean_pron(raw);
    if (pron.empty() || !usable_word(w)) {
      ++st->skipped;
      if (st->first_skipped.size() < kKeptSkipped) st->first_skipped.push_back(key + " -> " + raw);
      return;
    }
    words[w].emplace_back(variant, pron);
  }
};

// Where the object literal starts in a JSON file or the npm module
// ("/** @type ... */ export const dictionary = {...}"): after leading
// comments, a '{' or an "export ... =" statement. npos: not that format.
size_t object_start(const std::string& t) {
  size_t i = 0;
  for (;;) {
    while (i < t.size() && is_blank(t[i])) ++i;
    if (t.compare(i, 2, "/*") == 0) {
      const size_t e = t.find("*/", i + 2);
      if (e == std::string::npos) return std::string::npos;
      i = e + 2;
    } else if (t.compare(i, 2, "//") == 0) {
      const size_t e = t.find('\n', i);
      if (e == std::string::npos) return std::string::npos;
      i = e + 1;
    } else {
      break;
    }
  }
  if (i < t.size() && t[i] == '{') return i;
  if (t.compare(i, 7, "export ") == 0) {
    const size_t eq = t.find('=', i);
    return eq == std::string::npos ? std::string::npos : eq + 1;
  }
  return std::string::npos;
}

}  // namespace

bool is_arpabet_phone(const std::string& p) {
  if (consonants().count(p)) return true;
  return p.size() == 3 && p[2] >= '0' && p[2] <= '2' && vowels().count(p.substr(0, 2)) > 0;
}

std::vector<CmudictWord> read_cmudict(const std::string& path, CmudictReadStats* stats) {
  CmudictReadStats local;
  CmudictReadStats& st = stats ? *stats : local;
  st = CmudictReadStats{};
  const std::string text = read_file(path);
  Collector col{&st, {}};
  // The npm module (or plain JSON) holds one object literal; anything else is
  // CMUdict's text format.
  const size_t first = object_start(text);
  if (first != std::string::npos) {
    const size_t open = text.find('{', first), close = text.rfind('}');
    KILN_INPUT_CHECK(open != std::string::npos && close != std::string::npos && close > open,
                     path << ": expected a JavaScript/JSON object of word -> pronunciation");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text.begin() + static_cast<std::ptrdiff_t>(open),
                                text.begin() + static_cast<std::ptrdiff_t>(close) + 1);
    } catch (const nlohmann::json::parse_error& e) {
      throw InputError(path + ": the dictionary object is not valid JSON: " + e.what());
    }
    KILN_INPUT_CHECK(j.is_object(), path << ": expected an object of word -> pronunciation");
    for (auto it = j.begin(); it != j.end(); ++it) {
      KILN_INPUT_CHECK(it.value().is_string(),
                       path << ": the pronunciation of '" << it.key() << "' is not a string");
      col.add(it.key(), it.value().get<std::string>());
    }
  } else {
    std::istringstream is(text);
    std::string line;
    int64_t lineno = 0;
    while (std::getline(is, line)) {
      ++lineno;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || line.compare(0, 3, ";;;") == 0) continue;
      size_t sp = 0;
      while (sp < line.size() && !is_blank(line[sp])) ++sp;
      KILN_INPUT_CHECK(sp < line.size(), path << ":" << lineno << ": expected 'WORD  PH ON EMES', got '" << line
                                              << "'");
      col.add(line.substr(0, sp), line.substr(sp));
    }
  }
  std::vector<CmudictWord> out;
  out.reserve(col.words.size());
  for (auto& [w, v] : col.words) {
    std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    CmudictWord cw;
    cw.word = w;
    for (auto& [variant, pron] : v) {
      if (std::find(cw.prons.begin(), cw.prons.end(), pron) != cw.prons.end()) {
        ++st.duplicates;
        continue;
      }
      cw.prons.push_back(pron);
    }
    out.push_back(std::move(cw));
  }
  KILN_INPUT_CHECK(!out.empty(), path << ": no dictionary entries (" << st.entries << " read, " << st.skipped
                                      << " skipped)");
  return out;  // std::map iteration: sorted bytewise
}

std::string cmudict_prompt(const std::string& word) { return "word: " + word + "\npron:"; }

namespace {

nlohmann::json options_json(const CmudictSplitOptions& o) {
  return {{"seed", o.seed}, {"val_fraction", o.val_fraction}, {"test_fraction", o.test_fraction}};
}

}  // namespace

CmudictSplitStats build_cmudict_splits(const std::string& source, const std::string& out_dir,
                                       const CmudictSplitOptions& o) {
  KILN_INPUT_CHECK(o.val_fraction >= 0 && o.val_fraction < 1 && o.test_fraction >= 0 && o.test_fraction < 1 &&
                       o.val_fraction + o.test_fraction < 1,
                   "cmudict: val fraction " << o.val_fraction << " and test fraction " << o.test_fraction
                                            << " must be in [0, 1) and leave some words for training");
  CmudictSplitStats st;
  const std::vector<CmudictWord> words = read_cmudict(source, &st.read);
  const auto H = static_cast<int64_t>(words.size());
  const auto n_val = static_cast<int64_t>(std::llround(static_cast<double>(H) * o.val_fraction));
  const auto n_test = static_cast<int64_t>(std::llround(static_cast<double>(H) * o.test_fraction));
  KILN_INPUT_CHECK(n_val + n_test < H, "cmudict: " << H << " words leave none for training after " << n_val
                                                   << " val and " << n_test << " test words");
  std::vector<int> split(static_cast<size_t>(H), 0);
  const std::vector<int64_t> perm = seeded_permutation(H, o.seed, 0);
  for (int64_t i = 0; i < n_val + n_test; ++i) split[static_cast<size_t>(perm[static_cast<size_t>(i)])] = i < n_val ? 1 : 2;

  std::string text[3];
  for (int64_t w = 0; w < H; ++w) {
    const CmudictWord& cw = words[static_cast<size_t>(w)];
    const int s = split[static_cast<size_t>(w)];
    nlohmann::ordered_json answers = nlohmann::ordered_json::array();
    for (const std::string& p : cw.prons) answers.push_back(" " + p);
    for (const std::string& p : cw.prons) {
      nlohmann::ordered_json line;
      line["prompt"] = cmudict_prompt(cw.word);
      line["completion"] = " " + p;
      line["answers"] = answers;
      line["word"] = cw.word;
      text[s] += line.dump();
      text[s] += '\n';
      ++st.entries[s];
    }
    ++st.words[s];
  }
  make_directories(out_dir);
  // The manifest goes last: its presence says the three files are complete.
  std::error_code ec;
  fs::remove(fs::path(out_dir) / kManifest, ec);
  for (int s = 0; s < 3; ++s) {
    const std::string path = (fs::path(out_dir) / (std::string(kSplitNames[s]) + ".jsonl")).string();
    write_file_atomic(path, text[s]);
    st.files.push_back(path);
  }
  nlohmann::ordered_json m;
  m["format"] = kFormat;
  m["source"] = source;
  m["options"] = options_json(o);
  m["entries_read"] = st.read.entries;
  m["entries_skipped"] = st.read.skipped;
  m["duplicates"] = st.read.duplicates;
  for (int s = 0; s < 3; ++s) {
    m["words"][kSplitNames[s]] = st.words[s];
    m["entries"][kSplitNames[s]] = st.entries[s];
  }
  write_file_atomic((fs::path(out_dir) / kManifest).string(), m.dump(2) + "\n");
  return st;
}

bool cmudict_splits_ready(const std::string& out_dir, const CmudictSplitOptions* o) {
  const fs::path dir(out_dir);
  std::error_code ec;
  for (const char* s : kSplitNames)
    if (!fs::is_regular_file(dir / (std::string(s) + ".jsonl"), ec)) return false;
  if (!fs::is_regular_file(dir / kManifest, ec)) return false;
  try {
    const nlohmann::json m = nlohmann::json::parse(read_file((dir / kManifest).string()));
    return m.value("format", "") == kFormat && m.contains("options") && (!o || m.at("options") == options_json(*o));
  } catch (const std::exception&) {
    return false;  // unreadable or torn: build again
  }
}

}  // namespace kiln

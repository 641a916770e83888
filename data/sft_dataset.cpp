#include "data/sft_dataset.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <sstream>
#include <utility>

#include "data/file_io.h"
#include "runtime/error.h"

namespace kiln {

const char* sft_role_name(SftRole r) {
  switch (r) {
    case SftRole::system: return "system";
    case SftRole::user: return "user";
    case SftRole::assistant: return "assistant";
  }
  return "?";
}

size_t find_invalid_utf8(std::string_view s) {
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const auto c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1Fu, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0Fu, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07u, min = 0x10000;
    } else {
      return i;  // a continuation byte where a character should start, or 0xF8..0xFF
    }
    if (len > n - i) return i;
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<uint8_t>(s[i + k]);
      if ((b & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (b & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

namespace {

using nlohmann::json;

// A bad line: the reason, without the file and line.
struct LineError {
  std::string why;
};

const char* json_type(const json& j) { return j.type_name(); }

std::string get_string(const json& obj, const char* key, const std::string& where) {
  const json& v = obj.at(key);
  if (!v.is_string())
    throw LineError{where + "\"" + key + "\" must be a string, got " + json_type(v)};
  return v.get<std::string>();
}

SftRecord parse_line(std::string_view line, int64_t lineno) {
  const size_t bad = find_invalid_utf8(line);
  if (bad != std::string_view::npos) {
    std::ostringstream os;
    os << "not valid UTF-8 (byte " << bad + 1 << " of the line, 0x" << std::hex
       << static_cast<int>(static_cast<uint8_t>(line[bad])) << ")";
    throw LineError{os.str()};
  }
  json j;
  try {
    j = json::parse(line.begin(), line.end());
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number that overflows
    std::string msg = e.what();
    const size_t p = msg.find("] ");  // drop nlohmann's "[json.exception.parse_error.101] "
    if (p != std::string::npos) msg = msg.substr(p + 2);
    throw LineError{"not valid JSON: " + msg};
  }
  if (!j.is_object()) throw LineError{std::string("expected a JSON object, got ") + json_type(j)};

  SftRecord r;
  r.line = lineno;
  const bool has_msgs = j.contains("messages");
  const bool has_pc = j.contains("prompt") || j.contains("completion");
  if (has_msgs && has_pc) throw LineError{"has both \"messages\" and \"prompt\"/\"completion\"; give one form"};
  if (!has_msgs && !has_pc)
    throw LineError{"expected \"prompt\" and \"completion\" (strings) or \"messages\" (an array of turns)"};
  if (has_pc) {
    if (!j.contains("prompt")) throw LineError{"has \"completion\" but no \"prompt\""};
    if (!j.contains("completion")) throw LineError{"has \"prompt\" but no \"completion\""};
    r.prompt = get_string(j, "prompt", "");
    r.completion = get_string(j, "completion", "");
  } else {
    const json& m = j.at("messages");
    if (!m.is_array() || m.empty())
      throw LineError{std::string("\"messages\" must be a non-empty array of turns, got ") +
                      (m.is_array() ? "an empty array" : json_type(m))};
    bool assistant = false;
    for (size_t i = 0; i < m.size(); ++i) {
      const std::string where = "messages[" + std::to_string(i) + "].";
      const json& t = m[i];
      if (!t.is_object()) throw LineError{where.substr(0, where.size() - 1) + " must be an object, got " + json_type(t)};
      if (!t.contains("role")) throw LineError{where + "role is missing"};
      if (!t.contains("content")) throw LineError{where + "content is missing"};
      const std::string role = get_string(t, "role", where);
      SftMessage msg;
      if (role == "system") msg.role = SftRole::system;
      else if (role == "user") msg.role = SftRole::user;
      else if (role == "assistant") msg.role = SftRole::assistant;
      else throw LineError{where + "role: '" + role + "' is not system, user or assistant"};
      msg.content = get_string(t, "content", where);
      assistant = assistant || msg.role == SftRole::assistant;
      r.messages.push_back(std::move(msg));
    }
    if (!assistant) throw LineError{"\"messages\" has no assistant turn, so nothing would carry loss"};
  }
  if (j.contains("answers")) {
    const json& a = j.at("answers");
    if (!a.is_array() || a.empty())
      throw LineError{std::string("\"answers\" must be a non-empty array of strings, got ") +
                      (a.is_array() ? "an empty array" : json_type(a))};
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a[i].is_string())
        throw LineError{"answers[" + std::to_string(i) + "] must be a string, got " + json_type(a[i])};
      r.answers.push_back(a[i].get<std::string>());
    }
  } else if (r.is_chat()) {
    for (auto it = r.messages.rbegin(); it != r.messages.rend(); ++it)
      if (it->role == SftRole::assistant) {
        r.answers.push_back(it->content);
        break;
      }
  } else {
    r.answers.push_back(r.completion);
  }
  return r;
}

bool blank(std::string_view s) {
  for (char c : s)
    if (c != ' ' && c != '\t' && c != '\r' && c != '\f' && c != '\v') return false;
  return true;
}

constexpr size_t kKeptErrors = 5;

struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(uint64_t v) {
    for (int i = 0; i < 8; ++i) h = (h ^ ((v >> (8 * i)) & 0xFF)) * 0x100000001b3ull;
  }
};

}  // namespace

std::vector<SftRecord> parse_sft_jsonl(std::string_view text, const std::string& source, bool skip_bad_lines,
                                       SftParseStats* stats) {
  SftParseStats local;
  SftParseStats& st = stats ? *stats : local;
  st = SftParseStats{};
  if (text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);  // byte-order mark
  std::vector<SftRecord> out;
  size_t pos = 0;
  int64_t lineno = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (blank(line)) {
      ++st.blank_lines;
      continue;
    }
    try {
      out.push_back(parse_line(line, lineno));
    } catch (const LineError& e) {
      const std::string msg = source + ":" + std::to_string(lineno) + ": " + e.why;
      if (!skip_bad_lines)
        throw InputError(msg + " (set data.skip_bad_lines: true to skip such lines)");
      ++st.bad_lines;
      if (st.first_errors.size() < kKeptErrors) st.first_errors.push_back(msg);
    }
  }
  st.lines = lineno;
  st.records = static_cast<int64_t>(out.size());
  return out;
}

std::vector<SftRecord> read_sft_jsonl(const std::string& path, bool skip_bad_lines, SftParseStats* stats) {
  const std::string text = read_file(path);
  return parse_sft_jsonl(text, path, skip_bad_lines, stats);
}

// --- template and tokens ---------------------------------------------------------

SftEncoder::SftEncoder(const Tokenizer& tok, SftTemplate tmpl) : tok_(tok), tmpl_(std::move(tmpl)) {
  const size_t p = tmpl_.prompt.find("{prompt}");
  KILN_INPUT_CHECK(p != std::string::npos,
                   "sft prompt template '" << tmpl_.prompt << "' has no {prompt} (where the record's prompt goes)");
  prefix_ = tmpl_.prompt.substr(0, p);
  suffix_ = tmpl_.prompt.substr(p + 8);
  eos_ = tok_.eot_id();
  KILN_INPUT_CHECK(eos_ >= 0, "the tokenizer has no " << kEndOfText
                                                      << " token, which SFT appends to every completion as EOS");
}

void SftEncoder::add(std::string_view text, bool loss, SftTokens* t) const {
  tok_.encode_append(text, &t->ids, /*allow_special=*/false);
  t->loss.resize(t->ids.size(), loss ? 1 : 0);
}

SftTokens SftEncoder::encode(const SftRecord& r) const {
  SftTokens t;
  auto eos = [&] {
    t.ids.push_back(eos_);
    t.loss.push_back(1);
  };
  if (!r.is_chat()) {
    add(prefix_, false, &t);
    t.cut_begin = static_cast<int64_t>(t.ids.size());
    add(r.prompt, false, &t);
    t.cut_end = static_cast<int64_t>(t.ids.size());
    add(suffix_, false, &t);
    t.prompt_len = static_cast<int64_t>(t.ids.size());
    add(r.completion, true, &t);
    eos();
    return t;
  }
  size_t last = 0;  // the last assistant turn
  for (size_t i = 0; i < r.messages.size(); ++i)
    if (r.messages[i].role == SftRole::assistant) last = i;
  for (size_t i = 0; i < r.messages.size(); ++i) {
    const SftMessage& m = r.messages[i];
    switch (m.role) {
      case SftRole::system:
      case SftRole::user:
        add(m.role == SftRole::system ? tmpl_.system_header : tmpl_.user_header, false, &t);
        add(m.content, false, &t);
        add(tmpl_.turn_end, false, &t);
        break;
      case SftRole::assistant:
        if (i == last) t.cut_end = static_cast<int64_t>(t.ids.size());
        add(tmpl_.assistant_header, false, &t);
        if (i == last) t.prompt_len = static_cast<int64_t>(t.ids.size());
        add(m.content, true, &t);
        eos();
        break;
    }
  }
  t.cut_begin = 0;
  return t;
}

std::vector<int32_t> SftEncoder::encode_prompt(const SftRecord& r) const {
  SftTokens t = encode(r);
  t.ids.resize(static_cast<size_t>(t.prompt_len));
  return std::move(t.ids);
}

SftFit fit_sft_example(SftTokens* t, int64_t max_len, SftOverflow overflow) {
  const auto positions = static_cast<int64_t>(t->ids.size()) - 1;
  if (positions <= max_len) return SftFit::fits;
  if (overflow == SftOverflow::drop) return SftFit::dropped;
  const int64_t k = positions - max_len;
  if (k > t->cut_end - t->cut_begin) return SftFit::dropped;
  t->ids.erase(t->ids.begin() + t->cut_begin, t->ids.begin() + t->cut_begin + k);
  t->loss.erase(t->loss.begin() + t->cut_begin, t->loss.begin() + t->cut_begin + k);
  t->prompt_len -= k;
  t->cut_end -= k;
  return SftFit::truncated;
}

// --- the dataset ------------------------------------------------------------------

std::string SftDataStats::summary(int64_t max_len) const {
  std::ostringstream os;
  os << examples << " examples";
  std::vector<std::string> notes;
  if (truncated) notes.push_back(std::to_string(truncated) + " truncated");
  if (dropped) notes.push_back(std::to_string(dropped) + " dropped as longer than " + std::to_string(max_len));
  if (parse.bad_lines) notes.push_back(std::to_string(parse.bad_lines) + " bad lines skipped");
  if (!notes.empty()) {
    os << " (";
    for (size_t i = 0; i < notes.size(); ++i) os << (i ? ", " : "") << notes[i];
    os << ")";
  }
  os << ", " << positions << " tokens, " << loss_tokens << " carry loss, longest " << longest;
  return os.str();
}

SftDataset SftDataset::from_file(const std::string& path, const Tokenizer& tok, const SftDataOptions& o) {
  SftParseStats ps;
  std::vector<SftRecord> recs = read_sft_jsonl(path, o.skip_bad_lines, &ps);
  return from_records(std::move(recs), path, tok, o, ps);
}

SftDataset SftDataset::from_records(std::vector<SftRecord> records, const std::string& source, const Tokenizer& tok,
                                    const SftDataOptions& o, const SftParseStats& parse) {
  KILN_INPUT_CHECK(o.max_len >= 1, source << ": max_len " << o.max_len << ", expected >= 1");
  const SftEncoder enc(tok, o.tmpl);
  SftDataset d;
  d.source_ = source;
  d.eos_ = enc.eos();
  d.max_len_ = o.max_len;
  d.stats_.parse = parse;
  Fnv fp;
  for (SftRecord& r : records) {
    SftTokens t = enc.encode(r);
    const SftFit fit = fit_sft_example(&t, o.max_len, o.overflow);
    // One token (no prompt, template or completion): no position to train.
    if (fit == SftFit::dropped || t.ids.size() < 2) {
      ++d.stats_.dropped;
      continue;
    }
    if (fit == SftFit::truncated) ++d.stats_.truncated;
    const auto n = static_cast<int64_t>(t.ids.size());
    int64_t targets = 0;
    for (int64_t i = 1; i < n; ++i) targets += t.loss[i];
    d.ids_.insert(d.ids_.end(), t.ids.begin(), t.ids.end());
    d.loss_.insert(d.loss_.end(), t.loss.begin(), t.loss.end());
    d.offsets_.push_back(static_cast<int64_t>(d.ids_.size()));
    d.lengths_.push_back(n - 1);
    d.targets_.push_back(targets);
    d.prompt_len_.push_back(t.prompt_len);
    d.stats_.positions += n - 1;
    d.stats_.loss_tokens += targets;
    d.stats_.longest = std::max(d.stats_.longest, n - 1);
    fp.add(static_cast<uint64_t>(n));
    for (int64_t i = 0; i < n; ++i) fp.add((static_cast<uint64_t>(static_cast<uint32_t>(t.ids[i])) << 1) | t.loss[i]);
    d.records_.push_back(std::move(r));
  }
  d.stats_.examples = d.size();
  d.fingerprint_ = fp.h;
  return d;
}

}  // namespace kiln

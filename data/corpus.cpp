#include "data/corpus.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "data/file_io.h"
#include "data/token_shard.h"
#include "data/tokenizer.h"
#include "runtime/atomic_file.h"
#include "runtime/error.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; });
}

bool is_separator_line(std::string_view line) { return line == "%" || line == "%\r"; }

bool has_separator_line(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    if (is_separator_line(text.substr(pos, end - pos))) return true;
    pos = end + 1;
  }
  return false;
}

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::char_traits<char>::length(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// Position in [0, 1) from a document's text: FNV-1a, then splitmix64's
// finalizer so nearby texts spread out.
double document_hash01(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);  // 53 bits
}

}  // namespace

std::vector<std::string> split_fortunes(std::string_view text) {
  std::vector<std::string> out;
  std::string cur;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    const bool has_nl = end != std::string_view::npos;
    if (!has_nl) end = text.size();
    const std::string_view line = text.substr(pos, end - pos);
    if (is_separator_line(line)) {
      if (!is_blank(cur)) out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur.append(line);
      if (has_nl) cur.push_back('\n');
    }
    pos = end + 1;
  }
  if (!is_blank(cur)) out.push_back(std::move(cur));
  return out;
}

std::vector<std::string> list_fortune_files(const std::string& dir) {
  std::error_code ec;
  KILN_INPUT_CHECK(fs::is_directory(dir, ec),
                   dir << ": fortune directory not found (Debian's `fortunes` package installs " << kFortunesDir << ")");
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (ends_with(name, ".dat") || ends_with(name, ".u8")) continue;
    // symlink_status: a link is skipped even when it points at a text file
    // (Debian's *.u8 links would otherwise count every fortune twice).
    if (e.symlink_status(ec).type() != fs::file_type::regular) continue;
    out.push_back(e.path().string());
  }
  KILN_INPUT_CHECK(!ec, dir << ": cannot list: " << ec.message());
  std::sort(out.begin(), out.end());
  KILN_INPUT_CHECK(!out.empty(), dir << ": no fortune files in it");
  return out;
}

std::vector<std::string> read_documents(const std::string& path) {
  std::error_code ec;
  std::vector<std::string> docs;
  if (fs::is_directory(path, ec)) {
    for (const std::string& f : list_fortune_files(path)) {
      std::vector<std::string> d = split_fortunes(read_file(f));
      docs.insert(docs.end(), std::make_move_iterator(d.begin()), std::make_move_iterator(d.end()));
    }
    return docs;
  }
  const std::string text = read_file(path);
  if (has_separator_line(text)) return split_fortunes(text);
  const std::string_view sep = kEndOfText;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t f = text.find(sep, pos);
    if (f == std::string::npos) f = text.size();
    if (f > pos) docs.push_back(text.substr(pos, f - pos));
    pos = f + sep.size();
  }
  return docs;
}

std::vector<std::string> read_documents(const std::vector<std::string>& paths) {
  std::vector<std::string> docs;
  for (const std::string& p : paths) {
    std::vector<std::string> d = read_documents(p);
    docs.insert(docs.end(), std::make_move_iterator(d.begin()), std::make_move_iterator(d.end()));
  }
  return docs;
}

std::string join_documents(const std::vector<std::string>& docs, std::string_view separator) {
  size_t total = 0;
  for (const auto& d : docs) total += d.size() + separator.size();
  std::string out;
  out.reserve(total);
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i > 0) out.append(separator);
    out += docs[i];
  }
  return out;
}

PrepareStats prepare_token_data(const std::vector<std::string>& text_paths, const std::string& tokenizer_dir,
                                const std::string& out_dir, double val_fraction, int64_t shard_tokens) {
  KILN_INPUT_CHECK(!text_paths.empty(), "data prepare: no text files given");
  KILN_INPUT_CHECK(val_fraction >= 0.0 && val_fraction < 1.0,
                   "data prepare: val fraction " << val_fraction << ", expected a number in [0, 1)");
  KILN_INPUT_CHECK(shard_tokens >= 1, "data prepare: shard size " << shard_tokens << " tokens, expected >= 1");
  const Tokenizer tok = Tokenizer::load(tokenizer_dir);
  const int32_t eot = tok.eot_id();
  KILN_INPUT_CHECK(eot >= 0, tokenizer_dir << ": the tokenizer has no " << kEndOfText
                                           << " token, which separates documents in the shards");
  KILN_INPUT_CHECK(tok.vocab_size() <= 65536, tokenizer_dir << ": vocabulary of " << tok.vocab_size()
                                                            << " tokens does not fit llm.c's uint16 shards");

  std::vector<std::string> docs = read_documents(text_paths);
  KILN_INPUT_CHECK(!docs.empty(), "data prepare: no text in " << text_paths.front()
                                                              << (text_paths.size() > 1 ? " and the others" : ""));

  // Assign documents to val.
  std::vector<char> is_val(docs.size(), 0);
  if (val_fraction > 0.0) {
    if (docs.size() == 1) {
      // One document: cut it at the line boundary nearest the split point.
      const std::string d = std::move(docs[0]);
      KILN_INPUT_CHECK(d.size() >= 2, "data prepare: the text is " << d.size()
                                                                   << " byte(s), too little to split into train and val");
      const auto target = static_cast<size_t>(static_cast<double>(d.size()) * (1.0 - val_fraction));
      size_t cut = std::string::npos;
      auto dist = [&](size_t c) { return c > target ? c - target : target - c; };
      for (size_t nl : {d.rfind('\n', target), d.find('\n', target)}) {
        if (nl == std::string::npos || nl + 1 >= d.size()) continue;
        if (cut == std::string::npos || dist(nl + 1) < dist(cut)) cut = nl + 1;
      }
      if (cut == std::string::npos) {  // no usable line break: cut between UTF-8 characters
        cut = std::min(std::max<size_t>(target, 1), d.size() - 1);
        while (cut > 1 && (static_cast<unsigned char>(d[cut]) & 0xC0) == 0x80) --cut;
      }
      docs = {d.substr(0, cut), d.substr(cut)};
      is_val = {0, 1};
    } else {
      size_t n_val = 0, lowest = 0, highest = 0;
      std::vector<double> h(docs.size());
      for (size_t i = 0; i < docs.size(); ++i) {
        h[i] = document_hash01(docs[i]);
        is_val[i] = h[i] < val_fraction;
        n_val += is_val[i];
        if (h[i] < h[lowest]) lowest = i;
        if (h[i] > h[highest]) highest = i;
      }
      // Tiny corpora: make sure both sides get something.
      if (n_val == 0) {
        for (size_t i = 0; i < docs.size(); ++i) is_val[i] = docs[i] == docs[lowest];
      } else if (n_val == docs.size()) {
        for (size_t i = 0; i < docs.size(); ++i) is_val[i] = docs[i] != docs[highest];
      }
    }
  }

  make_directories(out_dir);
  // The description goes last; without it the directory is not a finished
  // set of shards (callers that cache shards check for it).
  std::error_code ec;
  fs::remove(out_dir + "/prepare.json", ec);

  PrepareStats st;
  st.documents = static_cast<int64_t>(docs.size());
  for (int split = 0; split < 2; ++split) {
    const std::string name = split == 0 ? "train" : "val";
    std::vector<std::string>& shards = split == 0 ? st.train_shards : st.val_shards;
    int64_t& n_tokens = split == 0 ? st.train_tokens : st.val_tokens;
    int64_t& n_docs = split == 0 ? st.train_documents : st.val_documents;
    std::vector<int32_t> buf;
    auto flush = [&](size_t count) {
      char file[64];
      std::snprintf(file, sizeof(file), "%s_%06zu.bin", name.c_str(), shards.size());
      const std::string path = out_dir + "/" + file;
      write_token_shard(path, buf.data(), count);
      shards.push_back(path);
      buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(count));
    };
    for (size_t i = 0; i < docs.size(); ++i) {
      if (static_cast<int>(is_val[i]) != split) continue;
      ++n_docs;
      buf.push_back(eot);
      tok.encode_append(docs[i], &buf, /*allow_special=*/false);
      while (static_cast<int64_t>(buf.size()) >= shard_tokens) {
        n_tokens += shard_tokens;
        flush(static_cast<size_t>(shard_tokens));
      }
    }
    if (!buf.empty()) {
      n_tokens += static_cast<int64_t>(buf.size());
      flush(buf.size());
    }
    // Shards left from an earlier, larger run would be read as part of this one.
    std::vector<fs::path> stale;
    for (const auto& e : fs::directory_iterator(out_dir, ec)) {
      const std::string fname = e.path().filename().string();
      const bool ours = std::any_of(shards.begin(), shards.end(),
                                    [&](const std::string& p) { return fs::path(p).filename() == fname; });
      if (fname.rfind(name + "_", 0) == 0 && ends_with(fname, ".bin") && !ours) stale.push_back(e.path());
    }
    for (const auto& p : stale) fs::remove(p, ec);
  }

  auto names = [](const std::vector<std::string>& paths) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& p : paths) a.push_back(fs::path(p).filename().string());
    return a;
  };
  nlohmann::ordered_json j;
  j["format"] = "llm.c token shards (magic 20240520, version 1, uint16 tokens)";
  j["tokenizer"] = tokenizer_dir;
  j["vocab_size"] = tok.vocab_size();
  j["eot"] = eot;
  j["sources"] = text_paths;
  j["val_fraction"] = val_fraction;
  j["documents"] = st.documents;
  j["train"] = {{"documents", st.train_documents}, {"tokens", st.train_tokens}, {"shards", names(st.train_shards)}};
  j["val"] = {{"documents", st.val_documents}, {"tokens", st.val_tokens}, {"shards", names(st.val_shards)}};
  write_file_atomic(out_dir + "/prepare.json", j.dump(2) + "\n");
  return st;
}

}  // namespace kiln

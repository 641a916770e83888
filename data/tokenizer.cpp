#include "data/tokenizer.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "data/file_io.h"
#include "data/pretokenize.h"
#include "runtime/atomic_file.h"
#include "runtime/error.h"

namespace kiln {

// ---- GPT-2's byte <-> unicode map ----------------------------------------
//
// GPT-2 keeps BPE strings printable: the 188 bytes that are printable in
// Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves, the other 68
// (controls, space, DEL, NBSP, soft hyphen) map to U+0100.. in byte order.

namespace {

struct ByteMap {
  uint32_t cp[256];           // byte -> code point
  int rank[256];              // byte -> id of its single-byte token in GPT-2
  int16_t byte_of[0x144];     // code point -> byte, -1 if none
  ByteMap() {
    std::fill(std::begin(byte_of), std::end(byte_of), int16_t{-1});
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    int next_rank = 0;
    for (int b = 0; b < 256; ++b)
      if (printable(b)) { cp[b] = static_cast<uint32_t>(b); rank[b] = next_rank++; }
    int n = 0;
    for (int b = 0; b < 256; ++b)
      if (!printable(b)) { cp[b] = 256u + static_cast<uint32_t>(n++); rank[b] = next_rank++; }
    for (int b = 0; b < 256; ++b) byte_of[cp[b]] = static_cast<int16_t>(b);
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// Bytes -> encoder.json/vocab.bpe text (UTF-8 of the mapped code points).
std::string bytes_to_visible(std::string_view bytes) {
  const ByteMap& m = byte_map();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) {
    const uint32_t c = m.cp[b];
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {  // all mapped code points are < 0x800: two UTF-8 bytes
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

// encoder.json/vocab.bpe text -> bytes; false if some character is not in
// the map (a space, a control character, anything above U+0143).
bool visible_to_bytes(std::string_view s, std::string* out) {
  const ByteMap& m = byte_map();
  out->clear();
  for (size_t i = 0; i < s.size();) {
    const unsigned char c0 = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    if (c0 < 0x80) {
      cp = c0;
      i += 1;
    } else if ((c0 & 0xE0) == 0xC0 && i + 1 < s.size() && (static_cast<unsigned char>(s[i + 1]) & 0xC0) == 0x80) {
      cp = ((c0 & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
      i += 2;
    } else {
      return false;
    }
    if (cp >= 0x144 || m.byte_of[cp] < 0) return false;
    out->push_back(static_cast<char>(m.byte_of[cp]));
  }
  return true;
}

bool looks_special(std::string_view s) {
  return s.size() >= 5 && s.substr(0, 2) == "<|" && s.substr(s.size() - 2) == "|>";
}

std::string quote_token(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out + "\"";
}

inline uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct MergeInfo {
  int32_t rank;
  int32_t id;  // the merged token
};

// Open-addressing map from a token pair to its merge: the innermost lookup of
// BPE, where std::unordered_map's node chasing cost a third of encode time.
class MergeTable {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    keys_.assign(cap, kEmpty);
    vals_.assign(cap, MergeInfo{0, 0});
    mask_ = cap - 1;
  }
  // Inserts or overwrites.
  void put(uint64_t key, MergeInfo v) {
    for (size_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
      if (keys_[i] == kEmpty || keys_[i] == key) {
        keys_[i] = key;
        vals_[i] = v;
        return;
      }
    }
  }
  const MergeInfo* find(uint64_t key) const {
    if (keys_.empty()) return nullptr;
    for (size_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &vals_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;  // pair (-1, -1): never a real pair
  static uint64_t mix(uint64_t x) {          // splitmix64's finalizer
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }
  std::vector<uint64_t> keys_;
  std::vector<MergeInfo> vals_;
  size_t mask_ = 0;
};

// Piece -> ids cache in flat arrays (keys and ids in two arenas, slots by
// hash with linear probing): one hash and usually one byte compare per
// lookup, no allocation. Cleared when full rather than evicting, which keeps
// it simple and bounds memory.
class PieceCache {
 public:
  static uint64_t hash(std::string_view s) {  // FNV-1a, then a final mix
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
    h ^= h >> 32;
    return h | 1;  // 0 marks an empty slot
  }
  // The cached ids of `piece`, or nullptr.
  const int32_t* find(std::string_view piece, uint64_t h, uint32_t* n) const {
    if (slots_.empty()) return nullptr;
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.hash == 0) return nullptr;
      if (s.hash == h && s.key_len == piece.size() && std::memcmp(keys_.data() + s.key_off, piece.data(), piece.size()) == 0) {
        *n = s.ids_len;
        return ids_.data() + s.ids_off;
      }
    }
  }
  void insert(std::string_view piece, uint64_t h, const int32_t* ids, size_t n) {
    if (slots_.empty() || 2 * (used_ + 1) > slots_.size()) grow();
    if (keys_.size() + piece.size() > kArenaLimit || ids_.size() + n > kArenaLimit) clear();
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].hash == 0) {
        slots_[i] = Slot{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(piece.size()),
                         static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(n)};
        keys_.append(piece.data(), piece.size());
        ids_.insert(ids_.end(), ids, ids + n);
        ++used_;
        return;
      }
    }
  }
  void clear() {
    slots_.assign(slots_.size(), Slot{});
    keys_.clear();
    ids_.clear();
    used_ = 0;
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_off = 0, key_len = 0, ids_off = 0, ids_len = 0;
  };
  // Bounds memory: a stream of unique pieces clears the cache this often.
  static constexpr size_t kArenaLimit = size_t{1} << 26;
  static constexpr size_t kMaxSlots = size_t{1} << 21;
  void grow() {
    if (slots_.size() >= kMaxSlots) {  // full: start over instead of growing
      clear();
      return;
    }
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.empty() ? 4096 : old.size() * 2, Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.hash == 0) continue;
      for (size_t i = s.hash & mask_;; i = (i + 1) & mask_) {
        if (slots_[i].hash == 0) {
          slots_[i] = s;
          break;
        }
      }
    }
  }
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t used_ = 0;
  size_t mask_ = 0;
};

// Pieces longer than this (in bytes) use the heap strategy; GPT-2's loop is
// O(n²) in the piece length, which a 100 KB run of letters turns into minutes.
constexpr size_t kLongPiece = 64;

}  // namespace

uint32_t gpt2_byte_to_codepoint(uint8_t b) { return byte_map().cp[b]; }
int gpt2_byte_rank(uint8_t b) { return byte_map().rank[b]; }

// ---- the tokenizer --------------------------------------------------------

struct Tokenizer::Impl {
  std::vector<std::string> id_bytes;                    // id -> bytes (special: literal text)
  std::unordered_map<std::string, int32_t> bytes_id;    // ordinary tokens only
  int32_t byte_id[256];
  MergeTable merge_map;                                 // (a, b) -> rank, result
  std::vector<BpeMerge> merges;                         // rank order, bytes
  std::vector<std::pair<std::string, int32_t>> specials;
  PreTokenizer pre;

  mutable std::mutex cache_mu;
  mutable PieceCache cache;

  const MergeInfo* find_merge(int32_t a, int32_t b) const { return merge_map.find(pair_key(a, b)); }

  // Builds merge_map from `merges` and the ids already in bytes_id. `where`
  // names the source for errors ("vocab.bpe" path), with `line_of[r]` the
  // line of merge r (or empty for in-memory merges).
  void index_merges(const std::string& where, const std::vector<int>& line_of) {
    merge_map.reserve(merges.size());
    for (size_t r = 0; r < merges.size(); ++r) {
      const BpeMerge& m = merges[r];
      const std::string joined = m.first + m.second;
      const std::string* parts[3] = {&m.first, &m.second, &joined};
      int32_t ids[3];
      for (int k = 0; k < 3; ++k) {
        auto it = bytes_id.find(*parts[k]);
        if (it == bytes_id.end()) {
          std::ostringstream os;
          os << where;
          if (!line_of.empty()) os << ":" << line_of[r];
          os << ": merge " << quote_token(bytes_to_visible(m.first)) << " + " << quote_token(bytes_to_visible(m.second))
             << ": token " << quote_token(bytes_to_visible(*parts[k])) << " is not in the vocabulary (encoder.json)";
          throw InputError(os.str());
        }
        ids[k] = it->second;
      }
      // A pair listed twice keeps its last rank, as GPT-2's dict(zip(...)) does.
      merge_map.put(pair_key(ids[0], ids[1]), MergeInfo{static_cast<int32_t>(r), ids[2]});
    }
  }

  // The two files must describe one tokenizer: every ordinary token longer
  // than a byte is the result of some merge (GPT-2: 256 bytes + 50000 merge
  // results + 1 special = 50257). A token that no merge produces can never
  // come out of encode(), so a vocab.bpe cut short (or empty, or from another
  // tokenizer) would silently tokenize differently from the vocabulary it is
  // paired with; refuse it with the counts. (The other direction, a merge
  // whose result is not in encoder.json, index_merges already refuses.)
  void check_every_token_merged(const std::string& encoder_json, const std::string& vocab_bpe) const {
    std::vector<char> produced(id_bytes.size(), 0);
    for (const BpeMerge& m : merges) produced[bytes_id.at(m.first + m.second)] = 1;
    size_t longer = 0, orphans = 0;
    int32_t first_orphan = -1;
    for (const auto& [bytes, id] : bytes_id) {
      if (bytes.size() < 2) continue;
      ++longer;
      if (produced[id]) continue;
      ++orphans;
      if (first_orphan < 0 || id < first_orphan) first_orphan = id;
    }
    if (orphans == 0) return;
    std::ostringstream os;
    os << vocab_bpe << ": " << merges.size() << " merge(s), but " << encoder_json << " has " << id_bytes.size()
       << " tokens (256 bytes, " << specials.size() << " special, " << longer << " longer), which need at least "
       << longer << " merges, one producing each longer token; " << orphans
       << " longer token(s) are produced by no merge (the first, id " << first_orphan << ", is "
       << quote_token(bytes_to_visible(id_bytes[first_orphan])) << "): is vocab.bpe truncated or from another tokenizer?";
    throw InputError(os.str());
  }

  void index_bytes(const std::string& where) {
    for (int b = 0; b < 256; ++b) {
      const std::string one(1, static_cast<char>(b));
      auto it = bytes_id.find(one);
      if (it == bytes_id.end()) {
        std::ostringstream os;
        os << where << ": no token for byte 0x" << std::hex << b << " (" << quote_token(bytes_to_visible(one))
           << "); a byte-level vocabulary needs all 256";
        throw InputError(os.str());
      }
      byte_id[b] = it->second;
    }
  }

  // GPT-2's loop: find the lowest-rank adjacent pair, merge all of its
  // occurrences left to right, repeat. O(n²) lookups; fine for short pieces.
  void bpe_simple(std::vector<int32_t>& w) const {
    while (w.size() > 1) {
      int32_t best_rank = INT32_MAX, a = -1, b = -1, c = -1;
      for (size_t i = 0; i + 1 < w.size(); ++i) {
        const MergeInfo* m = find_merge(w[i], w[i + 1]);
        if (m && m->rank < best_rank) {
          best_rank = m->rank;
          a = w[i];
          b = w[i + 1];
          c = m->id;
        }
      }
      if (c < 0) break;
      size_t o = 0;
      for (size_t i = 0; i < w.size();) {
        if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
          w[o++] = c;
          i += 2;
        } else {
          w[o++] = w[i++];
        }
      }
      w.resize(o);
    }
  }

  // The same result in O(n log n): symbols in a linked list, candidate pairs
  // in a min-heap keyed (rank, position). All entries of the lowest rank are
  // taken out together and applied left to right before any pair they create
  // is considered, which is exactly one iteration of GPT-2's loop (a merge
  // can never create its own pair again: the result is longer than both
  // parts).
  void bpe_heap(std::vector<int32_t>& w) const {
    const int n = static_cast<int>(w.size());
    if (n < 2) return;
    std::vector<int> prev(n), next(n);
    std::vector<char> alive(n, 1);
    for (int i = 0; i < n; ++i) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    using Entry = std::pair<int32_t, int>;  // (rank, left position)
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
    auto push = [&](int i) {
      if (i < 0 || next[i] < 0) return;
      if (const MergeInfo* m = find_merge(w[i], w[next[i]])) heap.push({m->rank, i});
    };
    for (int i = 0; i + 1 < n; ++i) push(i);
    std::vector<int> batch;
    while (!heap.empty()) {
      const int32_t rank = heap.top().first;
      batch.clear();
      while (!heap.empty() && heap.top().first == rank) {
        batch.push_back(heap.top().second);
        heap.pop();
      }
      std::sort(batch.begin(), batch.end());
      batch.erase(std::unique(batch.begin(), batch.end()), batch.end());
      for (int i : batch) {
        if (!alive[i] || next[i] < 0) continue;
        const MergeInfo* m = find_merge(w[i], w[next[i]]);
        if (!m || m->rank != rank) continue;  // stale: a neighbour changed
        const int j = next[i];
        w[i] = m->id;
        alive[j] = 0;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        push(prev[i]);
        push(i);
      }
    }
    int o = 0;
    for (int i = 0; i >= 0; i = next[i]) w[o++] = w[i];
    w.resize(o);
  }

  void bpe(std::string_view piece, bool long_word, std::vector<int32_t>* out) const {
    std::vector<int32_t> w(piece.size());
    for (size_t i = 0; i < piece.size(); ++i) w[i] = byte_id[static_cast<unsigned char>(piece[i])];
    if (long_word) bpe_heap(w); else bpe_simple(w);
    out->insert(out->end(), w.begin(), w.end());
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& dir) {
  std::error_code ec;
  KILN_INPUT_CHECK(std::filesystem::is_directory(dir, ec),
                   dir << ": tokenizer directory not found (expected encoder.json and vocab.bpe in it)");
  return load_files(dir + "/encoder.json", dir + "/vocab.bpe");
}

Tokenizer Tokenizer::load_files(const std::string& encoder_json, const std::string& vocab_bpe) {
  auto impl = std::make_unique<Impl>();

  // vocab.bpe first: which encoder.json entries are merge results decides
  // which "<|...|>" entries are special.
  const std::string bpe_text = read_file(vocab_bpe);
  std::vector<int> line_of;
  {
    size_t pos = 0;
    int line = 0;
    std::string a, b;
    while (pos < bpe_text.size()) {
      size_t end = bpe_text.find('\n', pos);
      if (end == std::string::npos) end = bpe_text.size();
      std::string_view l(bpe_text.data() + pos, end - pos);
      pos = end + 1;
      ++line;
      if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
      if (l.empty()) continue;
      if (line == 1 && l[0] == '#') continue;  // "#version: 0.2"
      const size_t sp = l.find(' ');
      KILN_INPUT_CHECK(sp != std::string_view::npos && sp > 0 && sp + 1 < l.size() &&
                           l.find(' ', sp + 1) == std::string_view::npos,
                       vocab_bpe << ":" << line << ": expected two tokens separated by one space, got "
                                 << quote_token(l));
      KILN_INPUT_CHECK(visible_to_bytes(l.substr(0, sp), &a) && visible_to_bytes(l.substr(sp + 1), &b),
                       vocab_bpe << ":" << line << ": " << quote_token(l)
                                 << " has a character outside GPT-2's byte-to-unicode map");
      impl->merges.emplace_back(a, b);
      line_of.push_back(line);
    }
  }
  std::unordered_set<std::string> produced;
  for (const BpeMerge& m : impl->merges) produced.insert(m.first + m.second);

  const std::string json_text = read_file(encoder_json);
  // A SAX pass: building nlohmann's DOM (a std::map of 50K strings) took most
  // of the load time.
  struct Sax : nlohmann::json_sax<nlohmann::json> {
    std::vector<std::pair<std::string, int64_t>> entries;
    std::string key_, error;
    int depth = 0;
    bool fail(const std::string& why) {
      if (error.empty()) error = why;
      return false;
    }
    bool null() override { return fail("token " + quote_token(key_) + " has id null"); }
    bool boolean(bool) override { return fail("token " + quote_token(key_) + " has a boolean id"); }
    bool number_integer(number_integer_t v) override {
      if (depth != 1) return fail("a number outside the top-level object");
      entries.emplace_back(key_, v);
      return true;
    }
    bool number_unsigned(number_unsigned_t v) override {
      return number_integer(v > static_cast<number_unsigned_t>(INT64_MAX) ? -1 : static_cast<int64_t>(v));
    }
    bool number_float(number_float_t, const string_t& s) override {
      return fail("token " + quote_token(key_) + " has id " + s + ", not an integer");
    }
    bool string(string_t&) override { return fail("token " + quote_token(key_) + " has a string id"); }
    bool binary(binary_t&) override { return fail("binary value"); }
    bool start_object(std::size_t) override {
      return ++depth == 1 ? true : fail("token " + quote_token(key_) + " has an object as id");
    }
    bool end_object() override {
      --depth;
      return true;
    }
    bool start_array(std::size_t) override {
      return fail(depth == 0 ? std::string("the top level is an array") : "token " + quote_token(key_) + " has an array as id");
    }
    bool end_array() override { return true; }
    bool key(string_t& k) override {
      key_ = k;
      return true;
    }
    bool parse_error(std::size_t pos, const std::string&, const nlohmann::detail::exception& e) override {
      return fail("not valid JSON (byte " + std::to_string(pos) + "): " + e.what());
    }
  } sax;
  bool parsed = false;
  try {
    parsed = nlohmann::json::sax_parse(json_text, &sax);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(encoder_json + ": not valid JSON: " + e.what());
  }
  KILN_INPUT_CHECK(parsed && sax.error.empty(),
                   encoder_json << ": " << (sax.error.empty() ? "not a JSON object" : sax.error)
                                << "; expected a JSON object mapping each token to its id");
  KILN_INPUT_CHECK(!sax.entries.empty(), encoder_json << ": expected a JSON object mapping each token to its id, got "
                                                      << "no entries");
  const size_t n = sax.entries.size();
  impl->id_bytes.assign(n, std::string());
  std::vector<char> seen(n, 0);
  std::string bytes;
  for (const auto& [key, v] : sax.entries) {
    KILN_INPUT_CHECK(v >= 0 && v < static_cast<int64_t>(n),
                     encoder_json << ": token " << quote_token(key) << " has id " << v << "; expected an integer in [0, "
                                  << n << ") (ids must be 0..N-1)");
    const auto id = static_cast<int32_t>(v);
    KILN_INPUT_CHECK(!seen[id], encoder_json << ": id " << id << " is given to two tokens, the second "
                                             << quote_token(key));
    seen[id] = 1;
    const bool decodable = visible_to_bytes(key, &bytes);
    // "<|endoftext|>" is all printable ASCII, so it decodes like any token;
    // what makes it special is that no merge produces it.
    const bool special = looks_special(key) && (!decodable || !produced.count(bytes));
    if (special) {
      impl->id_bytes[id] = key;
      impl->specials.emplace_back(key, id);
    } else {
      KILN_INPUT_CHECK(decodable, encoder_json << ": token " << quote_token(key)
                                               << " has a character outside GPT-2's byte-to-unicode map");
      KILN_INPUT_CHECK(impl->bytes_id.emplace(bytes, id).second,
                       encoder_json << ": token " << quote_token(key) << " appears twice");
      impl->id_bytes[id] = bytes;
    }
  }
  std::sort(impl->specials.begin(), impl->specials.end(),
            [](const auto& x, const auto& y) { return x.second < y.second; });
  impl->index_bytes(encoder_json);
  impl->index_merges(vocab_bpe, line_of);
  impl->check_every_token_merged(encoder_json, vocab_bpe);
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_merges(const std::vector<BpeMerge>& merges, const std::vector<std::string>& specials) {
  auto impl = std::make_unique<Impl>();
  for (int b = 0; b < 256; ++b) impl->id_bytes.emplace_back();
  for (int b = 0; b < 256; ++b) {
    const int r = gpt2_byte_rank(static_cast<uint8_t>(b));
    impl->id_bytes[r] = std::string(1, static_cast<char>(b));
    impl->bytes_id.emplace(impl->id_bytes[r], r);
  }
  for (const BpeMerge& m : merges) {
    KILN_CHECK(!m.first.empty() && !m.second.empty(), "a BPE merge has an empty part");
    std::string joined = m.first + m.second;
    if (!impl->bytes_id.count(joined)) {
      impl->bytes_id.emplace(joined, static_cast<int32_t>(impl->id_bytes.size()));
      impl->id_bytes.push_back(std::move(joined));
    }
  }
  for (const std::string& s : specials) {
    KILN_INPUT_CHECK(looks_special(s), "special token " << quote_token(s) << " must look like \"<|name|>\"");
    for (const auto& [t, id] : impl->specials) KILN_INPUT_CHECK(t != s, "special token " << quote_token(s) << " given twice");
    impl->specials.emplace_back(s, static_cast<int32_t>(impl->id_bytes.size()));
    impl->id_bytes.push_back(s);
  }
  impl->merges = merges;
  impl->index_bytes("from_merges");
  impl->index_merges("from_merges", {});
  return Tokenizer(std::move(impl));
}

void Tokenizer::save(const std::string& dir) const {
  make_directories(dir);
  const Impl& im = *impl_;
  std::vector<char> is_special(im.id_bytes.size(), 0);
  for (const auto& s : im.specials) is_special[s.second] = 1;
  // ordered_json keeps id order, so the file reads like GPT-2's.
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (size_t id = 0; id < im.id_bytes.size(); ++id)
    j[is_special[id] ? im.id_bytes[id] : bytes_to_visible(im.id_bytes[id])] = id;
  write_file_atomic(dir + "/encoder.json", j.dump(-1, ' ', /*ensure_ascii=*/true));

  std::string bpe = "#version: 0.2\n";
  for (const BpeMerge& m : im.merges) {
    bpe += bytes_to_visible(m.first);
    bpe += ' ';
    bpe += bytes_to_visible(m.second);
    bpe += '\n';
  }
  write_file_atomic(dir + "/vocab.bpe", bpe);
}

void Tokenizer::encode_ordinary(std::string_view text, std::vector<int32_t>* out) const {
  const Impl& im = *impl_;
  im.pre.split(text, [&](std::string_view piece) {
    if (piece.size() == 1) {
      out->push_back(im.byte_id[static_cast<unsigned char>(piece[0])]);
      return;
    }
    const uint64_t h = PieceCache::hash(piece);
    {
      std::lock_guard<std::mutex> lock(im.cache_mu);
      uint32_t n = 0;
      if (const int32_t* ids = im.cache.find(piece, h, &n)) {
        out->insert(out->end(), ids, ids + n);
        return;
      }
    }
    const size_t before = out->size();
    im.bpe(piece, piece.size() > kLongPiece, out);
    std::lock_guard<std::mutex> lock(im.cache_mu);
    im.cache.insert(piece, h, out->data() + before, out->size() - before);
  });
}

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>* out, bool allow_special) const {
  const Impl& im = *impl_;
  if (!allow_special || im.specials.empty()) {
    encode_ordinary(text, out);
    return;
  }
  // Cut at the earliest special-token text (the longest one where two start
  // at the same byte), encode the text between as ordinary text.
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string_view::npos, best_len = 0;
    int32_t best_id = -1;
    for (const auto& [s, id] : im.specials) {
      const size_t f = text.find(s, pos);
      if (f != std::string_view::npos && (f < best || (f == best && s.size() > best_len))) {
        best = f;
        best_len = s.size();
        best_id = id;
      }
    }
    if (best == std::string_view::npos) {
      encode_ordinary(text.substr(pos), out);
      return;
    }
    if (best > pos) encode_ordinary(text.substr(pos, best - pos), out);
    out->push_back(best_id);
    pos = best + best_len;
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  encode_append(text, &out, allow_special);
  return out;
}

std::string Tokenizer::decode(const int32_t* ids, size_t n) const {
  const Impl& im = *impl_;
  const auto v = static_cast<int32_t>(im.id_bytes.size());
  size_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    KILN_INPUT_CHECK(ids[i] >= 0 && ids[i] < v,
                     "token id " << ids[i] << " at position " << i << " is outside the vocabulary [0, " << v << ")");
    total += im.id_bytes[ids[i]].size();
  }
  std::string out;
  out.reserve(total);
  for (size_t i = 0; i < n; ++i) out += im.id_bytes[ids[i]];
  return out;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_bytes.size()); }

const std::string& Tokenizer::token_bytes(int32_t id) const {
  KILN_CHECK(id >= 0 && id < vocab_size(), "token id " << id << " outside [0, " << vocab_size() << ")");
  return impl_->id_bytes[id];
}

int32_t Tokenizer::special_id(std::string_view text) const {
  for (const auto& [s, id] : impl_->specials)
    if (s == text) return id;
  return -1;
}

const std::vector<BpeMerge>& Tokenizer::merges() const { return impl_->merges; }

std::vector<std::string> Tokenizer::specials() const {
  std::vector<std::string> out;
  for (const auto& s : impl_->specials) out.push_back(s.first);
  return out;
}

namespace detail {
void bpe_piece(const Tokenizer& tok, std::string_view piece, bool long_word, std::vector<int32_t>* out) {
  tok.impl_->bpe(piece, long_word, out);
}
}  // namespace detail

}  // namespace kiln

#include "data/bpe_train.h"

#include <algorithm>
#include <queue>
#include <unordered_map>

#include "data/pretokenize.h"
#include "runtime/error.h"

namespace kiln {

namespace {

inline uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}
inline int32_t key_left(uint64_t k) { return static_cast<int32_t>(k >> 32); }
inline int32_t key_right(uint64_t k) { return static_cast<int32_t>(k & 0xFFFFFFFFu); }

struct HeapEntry {
  int64_t count;
  int32_t a, b;
};

// Calls fn(part) for the text between occurrences of any special token.
template <typename Fn>
void for_each_ordinary_part(std::string_view text, const std::vector<std::string>& specials, Fn&& fn) {
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t best = std::string_view::npos, best_len = 0;
    for (const std::string& s : specials) {
      const size_t f = text.find(s, pos);
      if (f != std::string_view::npos && (f < best || (f == best && s.size() > best_len))) {
        best = f;
        best_len = s.size();
      }
    }
    if (best == std::string_view::npos) {
      if (pos < text.size()) fn(text.substr(pos));
      return;
    }
    if (best > pos) fn(text.substr(pos, best - pos));
    pos = best + best_len;
  }
}

}  // namespace

std::vector<BpeMerge> learn_bpe_merges(std::string_view text, int vocab_size, const std::vector<std::string>& specials,
                                       BpeTrainStats* stats) {
  const int min_vocab = 256 + static_cast<int>(specials.size());
  KILN_INPUT_CHECK(vocab_size >= min_vocab, "BPE vocabulary size " << vocab_size << " is too small: a byte-level "
                                                                   << "vocabulary needs at least 256 + "
                                                                   << specials.size() << " special = " << min_vocab);
  KILN_INPUT_CHECK(vocab_size <= (1 << 30), "BPE vocabulary size " << vocab_size << " is too large");
  const int target = vocab_size - static_cast<int>(specials.size());  // bytes + distinct merge results
  BpeTrainStats st;

  // 1. Distinct pieces and their counts.
  std::unordered_map<std::string, int64_t> counts;
  {
    PreTokenizer pre;
    for_each_ordinary_part(text, specials, [&](std::string_view part) {
      pre.split(part, [&](std::string_view piece) {
        ++counts[std::string(piece)];
        ++st.pieces;
      });
    });
  }
  // Sorted, so nothing below depends on hash order.
  std::vector<std::pair<std::string, int64_t>> pieces(counts.begin(), counts.end());
  counts.clear();
  std::sort(pieces.begin(), pieces.end());
  st.unique_pieces = static_cast<int64_t>(pieces.size());

  // 2. Symbols: ids 0..255 are the bytes themselves (internal numbering; the
  // tokenizer assigns GPT-2's ids when it is built from the merges).
  std::vector<std::string> sym_bytes;
  std::unordered_map<std::string, int32_t> sym_of;
  for (int b = 0; b < 256; ++b) {
    sym_bytes.emplace_back(1, static_cast<char>(b));
    sym_of.emplace(sym_bytes.back(), b);
  }
  std::vector<std::vector<int32_t>> words(pieces.size());
  std::vector<int64_t> freq(pieces.size());
  for (size_t w = 0; w < pieces.size(); ++w) {
    const std::string& p = pieces[w].first;
    words[w].reserve(p.size());
    for (unsigned char c : p) words[w].push_back(c);
    freq[w] = pieces[w].second;
  }
  pieces.clear();
  pieces.shrink_to_fit();

  // 3. Pair counts and where each pair occurs (word indices; may repeat, and
  // may go stale, both checked when used).
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& wd = words[w];
    for (size_t i = 0; i + 1 < wd.size(); ++i) {
      const uint64_t k = pair_key(wd[i], wd[i + 1]);
      pair_count[k] += freq[w];
      auto& lst = where[k];
      if (lst.empty() || lst.back() != static_cast<int32_t>(w)) lst.push_back(static_cast<int32_t>(w));
    }
  }

  // Max-heap on (count, then smaller bytes). Entries go stale when a count
  // drops; an entry is trusted only if it matches the current count, else it
  // is re-pushed with the current one. Every increase is pushed at once, so
  // each live pair always has an entry >= its count and the first trusted
  // entry popped is the true best.
  auto lower_priority = [&](const HeapEntry& x, const HeapEntry& y) {
    if (x.count != y.count) return x.count < y.count;
    const int c = sym_bytes[x.a].compare(sym_bytes[y.a]);
    if (c != 0) return c > 0;
    return sym_bytes[x.b].compare(sym_bytes[y.b]) > 0;
  };
  std::priority_queue<HeapEntry, std::vector<HeapEntry>, decltype(lower_priority)> heap(lower_priority);
  for (const auto& [k, n] : pair_count) heap.push({n, key_left(k), key_right(k)});

  std::vector<BpeMerge> merges;
  int n_tokens = 256;
  std::vector<int32_t> stamp(words.size(), -1);
  std::vector<uint64_t> increased;
  std::vector<int32_t> out;

  auto add = [&](int32_t x, int32_t y, int64_t delta, int32_t w) {
    const uint64_t k = pair_key(x, y);
    auto it = pair_count.find(k);
    if (it == pair_count.end()) it = pair_count.emplace(k, 0).first;
    it->second += delta;
    if (delta > 0) {
      auto& lst = where[k];
      if (lst.empty() || lst.back() != w) lst.push_back(w);
      increased.push_back(k);
    } else if (it->second == 0) {
      pair_count.erase(it);
    }
  };

  while (n_tokens < target) {
    if (heap.empty()) {
      st.ran_out = true;
      break;
    }
    const HeapEntry top = heap.top();
    heap.pop();
    const uint64_t key = pair_key(top.a, top.b);
    auto pc = pair_count.find(key);
    const int64_t current = pc == pair_count.end() ? 0 : pc->second;
    if (current != top.count) {
      if (current > 0) heap.push({current, top.a, top.b});
      continue;
    }
    const int32_t a = top.a, b = top.b;
    std::string joined = sym_bytes[a] + sym_bytes[b];
    int32_t c;
    auto found = sym_of.find(joined);
    if (found != sym_of.end()) {  // reached before by another pair of parts
      c = found->second;
    } else {
      c = static_cast<int32_t>(sym_bytes.size());
      sym_of.emplace(joined, c);
      sym_bytes.push_back(std::move(joined));
      ++n_tokens;
    }
    merges.emplace_back(sym_bytes[a], sym_bytes[b]);
    const auto merge_index = static_cast<int32_t>(merges.size());

    std::vector<int32_t> lst = std::move(where[key]);
    where.erase(key);
    increased.clear();
    for (int32_t w : lst) {
      if (stamp[w] == merge_index) continue;
      stamp[w] = merge_index;
      auto& wd = words[w];
      const int64_t f = freq[w];
      // Left to right, non-overlapping, as encoding will do. Neighbours are
      // the already-updated left symbol and the not-yet-visited right one,
      // so runs such as "a a a a" with pair (a, a) count correctly.
      out.clear();
      bool changed = false;
      for (size_t i = 0; i < wd.size();) {
        if (i + 1 < wd.size() && wd[i] == a && wd[i + 1] == b) {
          if (!out.empty()) {
            add(out.back(), a, -f, w);
            add(out.back(), c, f, w);
          }
          if (i + 2 < wd.size()) {
            add(b, wd[i + 2], -f, w);
            add(c, wd[i + 2], f, w);
          }
          add(a, b, -f, w);
          out.push_back(c);
          i += 2;
          changed = true;
        } else {
          out.push_back(wd[i]);
          ++i;
        }
      }
      if (changed) wd.assign(out.begin(), out.end());
    }
    std::sort(increased.begin(), increased.end());
    increased.erase(std::unique(increased.begin(), increased.end()), increased.end());
    for (uint64_t k : increased) {
      auto it = pair_count.find(k);
      if (it != pair_count.end() && it->second > 0) heap.push({it->second, key_left(k), key_right(k)});
    }
  }
  st.merges = static_cast<int64_t>(merges.size());
  if (stats) *stats = st;
  return merges;
}

Tokenizer train_bpe(std::string_view text, int vocab_size, const std::vector<std::string>& specials,
                    BpeTrainStats* stats) {
  return Tokenizer::from_merges(learn_bpe_merges(text, vocab_size, specials, stats), specials);
}

}  // namespace kiln

#include "data/token_loader.h"

#include <algorithm>
#include <utility>

#include "runtime/error.h"
#include "runtime/philox.h"

namespace kiln {

namespace {

// Philox key for the loader's draws, apart from other users of the same seed.
uint64_t loader_key(uint64_t seed) { return seed ^ 0x6b696c6e4c6f6164ull; /* "kilnLoad" */ }

// 64 random bits for draw i of an epoch (counter = epoch·2^32 + i).
uint64_t draw64(uint64_t key, uint64_t epoch, uint64_t i) {
  const Philox4 r = philox4x32(key, (epoch << 32) | i);
  return (static_cast<uint64_t>(r.v[1]) << 32) | r.v[0];
}

struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(uint64_t v) {
    for (int i = 0; i < 8; ++i) h = (h ^ ((v >> (8 * i)) & 0xFF)) * 0x100000001b3ull;
  }
};

}  // namespace

TokenLoader::TokenLoader(const std::vector<std::string>& shard_paths, const TokenLoaderOptions& opt) : opt_(opt) {
  KILN_INPUT_CHECK(!shard_paths.empty(), "token loader: no shards given");
  KILN_INPUT_CHECK(opt.batch >= 1, "token loader: batch " << opt.batch << ", expected >= 1");
  KILN_INPUT_CHECK(opt.seq_len >= 1, "token loader: sequence length " << opt.seq_len << ", expected >= 1");
  KILN_INPUT_CHECK(opt.world >= 1 && opt.rank >= 0 && opt.rank < opt.world,
                   "token loader: rank " << opt.rank << " of world " << opt.world << ", expected 0 <= rank < world");
  const int64_t T = opt.seq_len;
  windows_before_.push_back(0);
  Fnv fp;
  for (const std::string& p : shard_paths) {
    shards_.emplace_back(p);
    if (opt.vocab_size > 0) shards_.back().check_ids(opt.vocab_size);
    const auto n = static_cast<int64_t>(shards_.back().size());
    num_tokens_ += n;
    // Random order keeps T tokens of slack so every phase fits the same count.
    const int64_t w = opt.shuffle ? (n >= T ? (n - T) / T : 0) : (n >= 1 ? (n - 1) / T : 0);
    windows_before_.push_back(windows_before_.back() + w);
    fp.add(static_cast<uint64_t>(n));
  }
  total_windows_ = windows_before_.back();
  const int64_t global = opt.batch * opt.world;
  KILN_INPUT_CHECK(total_windows_ >= global,
                   "token loader: the shards (" << shard_paths.front() << (shard_paths.size() > 1 ? ", ..." : "")
                                                << ": " << num_tokens_ << " tokens) hold " << total_windows_
                                                << " windows of " << T + 1 << " tokens, fewer than one global batch of "
                                                << opt.batch << " x " << opt.world << " rank(s)");
  KILN_INPUT_CHECK(total_windows_ < (int64_t{1} << 32), "token loader: " << total_windows_
                                                                        << " windows per epoch; at most 2^32 supported");
  steps_per_epoch_ = total_windows_ / global;
  fp.add(static_cast<uint64_t>(opt.batch));
  fp.add(static_cast<uint64_t>(T));
  fp.add(static_cast<uint64_t>(opt.world));
  fp.add(opt.seed);
  fp.add(opt.shuffle ? 1 : 0);
  fingerprint_ = fp.h;
  start_epoch(0);
}

void TokenLoader::start_epoch(uint64_t epoch) {
  epoch_ = epoch;
  step_ = 0;
  if (!opt_.shuffle) {
    phase_ = 0;
    order_.clear();
    return;
  }
  const uint64_t key = loader_key(opt_.seed);
  phase_ = static_cast<int64_t>(draw64(key, epoch, 0) % static_cast<uint64_t>(opt_.seq_len));
  const auto W = static_cast<uint32_t>(total_windows_);
  order_.resize(W);
  for (uint32_t i = 0; i < W; ++i) order_[i] = i;
  // Fisher-Yates with our own draws: std::shuffle and the std distributions
  // differ between standard libraries. (64-bit draw mod (i+1): the bias is
  // below W / 2^64, far under anything measurable.)
  for (uint32_t i = W - 1; i > 0; --i) {
    const auto j = static_cast<uint32_t>(draw64(key, epoch, i) % (static_cast<uint64_t>(i) + 1));
    std::swap(order_[i], order_[j]);
  }
}

void TokenLoader::locate(int64_t w, size_t* shard, int64_t* start) const {
  const int64_t idx = opt_.shuffle ? static_cast<int64_t>(order_[static_cast<size_t>(w)]) : w;
  // First shard whose prefix sum exceeds idx.
  const auto it = std::upper_bound(windows_before_.begin(), windows_before_.end(), idx);
  const auto s = static_cast<size_t>(it - windows_before_.begin()) - 1;
  *shard = s;
  *start = phase_ + (idx - windows_before_[s]) * opt_.seq_len;
}

void TokenLoader::next(int32_t* x, int32_t* y) {
  const int64_t B = opt_.batch, T = opt_.seq_len;
  // This rank's block of the global batch.
  const int64_t base = static_cast<int64_t>(step_) * B * opt_.world + opt_.rank * B;
  for (int64_t b = 0; b < B; ++b) {
    size_t s;
    int64_t start;
    locate(base + b, &s, &start);
    const uint16_t* tok = shards_[s].data() + start;  // T + 1 tokens
    int32_t* xr = x + b * T;                          // (B, T) row b
    int32_t* yr = y + b * T;
    for (int64_t t = 0; t < T; ++t) {
      xr[t] = tok[t];
      yr[t] = tok[t + 1];
    }
  }
  if (++step_ == static_cast<uint64_t>(steps_per_epoch_)) start_epoch(epoch_ + 1);
}

LoaderPosition TokenLoader::position() const { return LoaderPosition{epoch_, step_, fingerprint_}; }

void TokenLoader::set_position(const LoaderPosition& p) {
  KILN_INPUT_CHECK(p.fingerprint == fingerprint_,
                   "token loader: the saved position is from a different data setup (shards, batch, sequence "
                   "length, world size, seed or order changed since it was saved)");
  KILN_INPUT_CHECK(p.step < static_cast<uint64_t>(steps_per_epoch_),
                   "token loader: saved step " << p.step << " is past the end of an epoch (" << steps_per_epoch_
                                               << " steps)");
  if (p.epoch != epoch_ || (opt_.shuffle && order_.empty())) start_epoch(p.epoch);
  step_ = p.step;
}

}  // namespace kiln

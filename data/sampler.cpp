#include "data/sampler.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "runtime/error.h"
#include "runtime/philox.h"

namespace kiln {

namespace {

// Counter layout: stream in the top 24 bits, draw index in the low 40.
constexpr int kStreamShift = 40;
constexpr uint64_t kMaxStream = (uint64_t{1} << (64 - kStreamShift)) - 1;

/// splitmix64's finalizer: a bijective mix, so distinct seeds stay distinct.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Domain tag so the sampler's Philox key is not the raw seed other
// subsystems use ("SAMPLER" in ASCII).
constexpr uint64_t kSamplerTag = 0x53414D504C4552ull;

}  // namespace

CounterRng::CounterRng(uint64_t seed, uint64_t stream) : key_(mix64(seed ^ kSamplerTag)) {
  KILN_CHECK(stream <= kMaxStream, "CounterRng: stream " << stream << " exceeds " << kMaxStream);
  counter_ = stream << kStreamShift;
}

uint64_t CounterRng::next_u64() {
  if (used_ >= 4) {
    const Philox4 r = philox4x32(key_, counter_++);
    for (int i = 0; i < 4; ++i) words_[i] = r.v[i];
    used_ = 0;
  }
  const uint64_t lo = words_[used_], hi = words_[used_ + 1];
  used_ += 2;
  return (hi << 32) | lo;
}

uint64_t CounterRng::below(uint64_t n) {
  KILN_CHECK(n >= 1, "CounterRng::below(0)");
  // Reject the lowest (2^64 mod n) values so every residue is equally likely.
  const uint64_t threshold = (0 - n) % n;
  uint64_t r = next_u64();
  while (r < threshold) r = next_u64();
  return r % n;
}

std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed, uint64_t stream) {
  KILN_CHECK(n >= 0 && n < (int64_t{1} << 38), "seeded_permutation: n = " << n);
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), int64_t{0});
  CounterRng rng(seed, stream);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

DistributedSampler::DistributedSampler(SamplerOptions opt) : opt_(std::move(opt)) {
  KILN_CHECK(opt_.size >= 0, "sampler: negative dataset size " << opt_.size);
  KILN_CHECK(opt_.batch_size >= 1, "sampler: batch_size " << opt_.batch_size);
  KILN_CHECK(opt_.world >= 1 && opt_.rank >= 0 && opt_.rank < opt_.world,
             "sampler: rank " << opt_.rank << " of world " << opt_.world);
  if (opt_.drop_last && opt_.size < global_batch())
    throw InputError(opt_.what + ": " + std::to_string(opt_.size) + " samples do not fill one global batch of " +
                     std::to_string(global_batch()) + " (batch_size " + std::to_string(opt_.batch_size) + " x " +
                     std::to_string(opt_.world) + " processes)");
  build_order();
}

void DistributedSampler::build_order() {
  if (opt_.shuffle) {
    order_ = seeded_permutation(opt_.size, opt_.seed, epoch_);
  } else {
    order_.resize(static_cast<size_t>(opt_.size));
    std::iota(order_.begin(), order_.end(), int64_t{0});
  }
}

int64_t DistributedSampler::batches_per_epoch() const {
  const int64_t g = global_batch();
  return opt_.drop_last ? opt_.size / g : (opt_.size + g - 1) / g;
}

void DistributedSampler::set_epoch(uint64_t e) {
  const bool rebuild = e != epoch_ && opt_.shuffle;
  epoch_ = e;
  position_ = 0;
  if (rebuild) build_order();
}

void DistributedSampler::restore(const SamplerState& s) {
  if (s.position < 0 || s.position > opt_.size)
    throw InputError(opt_.what + ": saved sampler position " + std::to_string(s.position) +
                     " does not fit a dataset of " + std::to_string(opt_.size) +
                     " samples (was the checkpoint made with different data?)");
  const bool rebuild = s.epoch != epoch_ && opt_.shuffle;
  epoch_ = s.epoch;
  position_ = s.position;
  if (rebuild) build_order();
}

bool DistributedSampler::next(Batch* out) {
  const int64_t g = global_batch();
  const int64_t left = opt_.size - position_;
  if (left <= 0 || (opt_.drop_last && left < g)) return false;
  const int64_t n = std::min(left, g);
  int64_t begin, count;
  if (n == g) {
    begin = opt_.rank * opt_.batch_size;
    count = opt_.batch_size;
  } else {
    // Ragged last batch: as even as possible, earlier ranks get the extra one.
    const int64_t base = n / opt_.world, extra = n % opt_.world;
    begin = opt_.rank * base + std::min<int64_t>(opt_.rank, extra);
    count = base + (opt_.rank < extra ? 1 : 0);
  }
  out->indices.assign(order_.begin() + position_ + begin, order_.begin() + position_ + begin + count);
  out->global_size = n;
  out->epoch = epoch_;
  out->step = position_ / g;
  position_ += n;
  return true;
}

}  // namespace kiln

#include "data/sft_loader.h"

#include <algorithm>
#include <numeric>

#include "data/sampler.h"
#include "kernels/cross_entropy.h"  // kIgnoreIndex
#include "runtime/error.h"

namespace kiln {

namespace {

struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(uint64_t v) {
    for (int i = 0; i < 8; ++i) h = (h ^ ((v >> (8 * i)) & 0xFF)) * 0x100000001b3ull;
  }
};

// Epoch e draws its example order from stream 2e and its row order from
// stream 2e + 1; CounterRng takes streams below 2^24.
constexpr uint64_t kMaxEpoch = (uint64_t{1} << 23) - 1;

}  // namespace

SftPacking pack_first_fit(const std::vector<int64_t>& lengths, const std::vector<int64_t>& order, int64_t capacity) {
  KILN_CHECK(capacity >= 1, "pack_first_fit: capacity " << capacity);
  SftPacking p;
  const auto n = static_cast<int64_t>(order.size());
  if (n == 0) return p;
  // A max-tree over at most n rows holding each row's free positions; rows
  // not opened yet are empty (free = capacity), so "the leftmost row with
  // free >= L" is the first open row that fits, or else the next new one.
  int64_t leaves = 1;
  while (leaves < n) leaves *= 2;
  std::vector<int64_t> free_(static_cast<size_t>(2 * leaves), capacity);
  std::vector<std::vector<int64_t>> rows;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t e = order[static_cast<size_t>(i)];
    const int64_t L = lengths[static_cast<size_t>(e)];
    KILN_CHECK(L >= 1 && L <= capacity, "pack_first_fit: example " << e << " has length " << L << ", capacity "
                                                                   << capacity);
    int64_t node = 1;
    while (node < leaves) node = free_[static_cast<size_t>(2 * node)] >= L ? 2 * node : 2 * node + 1;
    const int64_t row = node - leaves;
    if (row == static_cast<int64_t>(rows.size())) rows.emplace_back();
    rows[static_cast<size_t>(row)].push_back(e);
    free_[static_cast<size_t>(node)] -= L;
    for (node /= 2; node >= 1; node /= 2)
      free_[static_cast<size_t>(node)] =
          std::max(free_[static_cast<size_t>(2 * node)], free_[static_cast<size_t>(2 * node + 1)]);
  }
  p.examples.reserve(static_cast<size_t>(n));
  for (const auto& r : rows) {
    p.examples.insert(p.examples.end(), r.begin(), r.end());
    p.row_offsets.push_back(static_cast<int64_t>(p.examples.size()));
  }
  return p;
}

SftPacking pack_one_per_row(const std::vector<int64_t>& order) {
  SftPacking p;
  p.examples = order;
  p.row_offsets.resize(order.size() + 1);
  std::iota(p.row_offsets.begin(), p.row_offsets.end(), int64_t{0});
  return p;
}

SftLoader::SftLoader(const SftDataset& data, const SftLoaderOptions& opt) : data_(data), opt_(opt) {
  KILN_INPUT_CHECK(opt.batch >= 1, "sft loader: batch " << opt.batch << ", expected >= 1");
  KILN_INPUT_CHECK(opt.seq_len >= 1, "sft loader: sequence length " << opt.seq_len << ", expected >= 1");
  KILN_INPUT_CHECK(opt.world >= 1 && opt.rank >= 0 && opt.rank < opt.world,
                   "sft loader: rank " << opt.rank << " of world " << opt.world << ", expected 0 <= rank < world");
  KILN_INPUT_CHECK(opt.pad_id >= 0, "sft loader: pad id " << opt.pad_id);
  KILN_INPUT_CHECK(data.size() > 0, data.source() << ": no examples");
  for (int64_t i = 0; i < data.size(); ++i)
    KILN_INPUT_CHECK(data.length(i) <= opt.seq_len, data.source() << ": example from line " << data.record(i).line
                                                                  << " uses " << data.length(i)
                                                                  << " positions, more than a window of "
                                                                  << opt.seq_len);
  Fnv fp;
  fp.add(data.fingerprint());
  fp.add(static_cast<uint64_t>(opt.batch));
  fp.add(static_cast<uint64_t>(opt.seq_len));
  fp.add(static_cast<uint64_t>(opt.world));
  fp.add(opt.seed);
  fp.add((opt.pack ? 1u : 0u) | (opt.shuffle ? 2u : 0u));
  fp.add(static_cast<uint64_t>(static_cast<uint32_t>(opt.pad_id)));
  fingerprint_ = fp.h;
  start_epoch(0);
}

void SftLoader::check_trainable() const {
  KILN_INPUT_CHECK(steps_per_epoch() >= 1, data_.source() << ": " << data_.size() << " examples make "
                                                          << rows_per_epoch() << " rows of " << opt_.seq_len
                                                          << ", fewer than one global batch of " << opt_.batch
                                                          << " x " << opt_.world << " rank(s)");
}

void SftLoader::start_epoch(uint64_t e) {
  KILN_INPUT_CHECK(e <= kMaxEpoch, "sft loader: epoch " << e << " beyond " << kMaxEpoch);
  epoch_ = e;
  step_ = 0;
  const int64_t n = data_.size();
  std::vector<int64_t> order;
  if (opt_.shuffle) {
    order = seeded_permutation(n, opt_.seed, 2 * e);
  } else {
    order.resize(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t{0});
  }
  if (!opt_.pack) {
    plan_ = pack_one_per_row(order);
  } else {
    SftPacking packed = pack_first_fit(data_.lengths(), order, opt_.seq_len);
    if (opt_.shuffle) {
      const std::vector<int64_t> rows = seeded_permutation(packed.rows(), opt_.seed, 2 * e + 1);
      plan_ = SftPacking{};
      plan_.examples.reserve(packed.examples.size());
      for (const int64_t r : rows) {
        const auto b = packed.examples.begin() + packed.row_offsets[static_cast<size_t>(r)];
        const auto en = packed.examples.begin() + packed.row_offsets[static_cast<size_t>(r) + 1];
        plan_.examples.insert(plan_.examples.end(), b, en);
        plan_.row_offsets.push_back(static_cast<int64_t>(plan_.examples.size()));
      }
    } else {
      plan_ = std::move(packed);
    }
  }
  row_targets_.assign(static_cast<size_t>(plan_.rows()), 0);
  row_real_.assign(static_cast<size_t>(plan_.rows()), 0);
  for (int64_t r = 0; r < plan_.rows(); ++r)
    for (int64_t k = plan_.row_offsets[static_cast<size_t>(r)]; k < plan_.row_offsets[static_cast<size_t>(r) + 1];
         ++k) {
      const int64_t ex = plan_.examples[static_cast<size_t>(k)];
      row_targets_[static_cast<size_t>(r)] += data_.targets(ex);
      row_real_[static_cast<size_t>(r)] += data_.length(ex);
    }
}

int64_t SftLoader::steps_per_epoch(bool ragged) const {
  const int64_t g = opt_.batch * opt_.world;
  return ragged ? (plan_.rows() + g - 1) / g : plan_.rows() / g;
}

void SftLoader::fill_row(int64_t row, int32_t* tok, int32_t* tgt, int32_t* seg, int32_t* pos,
                         std::vector<int64_t>* exs) const {
  const int64_t T = opt_.seq_len;
  int64_t p = 0;     // next free position of the row
  int32_t k = 0;     // segment id of the next example
  exs->clear();
  if (row < plan_.rows()) {
    for (int64_t i = plan_.row_offsets[static_cast<size_t>(row)]; i < plan_.row_offsets[static_cast<size_t>(row) + 1];
         ++i, ++k) {
      const int64_t ex = plan_.examples[static_cast<size_t>(i)];
      exs->push_back(ex);
      const int32_t* ids = data_.ids(ex);  // length + 1 ids
      const uint8_t* loss = data_.loss(ex);
      const int64_t L = data_.length(ex);
      for (int64_t t = 0; t < L; ++t, ++p) {
        tok[p] = ids[t];
        tgt[p] = loss[t + 1] ? ids[t + 1] : kIgnoreIndex;
        seg[p] = k;
        pos[p] = static_cast<int32_t>(t);
      }
    }
  }
  for (int32_t t = 0; p < T; ++p, ++t) {  // padding: a segment of its own
    tok[p] = opt_.pad_id;
    tgt[p] = kIgnoreIndex;
    seg[p] = k;
    pos[p] = t;
  }
}

void SftLoader::read_step(int64_t step, SftBatch* out) const {
  KILN_CHECK(step >= 0 && step < steps_per_epoch(true), "sft loader: step " << step << " of an epoch of "
                                                                            << steps_per_epoch(true));
  const int64_t B = opt_.batch, T = opt_.seq_len, g = B * opt_.world;
  out->rows = B;
  out->seq_len = T;
  const auto n = static_cast<size_t>(B * T);
  out->tokens.resize(n);
  out->targets.resize(n);
  out->segments.resize(n);
  out->positions.resize(n);
  out->row_examples.resize(static_cast<size_t>(B));
  out->loss_tokens = out->global_loss_tokens = 0;
  out->examples = out->global_examples = 0;
  out->real_tokens = out->global_real_tokens = 0;
  const int64_t first = step * g;
  for (int64_t r = first; r < std::min(first + g, plan_.rows()); ++r) {
    const auto ru = static_cast<size_t>(r);
    out->global_loss_tokens += row_targets_[ru];
    out->global_real_tokens += row_real_[ru];
    out->global_examples += plan_.row_offsets[ru + 1] - plan_.row_offsets[ru];
  }
  for (int64_t b = 0; b < B; ++b) {
    const int64_t r = first + opt_.rank * B + b;
    const size_t o = static_cast<size_t>(b * T);
    std::vector<int64_t>& exs = out->row_examples[static_cast<size_t>(b)];
    fill_row(r, &out->tokens[o], &out->targets[o], &out->segments[o], &out->positions[o], &exs);
    if (r < plan_.rows()) {
      out->loss_tokens += row_targets_[static_cast<size_t>(r)];
      out->real_tokens += row_real_[static_cast<size_t>(r)];
    }
    out->examples += static_cast<int64_t>(exs.size());
  }
}

void SftLoader::next(SftBatch* out) {
  check_trainable();
  read_step(step_, out);
  if (++step_ >= steps_per_epoch()) start_epoch(epoch_ + 1);
}

LoaderPosition SftLoader::position() const {
  return LoaderPosition{epoch_, static_cast<uint64_t>(step_), fingerprint_};
}

void SftLoader::set_position(const LoaderPosition& p) {
  KILN_INPUT_CHECK(p.fingerprint == fingerprint_,
                   "sft loader: the saved position is from a different data setup (examples, tokenizer, template, "
                   "batch, sequence length, packing, world size or seed changed since it was saved)");
  if (p.epoch != epoch_) start_epoch(p.epoch);
  KILN_INPUT_CHECK(p.step < static_cast<uint64_t>(steps_per_epoch()),
                   "sft loader: saved step " << p.step << " is past the end of epoch " << p.epoch << " ("
                                             << steps_per_epoch() << " steps)");
  step_ = static_cast<int64_t>(p.step);
}

}  // namespace kiln

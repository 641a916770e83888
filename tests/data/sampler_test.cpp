// Sampler: platform-independent seeded permutations, determinism, rank
// shards that are disjoint and cover the epoch, and resume equivalence.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include "data/sampler.h"
#include "runtime/error.h"

using kiln::Batch;
using kiln::DistributedSampler;
using kiln::SamplerOptions;
using kiln::SamplerState;

namespace {

SamplerOptions opts(int64_t size, int64_t batch, int rank = 0, int world = 1, bool drop_last = true,
                    uint64_t seed = 1234, bool shuffle = true) {
  SamplerOptions o;
  o.size = size;
  o.batch_size = batch;
  o.rank = rank;
  o.world = world;
  o.drop_last = drop_last;
  o.seed = seed;
  o.shuffle = shuffle;
  return o;
}

/// Every batch of `epochs` epochs, starting a new epoch whenever next() says so.
std::vector<Batch> run(DistributedSampler& s, int epochs) {
  std::vector<Batch> out;
  const uint64_t last = s.epoch() + epochs;
  Batch b;
  while (s.epoch() < last) {
    if (s.next(&b)) out.push_back(b);
    else s.set_epoch(s.epoch() + 1);
  }
  return out;
}

bool same(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].indices != b[i].indices || a[i].epoch != b[i].epoch || a[i].step != b[i].step ||
        a[i].global_size != b[i].global_size)
      return false;
  return true;
}

}  // namespace

TEST(SamplerTest, PermutationMatchesTheReferenceOnEveryPlatform) {
  // Computed by an independent Python implementation of Philox4x32-10, the
  // splitmix64 key mix and Fisher-Yates with rejection-sampled draws; a change
  // here changes every run's data order.
  EXPECT_EQ(kiln::seeded_permutation(10, 42, 0), (std::vector<int64_t>{9, 4, 8, 5, 7, 3, 0, 2, 6, 1}));
  EXPECT_EQ(kiln::seeded_permutation(10, 42, 1), (std::vector<int64_t>{5, 3, 6, 8, 4, 9, 7, 0, 2, 1}));
  EXPECT_EQ(kiln::seeded_permutation(16, 0, 3),
            (std::vector<int64_t>{11, 10, 1, 7, 12, 8, 4, 6, 9, 15, 3, 13, 2, 5, 14, 0}));
  EXPECT_EQ(kiln::seeded_permutation(20, ~uint64_t{0}, 5),
            (std::vector<int64_t>{9, 16, 2, 14, 5, 12, 13, 6, 3, 11, 7, 10, 18, 8, 15, 1, 17, 0, 19, 4}));
  EXPECT_TRUE(kiln::seeded_permutation(0, 1, 0).empty());
  EXPECT_EQ(kiln::seeded_permutation(1, 1, 0), (std::vector<int64_t>{0}));
}

TEST(SamplerTest, PermutationIsAPermutationAndRoughlyUniform) {
  std::vector<int64_t> p = kiln::seeded_permutation(10007, 5, 2);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> iota(10007);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_EQ(sorted, iota);
  // Where element 0 lands over 6000 streams: each of 6 slots about 1000 times.
  std::vector<int> where(6, 0);
  for (uint64_t s = 0; s < 6000; ++s) {
    const auto q = kiln::seeded_permutation(6, 99, s);
    ++where[std::find(q.begin(), q.end(), 0) - q.begin()];
  }
  for (int c : where) EXPECT_NEAR(c, 1000, 150) << "slot counts far from uniform";
  // Bounded draws stay in range, including n that do not divide 2^64.
  kiln::CounterRng rng(3, 0);
  for (uint64_t n : {uint64_t{1}, uint64_t{3}, uint64_t{1000003}, (uint64_t{1} << 63) + 1})
    for (int i = 0; i < 100; ++i) EXPECT_LT(rng.below(n), n);
}

TEST(SamplerTest, SameSeedSameBatchesOtherSeedOthers) {
  DistributedSampler a(opts(103, 8)), b(opts(103, 8)), c(opts(103, 8, 0, 1, true, 1235));
  const auto ra = run(a, 3), rb = run(b, 3), rc = run(c, 3);
  EXPECT_TRUE(same(ra, rb));
  EXPECT_FALSE(same(ra, rc));
  ASSERT_EQ(ra.size(), 3u * 12u);  // 103 / 8 = 12 full batches per epoch
  // Each epoch has its own order.
  EXPECT_NE(ra[0].indices, ra[12].indices);
  EXPECT_EQ(ra[12].epoch, 1u);
  EXPECT_EQ(ra[12].step, 0);
  // Without shuffling: the natural order, every epoch.
  DistributedSampler seq(opts(10, 4, 0, 1, false, 1, false));
  const auto rs = run(seq, 2);
  ASSERT_EQ(rs.size(), 6u);
  EXPECT_EQ(rs[0].indices, (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(rs[2].indices, (std::vector<int64_t>{8, 9}));
  EXPECT_EQ(rs[2].global_size, 2);
  EXPECT_EQ(rs[3].indices, rs[0].indices);
}

TEST(SamplerTest, RankShardsAreDisjointCoverTheEpochAndMatchOneProcess) {
  for (int64_t size : {7, 100, 101, 64}) {
    for (int64_t batch : {1, 4, 5}) {
      for (int world : {1, 2, 3, 4}) {
        for (bool drop_last : {true, false}) {
          SCOPED_TRACE(::testing::Message() << "size " << size << " batch " << batch << " world " << world
                                            << " drop_last " << drop_last);
          const int64_t g = batch * world;
          if (drop_last && size < g) {
            EXPECT_THROW(DistributedSampler(opts(size, batch, 0, world, drop_last)), kiln::InputError);
            continue;
          }
          // One process with the global batch sees exactly the same steps.
          DistributedSampler whole(opts(size, g, 0, 1, drop_last));
          std::vector<std::vector<Batch>> per_rank;
          for (int r = 0; r < world; ++r) {
            DistributedSampler s(opts(size, batch, r, world, drop_last));
            per_rank.push_back(run(s, 2));
          }
          const auto ref = run(whole, 2);
          const int64_t steps = drop_last ? size / g : (size + g - 1) / g;
          ASSERT_EQ(ref.size(), static_cast<size_t>(2 * steps));
          for (int e = 0; e < 2; ++e) {
            std::set<int64_t> seen;
            int64_t total = 0;
            for (int64_t st = 0; st < steps; ++st) {
              const size_t k = static_cast<size_t>(e * steps + st);
              std::vector<int64_t> joined;
              int64_t global = 0;
              for (int r = 0; r < world; ++r) {
                ASSERT_EQ(per_rank[r].size(), ref.size());
                const Batch& b = per_rank[r][k];
                EXPECT_EQ(b.step, st);
                EXPECT_EQ(b.epoch, static_cast<uint64_t>(e));
                global = b.global_size;
                EXPECT_LE(static_cast<int64_t>(b.indices.size()), batch);
                for (int64_t i : b.indices) {
                  EXPECT_TRUE(i >= 0 && i < size);
                  EXPECT_TRUE(seen.insert(i).second) << "sample " << i << " twice in epoch " << e;
                }
                joined.insert(joined.end(), b.indices.begin(), b.indices.end());
              }
              EXPECT_EQ(joined, ref[k].indices);
              EXPECT_EQ(global, static_cast<int64_t>(joined.size()));
              total += global;
            }
            EXPECT_EQ(total, drop_last ? (size / g) * g : size);
            EXPECT_EQ(static_cast<int64_t>(seen.size()), total);
          }
        }
      }
    }
  }
}

TEST(SamplerTest, ResumedSamplerSeesTheSameBatches) {
  for (bool drop_last : {true, false}) {
    for (int world : {1, 3}) {
      for (int rank = 0; rank < world; ++rank) {
        const SamplerOptions o = opts(50, 4, rank, world, drop_last, 77);
        DistributedSampler full(o);
        const auto ref = run(full, 3);
        // Stop after k batches (including right at an epoch's end, where
        // next() has not yet said so), save, continue in a new sampler.
        for (size_t k : {size_t{0}, size_t{1}, size_t{3}, size_t{4}, size_t{5}, size_t{9}, ref.size() - 1}) {
          SCOPED_TRACE(::testing::Message() << "drop_last " << drop_last << " rank " << rank << "/" << world
                                            << " k " << k);
          DistributedSampler first(o);
          std::vector<Batch> got;
          Batch b;
          while (got.size() < k) {
            if (first.next(&b)) got.push_back(b);
            else first.set_epoch(first.epoch() + 1);
          }
          const SamplerState saved = first.state();
          DistributedSampler second(o);
          second.restore(saved);
          EXPECT_EQ(second.state(), saved);
          while (got.size() < ref.size()) {
            if (second.next(&b)) got.push_back(b);
            else second.set_epoch(second.epoch() + 1);
          }
          EXPECT_TRUE(same(got, ref));
        }
      }
    }
  }
}

TEST(SamplerTest, EndOfEpochAndBadStates) {
  DistributedSampler s(opts(10, 5));
  Batch b;
  EXPECT_EQ(s.batches_per_epoch(), 2);
  EXPECT_TRUE(s.next(&b));
  EXPECT_TRUE(s.next(&b));
  EXPECT_FALSE(s.next(&b));
  EXPECT_FALSE(s.next(&b));  // stays at the end until the caller moves on
  EXPECT_EQ(s.state(), (SamplerState{0, 10}));
  s.set_epoch(1);
  EXPECT_EQ(s.state(), (SamplerState{1, 0}));
  EXPECT_THROW(s.restore({0, 11}), kiln::InputError);
  EXPECT_THROW(s.restore({0, -1}), kiln::InputError);
  EXPECT_THROW(DistributedSampler(opts(10, 4, 2, 2)), kiln::Error);  // rank out of range
  EXPECT_THROW(DistributedSampler(opts(10, 0)), kiln::Error);
  try {
    SamplerOptions o = opts(3, 4);
    o.what = "validation split";
    DistributedSampler tiny(o);
    FAIL() << "a dataset smaller than the batch gave no error with drop_last";
  } catch (const kiln::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("validation split: 3 samples do not fill one global batch of 4"),
              std::string::npos)
        << e.what();
  }
}

// The token loader: window layout, determinism (including a pinned first
// batch, so the order cannot drift between platforms or versions unnoticed),
// disjoint ranks, and resuming.
#include "data/token_loader.h"

#include <gtest/gtest.h>

#include <set>

#include "runtime/error.h"
#include "tests/harness/temp_dir.h"

namespace kiln {
namespace {

// Shard s holds tokens s·10000 + i, so every token says where it came from.
std::vector<std::string> make_shards(const test::TempDir& dir, const std::vector<int>& sizes) {
  std::vector<std::string> paths;
  for (size_t s = 0; s < sizes.size(); ++s) {
    std::vector<int32_t> t(sizes[s]);
    for (int i = 0; i < sizes[s]; ++i) t[i] = static_cast<int32_t>(s * 10000 + i);
    paths.push_back(dir.file("train_" + std::to_string(s) + ".bin"));
    write_token_shard(paths.back(), t);
  }
  return paths;
}

struct Batch {
  std::vector<int32_t> x, y;
  bool operator==(const Batch& o) const { return x == o.x && y == o.y; }
};

Batch next(TokenLoader& l) {
  Batch b{std::vector<int32_t>(l.batch() * l.seq_len()), std::vector<int32_t>(l.batch() * l.seq_len())};
  l.next(b.x.data(), b.y.data());
  return b;
}

TokenLoaderOptions opts(int64_t B, int64_t T, bool shuffle, uint64_t seed = 0, int rank = 0, int world = 1) {
  TokenLoaderOptions o;
  o.batch = B;
  o.seq_len = T;
  o.shuffle = shuffle;
  o.seed = seed;
  o.rank = rank;
  o.world = world;
  return o;
}

// Every row is T+1 consecutive tokens of one shard, y = x shifted by one.
void expect_windows(const Batch& b, int64_t B, int64_t T) {
  for (int64_t r = 0; r < B; ++r) {
    for (int64_t t = 0; t < T; ++t) {
      ASSERT_EQ(b.y[r * T + t], b.x[r * T + t] + 1) << "row " << r << " t " << t;
      if (t + 1 < T) {
        ASSERT_EQ(b.x[r * T + t + 1], b.y[r * T + t]);
      }
    }
  }
}

TEST(TokenLoader, SequentialWindowsInOrder) {
  test::TempDir dir;
  const auto shards = make_shards(dir, {100, 30});
  TokenLoader l(shards, opts(2, 8, false));
  // floor(99/8) = 12 windows in shard 0, floor(29/8) = 3 in shard 1.
  EXPECT_EQ(l.windows_per_epoch(), 15);
  EXPECT_EQ(l.steps_per_epoch(), 7);
  EXPECT_EQ(l.num_tokens(), 130);
  std::vector<int32_t> starts;
  for (int s = 0; s < 7; ++s) {
    const Batch b = next(l);
    expect_windows(b, 2, 8);
    starts.push_back(b.x[0]);
    starts.push_back(b.x[8]);
  }
  EXPECT_EQ(starts, (std::vector<int32_t>{0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 10000, 10008}));
  EXPECT_EQ(l.epoch(), 1u);  // the 15th window is left over; epoch 1 starts again
  EXPECT_EQ(next(l).x[0], 0);
}

TEST(TokenLoader, RandomEpochCoversEachWindowOnce) {
  test::TempDir dir;
  const auto shards = make_shards(dir, {1000, 517, 64});
  const int64_t B = 4, T = 16;
  TokenLoader l(shards, opts(B, T, true, 5));
  // floor((n - T) / T): 61 + 31 + 3 windows.
  EXPECT_EQ(l.windows_per_epoch(), 95);
  EXPECT_EQ(l.steps_per_epoch(), 23);
  std::set<int32_t> phases;
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::set<int32_t> starts;
    for (int s = 0; s < l.steps_per_epoch(); ++s) {
      const Batch b = next(l);
      expect_windows(b, B, T);
      for (int64_t r = 0; r < B; ++r) starts.insert(b.x[r * T]);
    }
    EXPECT_EQ(starts.size(), 92u) << "epoch " << epoch;  // 23 steps x 4, all distinct
    const int32_t phase = (*starts.begin()) % 10000 % T;
    for (int32_t st : starts) EXPECT_EQ(st % 10000 % T, phase);  // one phase per epoch
    phases.insert(phase);
  }
  EXPECT_EQ(l.epoch(), 3u);
  EXPECT_GT(phases.size(), 1u);  // edges move between epochs (3 draws in [0, 16))
}

TEST(TokenLoader, DeterministicAndPinned) {
  test::TempDir dir;
  const auto shards = make_shards(dir, {5000, 3000});
  TokenLoader a(shards, opts(3, 32, true, 42)), b(shards, opts(3, 32, true, 42)), c(shards, opts(3, 32, true, 43));
  bool differs = false;
  for (int s = 0; s < 200; ++s) {
    const Batch ba = next(a);
    ASSERT_TRUE(ba == next(b)) << "step " << s;
    differs |= !(ba == next(c));
  }
  EXPECT_TRUE(differs);
  // The first rows for seed 42, pinned: Philox draws and our own Fisher-Yates
  // make this the same on every platform. A change here changes every run.
  // (Re-derived independently with a Python Philox4x32-10 and the documented
  // order: phase = draw(epoch 0, 0) mod T, Fisher-Yates i = W-1..1 with
  // j = draw(0, i) mod (i+1), draw = words 0 | 1 << 32 of Philox keyed by
  // seed ^ "kilnLoad".)
  TokenLoader d(shards, opts(3, 32, true, 42));
  const Batch first = next(d);
  EXPECT_EQ((std::vector<int32_t>{first.x[0], first.x[32], first.x[64]}), (std::vector<int32_t>{11116, 2140, 1884}));
}

TEST(TokenLoader, RanksReadDisjointPartsOfOneGlobalBatch) {
  test::TempDir dir;
  const auto shards = make_shards(dir, {4000, 1234});
  const int64_t B = 3, T = 10, world = 4;
  for (bool shuffle : {true, false}) {
    TokenLoader whole(shards, opts(B * world, T, shuffle, 9));
    std::vector<TokenLoader> ranks;
    for (int r = 0; r < world; ++r) ranks.emplace_back(shards, opts(B, T, shuffle, 9, r, static_cast<int>(world)));
    EXPECT_EQ(ranks[0].steps_per_epoch(), whole.steps_per_epoch());
    for (int s = 0; s < 2 * whole.steps_per_epoch() + 3; ++s) {  // across epoch boundaries
      const Batch w = next(whole);
      std::set<int32_t> starts;
      for (int r = 0; r < world; ++r) {
        const Batch b = next(ranks[r]);
        // Rank r's rows are rows [r·B, (r+1)·B) of the single-process batch.
        ASSERT_TRUE(std::equal(b.x.begin(), b.x.end(), w.x.begin() + r * B * T)) << "rank " << r << " step " << s;
        ASSERT_TRUE(std::equal(b.y.begin(), b.y.end(), w.y.begin() + r * B * T));
        for (int64_t i = 0; i < B; ++i) starts.insert(b.x[i * T]);
      }
      ASSERT_EQ(starts.size(), static_cast<size_t>(B * world)) << "ranks share a window at step " << s;
    }
  }
}

TEST(TokenLoader, ResumeGivesTheSameBatches) {
  test::TempDir dir;
  const auto shards = make_shards(dir, {700, 300});
  for (bool shuffle : {true, false}) {
    TokenLoader a(shards, opts(4, 16, shuffle, 3, 1, 2));
    ASSERT_LT(a.steps_per_epoch(), 10);  // so the run below crosses epochs
    std::vector<Batch> run;
    LoaderPosition saved;
    for (int s = 0; s < 25; ++s) {
      if (s == 7) saved = a.position();
      run.push_back(next(a));
    }
    TokenLoader b(shards, opts(4, 16, shuffle, 3, 1, 2));
    next(b);  // wherever it was, set_position wins
    b.set_position(saved);
    for (int s = 7; s < 25; ++s) ASSERT_TRUE(next(b) == run[s]) << "shuffle " << shuffle << " step " << s;

    // A position from another setup, or past an epoch's end, is refused.
    TokenLoader other(shards, opts(4, 16, shuffle, 4, 1, 2));
    EXPECT_THROW(other.set_position(saved), InputError);
    LoaderPosition bad = saved;
    bad.step = static_cast<uint64_t>(b.steps_per_epoch());
    EXPECT_THROW(b.set_position(bad), InputError);
  }
}

TEST(TokenLoader, BadSetupsAreInputErrors) {
  test::TempDir dir;
  const auto shards = make_shards(dir, {100});
  EXPECT_THROW(TokenLoader(shards, opts(8, 16, true)), InputError);   // 5 windows < 8
  EXPECT_THROW(TokenLoader(shards, opts(1, 0, true)), InputError);    // T = 0
  EXPECT_THROW(TokenLoader(shards, opts(0, 4, true)), InputError);    // B = 0
  EXPECT_THROW(TokenLoader(shards, opts(1, 4, true, 0, 2, 2)), InputError);  // rank >= world
  EXPECT_THROW(TokenLoader({}, opts(1, 4, true)), InputError);
  EXPECT_THROW(TokenLoader({dir.file("missing.bin")}, opts(1, 4, true)), InputError);
}

// Issue #11: a shard with an id the model cannot embed is refused when the
// loader opens it, naming the file, the token index and the byte offset.
TEST(TokenLoader, IdsOutsideTheVocabularyAreRefusedAtOpen) {
  test::TempDir dir;
  std::vector<int32_t> good(300), bad(300);
  for (int i = 0; i < 300; ++i) good[i] = bad[i] = i % 512;
  bad[257] = 65535;
  bad[299] = 600;
  write_token_shard(dir.file("train_0.bin"), good);
  write_token_shard(dir.file("train_1.bin"), bad);
  TokenLoaderOptions o = opts(2, 16, true);
  o.vocab_size = 512;
  EXPECT_NO_THROW(TokenLoader({dir.file("train_0.bin")}, o));
  try {
    TokenLoader l({dir.file("train_0.bin"), dir.file("train_1.bin")}, o);
    ADD_FAILURE() << "a shard holding id 65535 was accepted for a 512-token vocabulary";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(dir.file("train_1.bin")), std::string::npos) << m;
    EXPECT_NE(m.find("token 257 (byte offset " + std::to_string(1024 + 2 * 257) + ") is id 65535"), std::string::npos) << m;
    EXPECT_NE(m.find("vocabulary of 512"), std::string::npos) << m;
  }
  o.vocab_size = 0;  // unchecked, as before
  EXPECT_NO_THROW(TokenLoader({dir.file("train_1.bin")}, o));
  o.vocab_size = 65536;
  EXPECT_NO_THROW(TokenLoader({dir.file("train_1.bin")}, o));
  TokenShard s(dir.file("train_1.bin"));
  EXPECT_EQ(s.max_id(), 65535);
  EXPECT_NO_THROW(s.check_ids(65536));
  EXPECT_THROW(s.check_ids(601), InputError);  // 65535 still
  EXPECT_EQ(TokenShard(dir.file("train_0.bin")).max_id(), 299);
}

}  // namespace
}  // namespace kiln

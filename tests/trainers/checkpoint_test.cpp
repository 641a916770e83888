#include "trainers/checkpoint.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kiln_ckpt_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    run_ = tmpl;
    w0_.resize(12);
    b0_.resize(4);
    m0_.resize(12);
    for (size_t i = 0; i < w0_.size(); ++i) w0_[i] = 0.25f * static_cast<float>(i) - 1.0f;
    for (size_t i = 0; i < b0_.size(); ++i) b0_[i] = static_cast<float>(i) * 1e-3f;
    for (size_t i = 0; i < m0_.size(); ++i) m0_[i] = 1e-6f * static_cast<float>(i);
  }
  void TearDown() override { fs::remove_all(run_); }

  std::vector<StTensorView> weights() const {
    return {{"layers.0.weight", StDType::f32, {3, 4}, w0_.data(), w0_.size() * 4},
            {"layers.0.bias", StDType::f32, {4}, b0_.data(), b0_.size() * 4}};
  }
  std::vector<StTensorView> optimizer() const {
    return {{"exp_avg.layers.0.weight", StDType::f32, {3, 4}, m0_.data(), m0_.size() * 4},
            {"exp_avg_sq.layers.0.weight", StDType::f32, {3, 4}, m0_.data(), m0_.size() * 4},
            {"step_count", StDType::i64, {}, &count_, 8}};
  }
  std::string save(int64_t step) {
    json state = {{"epoch", step / 10}, {"rng", {{"seed", 1234}, {"offset", 18446744073709551000ull}}}};
    return save_checkpoint(run_, step, weights(), optimizer(), state);
  }
  static void flip_byte(const std::string& path, uint64_t at) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(at));
    char c;
    f.read(&c, 1);
    c ^= 0x01;
    f.seekp(static_cast<std::streamoff>(at));
    f.write(&c, 1);
  }
  std::vector<std::string> names(const std::string& dir) const {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }

  std::string run_;
  std::vector<float> w0_, b0_, m0_;
  int64_t count_ = 123;
};

TEST(Checkpoint, DirectoryNames) {
  EXPECT_EQ(checkpoint_dir_name(0), "step_000000");
  EXPECT_EQ(checkpoint_dir_name(123), "step_000123");
  EXPECT_EQ(checkpoint_dir_name(12345678), "step_12345678");
  EXPECT_THROW(checkpoint_dir_name(-1), Error);
}

TEST_F(CheckpointTest, RoundTrip) {
  json state = {{"epoch", 3},
                {"rng", {{"seed", 1234}, {"offset", 18446744073709551000ull}}},
                {"data", {{"epoch", 3}, {"position", 4096}, {"order_seed", 77}}},
                {"config_hash", "9f2c"}};
  std::string dir = save_checkpoint(run_, 123, weights(), optimizer(), state, {{"kiln.model", "mlp"}});
  EXPECT_EQ(dir, run_ + "/checkpoints/step_000123");
  EXPECT_EQ(names(dir), (std::vector<std::string>{"manifest.json", "model.safetensors", "optimizer.safetensors",
                                                  "state.json"}));
  EXPECT_EQ(names(run_ + "/checkpoints"), std::vector<std::string>{"step_000123"});  // no temporaries left

  Checkpoint ck = load_checkpoint(dir);
  EXPECT_EQ(ck.step, 123);
  EXPECT_EQ(ck.dir, dir);
  ASSERT_EQ(ck.weights.tensors.size(), 2u);
  const StTensor& w = ck.weights.at("layers.0.weight");
  EXPECT_EQ(w.dtype, StDType::f32);
  EXPECT_EQ(w.shape, (std::vector<int64_t>{3, 4}));
  ASSERT_EQ(w.nbytes, 48u);
  EXPECT_EQ(std::memcmp(w.data, w0_.data(), 48), 0);
  EXPECT_EQ(std::memcmp(ck.weights.at("layers.0.bias").data, b0_.data(), 16), 0);
  EXPECT_EQ(ck.weights.metadata.at("format"), "pt");
  EXPECT_EQ(ck.weights.metadata.at("kiln.model"), "mlp");
  ASSERT_EQ(ck.optimizer.tensors.size(), 3u);
  EXPECT_EQ(std::memcmp(ck.optimizer.at("exp_avg_sq.layers.0.weight").data, m0_.data(), 48), 0);
  int64_t count = 0;
  std::memcpy(&count, ck.optimizer.at("step_count").data, 8);
  EXPECT_EQ(count, 123);

  json want = state;
  want["step"] = 123;
  EXPECT_EQ(ck.state, want);
  EXPECT_EQ(ck.state["rng"]["offset"].get<uint64_t>(), 18446744073709551000ull);  // uint64 exact

  json manifest = json::parse(std::ifstream(dir + "/manifest.json"));
  EXPECT_EQ(manifest["step"], 123);
  ASSERT_EQ(manifest["files"].size(), 3u);
  for (const json& f : manifest["files"])
    EXPECT_EQ(f["size"].get<uint64_t>(), fs::file_size(dir + "/" + f["name"].get<std::string>()));
  EXPECT_NO_THROW(verify_checkpoint(dir));
}

TEST_F(CheckpointTest, RoundTripFromTensors) {
  Device cpu = Device::cpu();
  Tensor w = Tensor::from_vector(w0_, Shape{3, 4}, DType::f32, cpu);
  Tensor m = Tensor::from_vector(m0_, Shape{3, 4}, DType::f32, cpu);
  std::string dir = save_checkpoint(run_, 3, std::vector<NamedTensor>{{"layers.0.weight", w}},
                                    std::vector<NamedTensor>{{"layers.0.weight.exp_avg", m}}, json{{"epoch", 0}});
  Checkpoint ck = load_checkpoint(dir);
  Tensor w2 = Tensor::zeros(Shape{3, 4}, DType::f32, cpu);
  Tensor m2 = Tensor::zeros(Shape{3, 4}, DType::f32, cpu);
  load_tensors(ck.weights, {{"layers.0.weight", w2}});
  load_tensors(ck.optimizer, {{"layers.0.weight.exp_avg", m2}});
  EXPECT_EQ(w2.to_vector(), w0_);
  EXPECT_EQ(m2.to_vector(), m0_);
}

TEST_F(CheckpointTest, StateStepMustAgree) {
  EXPECT_THROW(save_checkpoint(run_, 5, weights(), optimizer(), json{{"step", 6}}), Error);
  EXPECT_THROW(save_checkpoint(run_, 5, weights(), optimizer(), json::array()), Error);
  EXPECT_NO_THROW(save_checkpoint(run_, 5, weights(), optimizer(), json{{"step", 5}}));
  const std::vector<StTensorView> none;
  EXPECT_NO_THROW(save_checkpoint(run_, 6, none, none, json()));  // null state: just the step
  EXPECT_EQ(load_checkpoint(run_ + "/checkpoints/step_000006").state, (json{{"step", 6}}));
}

TEST_F(CheckpointTest, ResavingAStepReplacesIt) {
  save(7);
  w0_[0] = 42.0f;
  std::string dir = save(7);
  Checkpoint ck = load_checkpoint(dir);
  float first;
  std::memcpy(&first, ck.weights.at("layers.0.weight").data, 4);
  EXPECT_EQ(first, 42.0f);
  EXPECT_EQ(names(run_ + "/checkpoints"), std::vector<std::string>{"step_000007"});
}

TEST_F(CheckpointTest, CorruptByteIsSkippedWithWarningAndPreviousChosen) {
  save(100);
  std::string newest = save(200);
  EXPECT_EQ(find_latest_valid_checkpoint(run_), newest);

  std::string model = newest + "/model.safetensors";
  flip_byte(model, fs::file_size(model) - 3);  // inside a weight, header still valid
  testing::internal::CaptureStderr();
  std::optional<std::string> got = find_latest_valid_checkpoint(run_);
  std::string err = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, run_ + "/checkpoints/step_000100");
  EXPECT_NE(err.find("warning: skipping checkpoint " + newest), std::string::npos) << err;
  EXPECT_NE(err.find("model.safetensors"), std::string::npos) << err;
  EXPECT_NE(err.find("CRC-32"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;

  try {
    load_checkpoint(newest);
    FAIL() << "corrupt checkpoint loaded";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(model), std::string::npos) << e.what();
  }
}

TEST_F(CheckpointTest, EveryKindOfDamageIsAnInputErrorNamingTheFile) {
  struct Damage {
    const char* label;
    const char* file;
    std::function<void(const std::string&)> apply;
    const char* expect;
  };
  std::vector<Damage> damages = {
      {"flip in optimizer", "optimizer.safetensors", [&](const std::string& p) { flip_byte(p, 20); }, "CRC-32"},
      {"truncated weights", "model.safetensors",
       [](const std::string& p) { fs::resize_file(p, fs::file_size(p) - 1); }, "size"},
      {"edited state", "state.json", [&](const std::string& p) { flip_byte(p, 2); }, "CRC-32"},
      {"missing state", "state.json", [](const std::string& p) { fs::remove(p); }, "missing"},
      {"missing manifest", "manifest.json", [](const std::string& p) { fs::remove(p); }, "incomplete"},
      {"garbled manifest", "manifest.json", [](const std::string& p) { std::ofstream(p) << "{\"format\":"; },
       "not valid JSON"},
      {"manifest step", "manifest.json",
       [](const std::string& p) {
         json m = json::parse(std::ifstream(p));
         m["step"] = 9;
         std::ofstream(p) << m.dump();
       },
       "directory is step_000001"},
      {"manifest escapes", "manifest.json",
       [](const std::string& p) {
         json m = json::parse(std::ifstream(p));
         m["files"][0]["name"] = "../../etc/passwd";
         std::ofstream(p) << m.dump();
       },
       "not a plain file name"},
  };
  for (const Damage& d : damages) {
    fs::remove_all(run_ + "/checkpoints");
    std::string dir = save(1);
    std::string path = dir + "/" + d.file;
    d.apply(path);
    for (int load = 0; load < 2; ++load) {
      try {
        if (load) {
          load_checkpoint(dir);
        } else {
          verify_checkpoint(dir);
        }
        ADD_FAILURE() << d.label << ": no error (" << (load ? "load" : "verify") << ")";
      } catch (const InputError& e) {
        std::string m = e.what();
        EXPECT_NE(m.find(path), std::string::npos) << d.label << ": " << m;
        EXPECT_NE(m.find(d.expect), std::string::npos) << d.label << ": " << m;
      }
    }
    testing::internal::CaptureStderr();
    EXPECT_FALSE(find_latest_valid_checkpoint(run_).has_value()) << d.label;
    std::string err = testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("skipping checkpoint " + dir), std::string::npos) << d.label << ": " << err;
  }
}

TEST_F(CheckpointTest, IncompleteTemporaryDirectoryIsIgnored) {
  std::string good = save(10);
  // What a kill -9 during a save leaves: a hidden temporary with some files.
  std::string tmp = run_ + "/checkpoints/.step_000020.tmp.999999";
  fs::create_directories(tmp);
  std::ofstream(tmp + "/model.safetensors") << "partial";
  // And something that is not a checkpoint at all.
  fs::create_directories(run_ + "/checkpoints/notes");
  std::ofstream(run_ + "/checkpoints/step_000030") << "a file, not a directory";

  testing::internal::CaptureStderr();
  EXPECT_EQ(find_latest_valid_checkpoint(run_), good);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");  // nothing worth warning about
  auto all = list_checkpoints(run_);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].first, 10);
}

TEST_F(CheckpointTest, NoCheckpointsAtAll) {
  testing::internal::CaptureStderr();
  EXPECT_FALSE(find_latest_valid_checkpoint(run_).has_value());
  EXPECT_FALSE(find_latest_valid_checkpoint(run_ + "/does/not/exist").has_value());
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(prune_checkpoints(run_, 2), 0);
  EXPECT_THROW(load_checkpoint(run_ + "/nope"), InputError);
}

TEST_F(CheckpointTest, NumericNotLexicalOrder) {
  save(999999);
  std::string newest = save(1000000);  // "step_1000000" sorts before "step_999999" as text
  EXPECT_EQ(find_latest_valid_checkpoint(run_), newest);
}

TEST_F(CheckpointTest, PruneKeepsLastN) {
  for (int s = 1; s <= 5; ++s) save(s * 10);
  // A dead process's temporaries are cleaned up; a live one's are not.
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);
  std::string dead = run_ + "/checkpoints/.step_000060.tmp." + std::to_string(child);
  std::string live = run_ + "/checkpoints/.step_000070.tmp.1";  // pid 1 always runs
  fs::create_directories(dead);
  fs::create_directories(live);

  EXPECT_EQ(prune_checkpoints(run_, 0), 0);  // keep_last < 1: keep everything
  EXPECT_EQ(list_checkpoints(run_).size(), 5u);
  EXPECT_EQ(prune_checkpoints(run_, 2), 3);
  auto left = list_checkpoints(run_);
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].first, 50);
  EXPECT_EQ(left[1].first, 40);
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_EQ(names(run_ + "/checkpoints"),
            (std::vector<std::string>{".step_000070.tmp.1", "step_000040", "step_000050"}));
  EXPECT_EQ(prune_checkpoints(run_, 2), 0);
  EXPECT_NO_THROW(verify_checkpoint(left[0].second));
}

// kill -9 at arbitrary moments of a stream of saves and prunes: every visible
// step_ directory must verify, and the newest valid one is never older than
// the last save the child finished before it died.
TEST_F(CheckpointTest, KillNineDuringSavesNeverLeavesABadVisibleCheckpoint) {
  // A save here costs ~100 ms, nearly all of it in the fsyncs, so kills at
  // these delays after the child's n-th finished save land in every phase of
  // the next save (including the re-save of an existing step).
  std::vector<float> big(1 << 16);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(i);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  struct Kill {
    int after_saves;
    int delay_ms;
  } kills[] = {{0, 0}, {0, 15}, {0, 60}, {1, 0}, {1, 5}, {1, 20}, {2, 40}, {2, 70}, {1, 95}, {2, 130}};
  int64_t base = 0;
  int64_t total_finished = 0;
  for (const Kill& k : kills) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      for (int64_t s = base + 1;; ++s) {
        save_checkpoint(run_, s, {{"big", StDType::f32, {1 << 16}, big.data(), big.size() * 4}}, {},
                        json{{"i", s}});
        prune_checkpoints(run_, 2);
        if (::write(fds[1], &s, sizeof s) != sizeof s) _exit(3);  // report each finished save
      }
    }
    int64_t finished = base;
    for (int i = 0; i < k.after_saves; ++i) {
      int64_t s = 0;
      ASSERT_EQ(::read(fds[0], &s, sizeof s), static_cast<ssize_t>(sizeof s));
      finished = s;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(k.delay_ms));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child died on its own (status " << status << ")";
    // Saves the child finished between our last read and the kill.
    int flags = fcntl(fds[0], F_GETFL);
    fcntl(fds[0], F_SETFL, flags | O_NONBLOCK);
    int64_t s;
    while (::read(fds[0], &s, sizeof s) == static_cast<ssize_t>(sizeof s)) finished = s;
    fcntl(fds[0], F_SETFL, flags);
    total_finished += finished - base;

    std::string when = "kill " + std::to_string(k.delay_ms) + " ms after save " + std::to_string(k.after_saves);
    testing::internal::CaptureStderr();
    std::optional<std::string> latest = find_latest_valid_checkpoint(run_);
    std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(err, "") << "a visible checkpoint was invalid after " << when;
    for (const auto& [step, dir] : list_checkpoints(run_)) EXPECT_NO_THROW(verify_checkpoint(dir)) << dir;
    if (finished > 0) {
      ASSERT_TRUE(latest.has_value()) << when;
      int64_t got = load_checkpoint(*latest).step;
      EXPECT_GE(got, finished) << when;
      base = std::max(base, got);
    }
  }
  EXPECT_GE(total_finished, 9);  // the waits above guarantee at least this many
  close(fds[0]);
  close(fds[1]);
}

}  // namespace
}  // namespace kiln

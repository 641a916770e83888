// The `kiln` binary as users run it: exit status and messages for a table of
// bad configs and bad files, validate, and kill -9 in the middle of a run
// followed by `train.resume=auto`, which must end with the same weights as an
// uninterrupted run.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "data/safetensors.h"
#include "tests/trainers/run_checks.h"
#include "trainers/checkpoint.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

const std::string kKiln = std::string(KILN_BINARY_DIR) + "/kiln";
const std::string kTiny = std::string(KILN_SOURCE_DIR) + "/configs/mlp_tiny.yaml";

using test::CliRun;
CliRun run(const std::string& args) { return test::run_kiln(args); }

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("kiln_cli_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string write(const fs::path& dir, const std::string& name, const std::string& text) {
  const fs::path p = dir / name;
  std::ofstream(p) << text;
  return p.string();
}

const char* kGood = "name: t\ndevice: cpu\nmodel: {type: mlp}\ndata: {type: fashion_mnist}\n";

TEST(Cli, UsageAndUnknownCommand) {
  EXPECT_EQ(run("").status, 2);
  CliRun r = run("frobnicate");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("unknown command 'frobnicate'"), std::string::npos) << r.output;
  EXPECT_EQ(run("--help").status, 0);
}

TEST(Cli, ValidateEveryShippedConfig) {
  for (const auto& e : fs::directory_iterator(std::string(KILN_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    CliRun r = run("validate " + e.path().string());
    EXPECT_EQ(r.status, 0) << e.path() << ":\n" << r.output;
  }
}

struct BadCase {
  const char* name;
  std::string yaml;       // config text ("" = use the args only)
  std::string args;       // extra arguments after the config path
  std::vector<std::string> expect;  // substrings of the message
};

TEST(Cli, BadConfigsExitTwoAndNameTheProblem) {
  const fs::path d = temp_dir("bad");
  const std::vector<BadCase> cases = {
      {"malformed", "name: [unclosed\n", "", {"malformed.yaml:2:1", "malformed YAML"}},
      {"unknown_key", std::string(kGood) + "optim: {lr: 0.1, betas: 3}\n", "", {"optim.betas", "did you mean"}},
      {"unknown_deep", "name: t\ndevice: cpu\nmodel: {type: mlp, mlp: {hiden: [3]}}\ndata: {type: fashion_mnist}\n", "",
       {"model.mlp.hiden", "hidden"}},
      {"duplicate", std::string(kGood) + "seed: 1\nseed: 2\n", "", {"duplicate", "seed"}},
      {"wrong_type", std::string(kGood) + "train: {batch_size: lots}\n", "", {"train.batch_size", "integer"}},
      {"out_of_range", std::string(kGood) + "optim: {lr: -1}\n", "", {"optim.lr"}},
      {"bad_override", kGood, "train.bogus=3", {"train.bogus"}},
      {"missing_data_dir", std::string(kGood), "data.path=/nonexistent/fm", {"/nonexistent/fm"}},
  };
  for (const BadCase& c : cases) {
    const std::string path = write(d, std::string(c.name) + ".yaml", c.yaml);
    CliRun r = run("train " + path + " output_dir=" + (d / c.name).string() + " " + c.args);
    EXPECT_EQ(r.status, 2) << c.name << ":\n" << r.output;
    for (const std::string& s : c.expect)
      EXPECT_NE(r.output.find(s), std::string::npos) << c.name << ": expected '" << s << "' in:\n" << r.output;
  }
  CliRun missing = run("train " + (d / "nope.yaml").string());
  EXPECT_EQ(missing.status, 2);
  EXPECT_NE(missing.output.find("nope.yaml"), std::string::npos) << missing.output;
  fs::remove_all(d);
}

TEST(Cli, CorruptCheckpointIsSkippedWithAWarning) {
  const fs::path d = temp_dir("corrupt");
  const std::string out = "output_dir=" + (d / "run").string();
  ASSERT_EQ(run("train " + kTiny + " " + out + " train.max_steps=20").status, 0);
  auto cks = list_checkpoints((d / "run").string());
  ASSERT_EQ(cks.size(), 2u);  // 10 and 20
  // Flip one byte in the newest checkpoint's weights.
  const fs::path w = fs::path(cks[0].second) / kCheckpointWeights;
  std::fstream f(w, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(200);
  char c = 0;
  f.read(&c, 1);
  f.seekp(200);
  c = static_cast<char>(c ^ 0x5a);
  f.write(&c, 1);
  f.close();
  CliRun r = run("eval " + (d / "run").string() + " --split val");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("skipping checkpoint"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step_000010"), std::string::npos) << r.output;
  fs::remove_all(d);
}

std::map<std::string, std::vector<uint8_t>> newest_weights(const fs::path& run_dir) {
  auto ck = find_latest_valid_checkpoint(run_dir.string());
  EXPECT_TRUE(ck.has_value());
  std::map<std::string, std::vector<uint8_t>> out;
  if (!ck) return out;
  SafetensorsFile f = read_safetensors((fs::path(*ck) / kCheckpointWeights).string());
  for (auto& [name, t] : f.tensors) out[name] = t.bytes();
  return out;
}

TEST(Cli, KillNineThenResumeGivesTheSameWeights) {
  const fs::path d = temp_dir("kill");
  // A run long enough to be killed in the middle: 400 steps, checkpoints every 25.
  const std::string common = " train.max_steps=400 train.checkpoint_every=25 train.keep_last=0 train.eval_every=0";
  ASSERT_EQ(run("train " + kTiny + " output_dir=" + (d / "full").string() + common).status, 0);

  const std::string out = (d / "killed").string();
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    freopen("/dev/null", "w", stdout);
    freopen("/dev/null", "w", stderr);
    const std::string cfg = kTiny, od = "output_dir=" + out;
    execl(kKiln.c_str(), kKiln.c_str(), "train", cfg.c_str(), od.c_str(), "train.max_steps=400",
          "train.checkpoint_every=25", "train.keep_last=0", "train.eval_every=0", static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until at least two checkpoints exist, then kill -9 mid-run.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    if (list_checkpoints(out).size() >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  kill(pid, SIGKILL);
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFSIGNALED(st)) << "the run finished before it could be killed; make it longer";
  const size_t before = list_checkpoints(out).size();
  EXPECT_LT(before, 16u);
  CliRun r = run("train " + kTiny + " output_dir=" + out + common + " train.resume=auto");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  EXPECT_EQ(newest_weights(d / "full"), newest_weights(out));
  fs::remove_all(d);
}

}  // namespace
}  // namespace kiln

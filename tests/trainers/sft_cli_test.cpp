// `kiln data cmudict` and `kiln data inspect` as a user runs them: the splits
// it writes, the windows it prints (segments, positions, loss column),
// building the splits on first use from a config, and the errors (exit 2
// with a message naming the file, line or key).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "tests/harness/temp_dir.h"
#include "trainers/cmd_data.h"

namespace kiln {
namespace {

struct CmdResult {
  int rc;
  std::string out, err;
};

std::string slurp(std::FILE* f) {
  std::rewind(f);
  std::string s;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) s.append(buf, n);
  std::fclose(f);
  return s;
}

CmdResult data(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  std::FILE* out = std::tmpfile();
  std::FILE* err = std::tmpfile();
  const int rc = cmd_data(static_cast<int>(argv.size()), argv.data(), out, err);
  return CmdResult{rc, slurp(out), slurp(err)};
}

const char* kDict =
    "export const dictionary = {\n"
    "  \"a\": \"AH0\", \"a(2)\": \"EY1\", \"knight\": \"N AY1 T\", \"night\": \"N AY1 T\",\n"
    "  \"read\": \"R EH1 D\", \"read(2)\": \"R IY1 D\", \"tomato\": \"T AH0 M EY1 T OW2\",\n"
    "  \"cat\": \"K AE1 T\", \"dog\": \"D AO1 G\", \"fish\": \"F IH1 SH\", \"bird\": \"B ER1 D\"\n"
    "}\n";

class SftCli : public ::testing::Test {
 protected:
  void SetUp() override {
    Tokenizer::from_merges({}).save(dir_.file("tok"));  // one token per byte, EOS = 256
    test::write_file(dir_.file("index.js"), kDict);
  }
  // A config whose data section is `data` (YAML lines, indented two spaces).
  std::string config(const std::string& data, const std::string& extra = "") {
    const std::string path = dir_.file("c.yaml");
    test::write_file(path, "model:\n  type: gpt\n  gpt: {vocab_size: 257, block_size: 64, n_layer: 1, n_head: 1, "
                           "n_embd: 8}\n"
                           "data:\n  type: sft\n  tokenizer: " +
                               dir_.file("tok") + "\n" + data +
                               "sft:\n  prompt_template: \"{prompt}\"\n  max_len: 40\n"
                               "train:\n  batch_size: 2\n  max_steps: 1\n  epochs: 0\n" +
                               extra);
    return path;
  }
  test::TempDir dir_;
};

TEST_F(SftCli, CmudictWritesTheSplits) {
  const CmdResult r = data({"cmudict", "--source", dir_.file("index.js"), "--out", dir_.file("out"), "--val-fraction",
                            "0.2", "--test-fraction", "0.1", "--seed", "3"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("read 11 entries"), std::string::npos) << r.out;
  // 9 words: round(1.8) = 2 val, round(0.9) = 1 test, 6 train.
  EXPECT_NE(r.out.find("train       6 words"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("val         2 words"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("test        1 words"), std::string::npos) << r.out;
  for (const char* f : {"train.jsonl", "val.jsonl", "test.jsonl", "cmudict.json"})
    EXPECT_TRUE(std::filesystem::exists(dir_.file(std::string("out/") + f))) << f;
  EXPECT_NE(test::read_file(dir_.file("out/cmudict.json")).find("\"seed\": 3"), std::string::npos);
}

TEST_F(SftCli, CmudictUsageErrors) {
  EXPECT_EQ(data({"cmudict", "--source", dir_.file("index.js")}).rc, 2);  // no --out
  const CmdResult frac = data({"cmudict", "--out", dir_.file("o"), "--val-fraction", "1.5"});
  EXPECT_EQ(frac.rc, 2);
  EXPECT_NE(frac.err.find("--val-fraction: expected a number in [0, 1)"), std::string::npos) << frac.err;
  const CmdResult seed = data({"cmudict", "--out", dir_.file("o"), "--seed", "-1"});
  EXPECT_EQ(seed.rc, 2);
  EXPECT_NE(seed.err.find("--seed"), std::string::npos) << seed.err;
  const CmdResult missing = data({"cmudict", "--out", dir_.file("o"), "--source", dir_.file("none.js")});
  EXPECT_EQ(missing.rc, 2);
  EXPECT_NE(missing.err.find("none.js"), std::string::npos) << missing.err;
}

TEST_F(SftCli, InspectShowsPackedWindows) {
  test::write_file(dir_.file("t.jsonl"), "{\"prompt\": \"ab|\", \"completion\": \"cd\"}\n"
                                         "{\"prompt\": \"efg|\", \"completion\": \"h\"}\n"
                                         "{\"prompt\": \"i|\", \"completion\": \"jk\"}\n");
  const std::string cfg = config("  path: " + dir_.file("t.jsonl") + "\n  shuffle: false\n");
  const CmdResult r = data({"inspect", cfg, "--windows", "1"});
  ASSERT_EQ(r.rc, 0) << r.err;
  // 3 examples of 5, 5, 4 positions (prompt + completion; EOS only a target) in one window of 40.
  EXPECT_NE(r.out.find("3 examples, 14 tokens, 8 carry loss, longest 5"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("window 0 (step 0, row 0): 3 examples, 14 of 40 positions hold tokens, 8 carry loss"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("-- segment 0: line 1 of " + dir_.file("t.jsonl") + " (5 positions, 3 carry loss)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("-- segment 3: padding (26 positions, no loss)"), std::string::npos) << r.out;
  // t seg pos id token target loss: the prompt's last byte predicts the completion's first.
  EXPECT_NE(r.out.find("      2    0     2      91  '|'                      'c'                      yes"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("      1    0     1      65  'b'                      -                        no"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("      4    0     4      67  'd'                      '<|endoftext|>'          yes"),
            std::string::npos)
      << r.out;
  // Positions restart in the next example, whose segment id is 1.
  EXPECT_NE(r.out.find("      5    1     0      68  'e'"), std::string::npos) << r.out;

  const CmdResult unpacked = data({"inspect", cfg, "--windows", "2", "data.pack=false"});
  ASSERT_EQ(unpacked.rc, 0) << unpacked.err;
  EXPECT_NE(unpacked.out.find("one example per row, file order: 3 rows"), std::string::npos) << unpacked.out;
  EXPECT_NE(unpacked.out.find("window 1 (step 0, row 1): 1 example, 5 of 40"), std::string::npos) << unpacked.out;
}

TEST_F(SftCli, InspectBuildsTheCmudictSplitsOnFirstUse) {
  std::string js = "export const dictionary = {\"zz\": \"Z\"";
  for (int i = 0; i < 60; ++i) js += ", \"w" + std::to_string(i) + "\": \"W IH1 N\"";
  test::write_file(dir_.file("index.js"), js + "}\n");  // 61 words: 3 for val
  const std::string cfg = config("  cmudict: " + dir_.file("index.js") + "\n  path: " + dir_.file("cmu/train.jsonl") +
                                 "\n  val_path: " + dir_.file("cmu/val.jsonl") + "\n");
  const CmdResult r = data({"inspect", cfg, "--split", "val", "--windows", "1"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(std::filesystem::exists(dir_.file("cmu/cmudict.json")));
  EXPECT_NE(r.out.find("'w'"), std::string::npos) << r.out;  // "word: ..."
  // The test split exists on disk, but this config names none.
  const CmdResult t = data({"inspect", cfg, "--split", "test"});
  EXPECT_EQ(t.rc, 2);
  EXPECT_NE(t.err.find("no test split (data.test_path is not set)"), std::string::npos) << t.err;
}

TEST_F(SftCli, InspectErrors) {
  test::write_file(dir_.file("bad.jsonl"), "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"}\n");
  const CmdResult bad = data({"inspect", config("  path: " + dir_.file("bad.jsonl") + "\n")});
  EXPECT_EQ(bad.rc, 2);
  EXPECT_NE(bad.err.find(dir_.file("bad.jsonl") + ":2: has \"prompt\" but no \"completion\""), std::string::npos)
      << bad.err;
  const CmdResult skipped =
      data({"inspect", config("  path: " + dir_.file("bad.jsonl") + "\n  skip_bad_lines: true\n")});
  EXPECT_EQ(skipped.rc, 0) << skipped.err;
  EXPECT_NE(skipped.out.find("1 examples (1 bad lines skipped)"), std::string::npos) << skipped.out;
  EXPECT_NE(skipped.out.find("skipped: " + dir_.file("bad.jsonl") + ":2:"), std::string::npos) << skipped.out;

  const CmdResult missing = data({"inspect", config("  path: " + dir_.file("none.jsonl") + "\n")});
  EXPECT_EQ(missing.rc, 2);
  EXPECT_NE(missing.err.find("data.path: '" + dir_.file("none.jsonl") + "' does not exist"), std::string::npos)
      << missing.err;

  EXPECT_EQ(data({"inspect"}).rc, 2);
  const CmdResult opt = data({"inspect", config("  path: x\n"), "--windows", "0"});
  EXPECT_EQ(opt.rc, 2);
  EXPECT_NE(opt.err.find("--windows"), std::string::npos) << opt.err;
  EXPECT_EQ(data({"inspect", config("  path: x\n"), "--split", "dev"}).rc, 2);

  test::write_file(dir_.file("mlp.yaml"), "model: {type: mlp}\n");
  const CmdResult mlp = data({"inspect", dir_.file("mlp.yaml")});
  EXPECT_EQ(mlp.rc, 2);
  EXPECT_NE(mlp.err.find("data.type is not sft"), std::string::npos) << mlp.err;
}

}  // namespace
}  // namespace kiln

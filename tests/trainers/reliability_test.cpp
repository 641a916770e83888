// Issue #11, through the real `kiln` binary as a hostile user runs it: each
// case here once slipped through (accepted silently, failed late, or failed
// with a message that named nothing) and must now stop up front with exit 2
// and a message that names the file or key and what was expected.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "data/token_shard.h"
#include "data/tokenizer.h"
#include "tests/harness/temp_dir.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

const std::string kKiln = std::string(KILN_BINARY_DIR) + "/kiln";
const std::string kGptTiny = std::string(KILN_SOURCE_DIR) + "/configs/gpt_tiny.yaml";

struct CliRun {
  int status = -1;
  std::string output;  // stdout + stderr
};

// Runs `kiln ARGS` (a shell command line: quote what needs it), with `input`
// on stdin when given.
CliRun kiln(const std::string& args, const std::string& input_file = "") {
  CliRun r;
  std::string cmd = kKiln + " " + args + " 2>&1";
  if (!input_file.empty()) cmd += " < '" + input_file + "'";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

bool has(const CliRun& r, const std::string& needle) { return r.output.find(needle) != std::string::npos; }

// A 512-token vocabulary (256 bytes, 255 merges, <|endoftext|>) trained on a
// little text, saved in `dir`.
void save_tokenizer_512(const std::string& dir, const std::string& scratch) {
  std::string text;
  for (int i = 0; i < 400; ++i)
    text += "Fortune " + std::to_string(i) + ": the quick brown fox jumps over " + std::to_string(i % 13) +
            " lazy dogs; you'll find coins.\n";
  test::write_file(scratch, text);
  const CliRun r = kiln("tokenizer train --text '" + scratch + "' --vocab 512 --out '" + dir + "'");
  ASSERT_EQ(r.status, 0) << r.output;
  ASSERT_EQ(Tokenizer::load(dir).vocab_size(), 512);
}

// ---- item 4: merges and vocabulary must agree --------------------------------

TEST(Reliability, TruncatedOrEmptyVocabBpeIsRefused) {
  test::TempDir d;
  const std::string tok = d.file("tok");
  save_tokenizer_512(tok, d.file("text.txt"));
  test::write_file(d.file("in.txt"), "the quick brown fox");
  ASSERT_EQ(kiln("tokenizer encode --tokenizer '" + tok + "'", d.file("in.txt")).status, 0);

  // Header + the first 127 of 255 merges, then no merges at all.
  const std::string bpe = test::read_file(tok + "/vocab.bpe");
  size_t cut = bpe.find('\n') + 1;
  for (int i = 0; i < 127; ++i) cut = bpe.find('\n', cut) + 1;
  for (const auto& [name, text, count] : {std::tuple<std::string, std::string, std::string>{"truncated", bpe.substr(0, cut), "127"},
                                          {"header only", "#version: 0.2\n", "0"},
                                          {"empty", "", "0"}}) {
    SCOPED_TRACE(name);
    test::write_file(tok + "/vocab.bpe", text);
    const CliRun enc = kiln("tokenizer encode --tokenizer '" + tok + "'", d.file("in.txt"));
    EXPECT_EQ(enc.status, 2) << enc.output;
    EXPECT_TRUE(has(enc, tok + "/vocab.bpe: " + count + " merge(s)")) << enc.output;
    EXPECT_TRUE(has(enc, tok + "/encoder.json has 512 tokens")) << enc.output;
    EXPECT_TRUE(has(enc, "at least 255 merges")) << enc.output;

    // `kiln train` on a GPT whose data names the tokenizer refuses it too.
    const CliRun tr = kiln("train '" + kGptTiny + "' data.tokenizer='" + tok + "' output_dir='" + d.file("run") + "'");
    EXPECT_EQ(tr.status, 2) << tr.output;
    EXPECT_TRUE(has(tr, tok + "/vocab.bpe: " + count + " merge(s)")) << tr.output;
  }
}

// ---- item 5: shard ids checked when the shard is opened ----------------------

TEST(Reliability, ShardIdOutsideTheVocabularyIsRefusedBeforeTraining) {
  test::TempDir d;
  const std::string tok = d.file("tok");
  save_tokenizer_512(tok, d.file("text.txt"));
  // 60 steps of 8 x 33 tokens; id 65535 deep in the shard, where the old
  // per-batch check met it only after checkpoints had been written.
  std::vector<int32_t> ids(16000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919) % 512);
  ids[12345] = 65535;
  const std::string shard = d.file("train_000000.bin");
  write_token_shard(shard, ids);
  const std::string run = d.file("run");
  const CliRun r = kiln("train '" + kGptTiny + "' data.tokenizer='" + tok + "' data.train_shards='" + d.file("train_*.bin") +
                        "' 'data.val_shards=\"\"' output_dir='" + run + "'");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r, shard + ": token 12345 (byte offset " + std::to_string(1024 + 2 * 12345) + ") is id 65535"))
      << r.output;
  EXPECT_TRUE(has(r, "vocabulary of 512")) << r.output;
  EXPECT_FALSE(fs::exists(fs::path(run) / "checkpoints")) << "trained before refusing the shard:\n" << r.output;
}

// ---- item 8a: YAML nested too deep ----------------------------------------

TEST(Reliability, DeeplyNestedYamlSaysWhatIsWrong) {
  test::TempDir d;
  for (const std::string& open : {std::string("["), std::string("{a: ")}) {
    std::string y = "name: t\nmodel: ";
    for (int i = 0; i < 5000; ++i) y += open;
    test::write_file(d.file("deep.yaml"), y + "\n");
    const CliRun r = kiln("validate '" + d.file("deep.yaml") + "'");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_TRUE(has(r, d.file("deep.yaml"))) << r.output;
    EXPECT_TRUE(has(r, "nested too deeply")) << r.output;
    EXPECT_FALSE(has(r, "bad file")) << r.output;
  }
  // The same in a command-line override's value.
  std::string v;
  for (int i = 0; i < 5000; ++i) v += "[";
  const CliRun r = kiln("validate '" + std::string(KILN_SOURCE_DIR) + "/configs/mlp_tiny.yaml' 'model.mlp.hidden=" + v + "'");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r, "model.mlp.hidden")) << r.output;
  EXPECT_TRUE(has(r, "nested too deeply")) << r.output;
}

// ---- fuzzing finding: a config string that is not UTF-8 ----------------------
// yaml-cpp passed the bytes through and the emitter wrote U+FFFD for them, so
// the run directory's config.yaml did not read back as the config that ran.

TEST(Reliability, ConfigStringsMustBeUtf8) {
  test::TempDir d;
  test::write_file(d.file("bad.yaml"), "name: \"t\xff\"\ndevice: cpu\nmodel: {type: mlp}\ndata: {type: fashion_mnist}\n");
  const CliRun r = kiln("validate '" + d.file("bad.yaml") + "'");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r, "name: expected UTF-8 text, got byte 0xFF at offset 1")) << r.output;
  const CliRun o = kiln("validate '" + std::string(KILN_SOURCE_DIR) + "/configs/mlp_tiny.yaml' 'output_dir=runs/\xc3('");
  EXPECT_EQ(o.status, 2) << o.output;
  EXPECT_TRUE(has(o, "output_dir: expected UTF-8 text, got byte 0xC3 at offset 5")) << o.output;
}

// ---- item 8b: kiln sample's numeric options name their range --------------

TEST(Reliability, SampleOptionsOutOfRangeNameTheRange) {
  struct Case {
    std::string opt, value, range;
  };
  for (const Case& c : {Case{"--tokens", "99999999999", "[1, 16777216]"}, Case{"--tokens", "0", "[1, 16777216]"},
                        Case{"--tokens", "12x", "[1, 16777216]"}, Case{"--top-k", "-1", "[0, 16777216]"},
                        Case{"--min-tokens", "99999999999999999999", "[0, 16777216]"},
                        Case{"--seed", "-5", "[0, 9223372036854775807]"}}) {
    const CliRun r = kiln("sample /nonexistent " + c.opt + " " + c.value);
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_TRUE(has(r, c.opt + ": expected an integer in " + c.range + ", got '" + c.value + "'")) << r.output;
  }
  const CliRun t = kiln("sample /nonexistent --temperature 1e9");
  EXPECT_EQ(t.status, 2);
  EXPECT_TRUE(has(t, "--temperature: expected a number in [0, 100], got '1e9'")) << t.output;
}

}  // namespace
}  // namespace kiln

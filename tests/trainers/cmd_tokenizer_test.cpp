// `kiln tokenizer` and `kiln data` as a user runs them: train, encode,
// decode, prepare; usage errors and bad input exit 2 with a message.
#include "trainers/cmd_tokenizer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "data/token_shard.h"
#include "data/tokenizer.h"
#include "tests/harness/temp_dir.h"
#include "trainers/cmd_data.h"

namespace kiln {
namespace {

// Runs a command with `input` on stdin; captures stdout and stderr.
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

template <typename Fn>
CmdResult run_cmd(std::vector<std::string> args, const std::string& input, Fn&& fn) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  std::FILE* in = std::tmpfile();
  std::FILE* out = std::tmpfile();
  std::FILE* err = std::tmpfile();
  std::fwrite(input.data(), 1, input.size(), in);
  std::rewind(in);
  const int rc = fn(static_cast<int>(argv.size()), argv.data(), in, out, err);
  std::fclose(in);
  return CmdResult{rc, slurp(out), slurp(err)};
}

CmdResult tokenizer(std::vector<std::string> args, const std::string& input = "") {
  return run_cmd(std::move(args), input, [](int c, char** v, std::FILE* i, std::FILE* o, std::FILE* e) {
    return cmd_tokenizer(c, v, i, o, e);
  });
}

CmdResult data(std::vector<std::string> args) {
  return run_cmd(std::move(args), "", [](int c, char** v, std::FILE*, std::FILE* o, std::FILE* e) {
    return cmd_data(c, v, o, e);
  });
}

class TokenizerCli : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ofstream f(dir_.file("corpus.txt"), std::ios::binary);
    for (int i = 0; i < 200; ++i) f << "Fortune " << i << ": you'll find " << (i % 9) << " coins.\n%\n";
  }
  test::TempDir dir_;
};

TEST_F(TokenizerCli, TrainEncodeDecode) {
  const CmdResult t = tokenizer({"train", "--text", dir_.file("corpus.txt"), "--vocab", "300", "--out", dir_.file("tok")});
  ASSERT_EQ(t.rc, 0) << t.err;
  EXPECT_NE(t.out.find("300-token BPE"), std::string::npos) << t.out;
  EXPECT_EQ(Tokenizer::load(dir_.file("tok")).vocab_size(), 300);

  const std::string text = "Fortune 7: you'll find\xff coins.<|endoftext|>";
  const CmdResult e = tokenizer({"encode", "--tokenizer", dir_.file("tok")}, text);
  ASSERT_EQ(e.rc, 0) << e.err;
  EXPECT_NE(e.out.find(" 299\n"), std::string::npos) << e.out;  // <|endoftext|> is the last id
  const CmdResult d = tokenizer({"decode", "--tokenizer", dir_.file("tok")}, e.out);
  ASSERT_EQ(d.rc, 0) << d.err;
  EXPECT_EQ(d.out, text);

  const CmdResult plain = tokenizer({"encode", "--tokenizer=" + dir_.file("tok"), "--no-special"}, "<|endoftext|>");
  EXPECT_EQ(plain.out.find("299"), std::string::npos) << plain.out;
}

TEST_F(TokenizerCli, PrepareWritesShards) {
  ASSERT_EQ(tokenizer({"train", "--text", dir_.file("corpus.txt"), "--vocab", "280", "--out", dir_.file("tok")}).rc, 0);
  const CmdResult p = data({"prepare", "--text", dir_.file("corpus.txt"), "--tokenizer", dir_.file("tok"), "--out",
                      dir_.file("shards"), "--val-fraction", "0.2"});
  ASSERT_EQ(p.rc, 0) << p.err;
  EXPECT_NE(p.out.find("train tokens"), std::string::npos) << p.out;
  EXPECT_EQ(find_token_shards(dir_.file("shards"), "train").size(), 1u);
  EXPECT_EQ(find_token_shards(dir_.file("shards"), "val").size(), 1u);
}

TEST_F(TokenizerCli, UsageErrorsExit2) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{},
                                             {"frobnicate"},
                                             {"train", "--vocab", "300"},
                                             {"train", "--vocab", "12", "--out", "x"},
                                             {"train", "--vocab", "3e2", "--out", "x"},
                                             {"encode"},
                                             {"encode", "--tokenizer"},
                                             {"encode", "--tokenizer", "a", "--bogus"},
                                             {"decode", "--tokenizer", "a", "extra"}}) {
    const CmdResult r = tokenizer(args);
    EXPECT_EQ(r.rc, 2) << (args.empty() ? "(none)" : args[0]);
    EXPECT_NE(r.err.find("usage: kiln tokenizer"), std::string::npos) << r.err;
  }
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {}, {"prepare"}, {"prepare", "--tokenizer", "t", "--out", "o", "--val-fraction", "1.5"},
           {"prepare", "--tokenizer", "t", "--out", "o", "--shard-tokens", "0"}, {"shuffle"}}) {
    const CmdResult r = data(args);
    EXPECT_EQ(r.rc, 2);
    EXPECT_NE(r.err.find("usage: kiln data prepare"), std::string::npos) << r.err;
  }
  EXPECT_EQ(tokenizer({"--help"}).rc, 0);
}

TEST_F(TokenizerCli, BadInputExits2WithMessage) {
  const CmdResult missing = tokenizer({"encode", "--tokenizer", dir_.file("nope")}, "hi");
  EXPECT_EQ(missing.rc, 2);
  EXPECT_EQ(missing.err.rfind("kiln: error: ", 0), 0u) << missing.err;
  EXPECT_NE(missing.err.find(dir_.file("nope")), std::string::npos);

  ASSERT_EQ(tokenizer({"train", "--text", dir_.file("corpus.txt"), "--vocab", "270", "--out", dir_.file("tok")}).rc, 0);
  const CmdResult bad_ids = tokenizer({"decode", "--tokenizer", dir_.file("tok")}, "1 2 x3");
  EXPECT_EQ(bad_ids.rc, 2);
  EXPECT_NE(bad_ids.err.find("item 3"), std::string::npos) << bad_ids.err;
  EXPECT_EQ(tokenizer({"decode", "--tokenizer", dir_.file("tok")}, "270").rc, 2);  // == vocab size

  const CmdResult no_text = data({"prepare", "--text", dir_.file("missing.txt"), "--tokenizer", dir_.file("tok"), "--out",
                            dir_.file("o")});
  EXPECT_EQ(no_text.rc, 2);
  EXPECT_NE(no_text.err.find("missing.txt"), std::string::npos) << no_text.err;
}

}  // namespace
}  // namespace kiln

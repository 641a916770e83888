// Reading corpora (fortune files, plain text) and prepare_token_data's shards.
#include "data/corpus.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/bpe_train.h"
#include "data/file_io.h"
#include "data/token_shard.h"
#include "data/tokenizer.h"
#include "runtime/error.h"
#include "tests/harness/temp_dir.h"

namespace kiln {
namespace {

void write_text(const std::string& path, const std::string& s) { std::ofstream(path, std::ios::binary) << s; }

TEST(Corpus, SplitFortunes) {
  EXPECT_EQ(split_fortunes("A day for firm decisions!\n%\nTwo\nlines.\n%\n\n%\r\nlast, no newline"),
            (std::vector<std::string>{"A day for firm decisions!\n", "Two\nlines.\n", "last, no newline"}));
  EXPECT_EQ(split_fortunes("%\n%\n"), std::vector<std::string>{});
  EXPECT_EQ(split_fortunes("100% sure\n%%\n"), std::vector<std::string>{"100% sure\n%%\n"});  // only a lone % separates
}

TEST(Corpus, FortuneDirectorySkipsIndexesLinksAndFolders) {
  test::TempDir dir;
  write_text(dir.file("b"), "one\n%\ntwo\n");
  write_text(dir.file("a"), "zero\n");
  write_text(dir.file("a.dat"), std::string("\x00\x00\x00\x02", 4));
  ASSERT_EQ(symlink("a", dir.file("a.u8").c_str()), 0);
  ASSERT_EQ(symlink("b", dir.file("link").c_str()), 0);
  std::filesystem::create_directory(dir.file("sub"));
  write_text(dir.file("sub/c"), "hidden\n");
  EXPECT_EQ(list_fortune_files(dir.path()), (std::vector<std::string>{dir.file("a"), dir.file("b")}));
  EXPECT_EQ(read_documents(dir.path()), (std::vector<std::string>{"zero\n", "one\n", "two\n"}));
  EXPECT_THROW(list_fortune_files(dir.file("sub/c")), InputError);
  EXPECT_THROW(list_fortune_files(dir.file("nope")), InputError);
}

TEST(Corpus, PlainTextFiles) {
  test::TempDir dir;
  write_text(dir.file("docs.txt"), "first doc<|endoftext|>second\n<|endoftext|><|endoftext|>third");
  EXPECT_EQ(read_documents(dir.file("docs.txt")), (std::vector<std::string>{"first doc", "second\n", "third"}));
  write_text(dir.file("one.txt"), "just text\nwith 50% lines\n");
  EXPECT_EQ(read_documents(dir.file("one.txt")), std::vector<std::string>{"just text\nwith 50% lines\n"});
  EXPECT_EQ(read_documents(std::vector<std::string>{dir.file("one.txt"), dir.file("docs.txt")}).size(), 4u);
  EXPECT_THROW(read_documents(dir.file("missing.txt")), InputError);
  EXPECT_EQ(join_documents({"a", "b", "c"}, "|"), "a|b|c");
}

TEST(Corpus, DebianFortunes) {
  std::error_code ec;
  if (!std::filesystem::is_directory(kFortunesDir, ec)) GTEST_SKIP() << kFortunesDir << " not found (Debian package `fortunes`)";
  const std::vector<std::string> files = list_fortune_files();
  EXPECT_GE(files.size(), 10u);
  for (const std::string& f : files) {
    EXPECT_EQ(f.find(".dat"), std::string::npos);
    EXPECT_EQ(f.find(".u8"), std::string::npos);
  }
  const std::vector<std::string> docs = read_documents(kFortunesDir);
  EXPECT_GT(docs.size(), 5000u);
  size_t bytes = 0;
  for (const std::string& d : docs) bytes += d.size();
  EXPECT_GT(bytes, 2000000u);  // about 2.6 MB of text
}

class Prepare : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string fortunes;
    for (int i = 0; i < 300; ++i)
      docs_.push_back("Fortune number " + std::to_string(i) + ": " + std::string(i % 7 + 1, 'x') + " today.\n");
    for (const auto& d : docs_) fortunes += d + "%\n";
    write_text(dir_.file("corpus"), fortunes);
    train_bpe(join_documents(docs_), 300).save(dir_.file("tok"));
  }
  // All documents of a split, decoded from its shards (each starts with EOT).
  std::vector<std::string> decode_split(const std::vector<std::string>& shards) {
    const Tokenizer tok = Tokenizer::load(dir_.file("tok"));
    std::vector<int32_t> ids;
    for (const auto& s : shards) {
      const std::vector<uint16_t> t = read_token_shard(s);
      ids.insert(ids.end(), t.begin(), t.end());
    }
    std::vector<std::string> out;
    EXPECT_TRUE(ids.empty() || ids[0] == tok.eot_id());
    std::vector<int32_t> cur;
    for (size_t i = 0; i <= ids.size(); ++i) {
      if (i == ids.size() || ids[i] == tok.eot_id()) {
        if (i > 0) out.push_back(tok.decode(cur));
        cur.clear();
      } else {
        cur.push_back(ids[i]);
      }
    }
    return out;
  }
  test::TempDir dir_;
  std::vector<std::string> docs_;
};

TEST_F(Prepare, WritesTrainAndValShards) {
  const PrepareStats st = prepare_token_data({dir_.file("corpus")}, dir_.file("tok"), dir_.file("out"), 0.1, 1000);
  EXPECT_EQ(st.documents, 300);
  EXPECT_EQ(st.train_documents + st.val_documents, 300);
  EXPECT_GT(st.val_documents, 10);  // about 30
  EXPECT_LT(st.val_documents, 60);
  EXPECT_GT(st.train_shards.size(), 1u);  // 1000-token shards
  EXPECT_EQ(find_token_shards(dir_.file("out"), "train"), st.train_shards);
  EXPECT_EQ(find_token_shards(dir_.file("out"), "val"), st.val_shards);

  // Every document is in exactly one split, in order, and decodes to itself.
  const std::vector<std::string> train = decode_split(st.train_shards), val = decode_split(st.val_shards);
  EXPECT_EQ(static_cast<int64_t>(train.size()), st.train_documents);
  EXPECT_EQ(static_cast<int64_t>(val.size()), st.val_documents);
  std::vector<std::string> merged;
  size_t ti = 0, vi = 0;
  for (const std::string& d : docs_) {
    if (ti < train.size() && train[ti] == d) merged.push_back(train[ti++]);
    else if (vi < val.size() && val[vi] == d) merged.push_back(val[vi++]);
  }
  EXPECT_EQ(merged, docs_);

  const nlohmann::json j = nlohmann::json::parse(read_file(dir_.file("out/prepare.json")));
  EXPECT_EQ(j["train"]["tokens"].get<int64_t>(), st.train_tokens);
  EXPECT_EQ(j["val"]["documents"].get<int64_t>(), st.val_documents);
  EXPECT_EQ(j["vocab_size"].get<int>(), 300);

  // Deterministic, and independent of the order of the input.
  std::string reversed;
  for (auto it = docs_.rbegin(); it != docs_.rend(); ++it) reversed += *it + "%\n";
  write_text(dir_.file("reversed"), reversed);
  const PrepareStats again = prepare_token_data({dir_.file("reversed")}, dir_.file("tok"), dir_.file("out2"), 0.1);
  EXPECT_EQ(again.val_documents, st.val_documents);
  std::vector<std::string> val2 = decode_split(again.val_shards);
  std::reverse(val2.begin(), val2.end());
  EXPECT_EQ(val2, val);

  // A second run with bigger shards leaves no stale shard behind.
  prepare_token_data({dir_.file("corpus")}, dir_.file("tok"), dir_.file("out"), 0.1);
  EXPECT_EQ(find_token_shards(dir_.file("out"), "train").size(), 1u);
}

TEST_F(Prepare, SingleDocumentIsCutAtALine) {
  write_text(dir_.file("single.txt"), "line one\nline two\nline three\nline four\nline five\n");
  const PrepareStats st = prepare_token_data({dir_.file("single.txt")}, dir_.file("tok"), dir_.file("out"), 0.25);
  EXPECT_EQ(decode_split(st.train_shards), std::vector<std::string>{"line one\nline two\nline three\nline four\n"});
  EXPECT_EQ(decode_split(st.val_shards), std::vector<std::string>{"line five\n"});
}

TEST_F(Prepare, NoValFraction) {
  const PrepareStats st = prepare_token_data({dir_.file("corpus")}, dir_.file("tok"), dir_.file("out"), 0.0);
  EXPECT_EQ(st.val_documents, 0);
  EXPECT_TRUE(st.val_shards.empty());
  EXPECT_EQ(st.train_documents, 300);
}

TEST_F(Prepare, BadInput) {
  EXPECT_THROW(prepare_token_data({dir_.file("corpus")}, dir_.file("tok"), dir_.file("out"), 1.0), InputError);
  EXPECT_THROW(prepare_token_data({dir_.file("corpus")}, dir_.file("tok"), dir_.file("out"), -0.1), InputError);
  EXPECT_THROW(prepare_token_data({dir_.file("nope")}, dir_.file("tok"), dir_.file("out"), 0.1), InputError);
  EXPECT_THROW(prepare_token_data({dir_.file("corpus")}, dir_.file("notok"), dir_.file("out"), 0.1), InputError);
  EXPECT_THROW(prepare_token_data({}, dir_.file("tok"), dir_.file("out"), 0.1), InputError);
  write_text(dir_.file("empty.txt"), "");
  EXPECT_THROW(prepare_token_data({dir_.file("empty.txt")}, dir_.file("tok"), dir_.file("out"), 0.1), InputError);
}

}  // namespace
}  // namespace kiln

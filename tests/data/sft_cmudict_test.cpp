// The CMU dictionary converter: both input formats, phone checks, headword
// splits (every pronunciation of a word in one split, deterministic from the
// seed), the JSONL it writes, and the installed dictionary when present.
#include "data/cmudict.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "data/sft_dataset.h"
#include "runtime/error.h"
#include "tests/harness/temp_dir.h"

namespace kiln {
namespace {

const char* kModule =
    "/** @type {{ [word: string]: string }} */\n"
    "export const dictionary = {\n"
    "  \"'bout\": \"B AW1 T\",\n"
    "  \"a\": \"AH0\",\n"
    "  \"a(2)\": \"EY1\",\n"
    "  \"aalborg\": \"AO1 L B AO0 R G # place, danish\",\n"
    "  \"knight\": \"N AY1 T\",\n"
    "  \"read\": \"R EH1 D\",\n"
    "  \"read(2)\": \"R IY1 D\",\n"
    "  \"read(3)\": \"R EH1 D\",\n"
    "  \"bogus\": \"B OH1 G\",\n"
    "  \"tomato\": \"T AH0 M EY1 T OW2\",\n"
    "  \"tomato(2)\": \"T AH0 M AA1 T OW2\"\n"
    "}\n";

TEST(Cmudict, Phones) {
  for (const char* p : {"AA0", "AY1", "ER2", "N", "NG", "ZH", "HH"}) EXPECT_TRUE(is_arpabet_phone(p)) << p;
  for (const char* p : {"AY", "AY3", "N1", "OH1", "", "ay1", "X"}) EXPECT_FALSE(is_arpabet_phone(p)) << p;
}

TEST(Cmudict, ReadsTheNpmModule) {
  test::TempDir dir;
  test::write_file(dir.file("index.js"), kModule);
  CmudictReadStats st;
  const auto words = read_cmudict(dir.file("index.js"), &st);
  EXPECT_EQ(st.entries, 11);
  EXPECT_EQ(st.skipped, 1);  // "bogus": OH1 is no ARPAbet phone
  ASSERT_EQ(st.first_skipped.size(), 1u);
  EXPECT_NE(st.first_skipped[0].find("bogus"), std::string::npos);
  EXPECT_EQ(st.duplicates, 1);  // read(3) repeats read
  ASSERT_EQ(words.size(), 6u);
  std::map<std::string, std::vector<std::string>> m;
  for (const auto& w : words) m[w.word] = w.prons;
  EXPECT_EQ(words[0].word, "'bout");  // bytewise order
  EXPECT_EQ(m["a"], (std::vector<std::string>{"AH0", "EY1"}));
  EXPECT_EQ(m["aalborg"], std::vector<std::string>{"AO1 L B AO0 R G"});  // comment removed
  EXPECT_EQ(m["read"], (std::vector<std::string>{"R EH1 D", "R IY1 D"}));
  EXPECT_EQ(m["tomato"].size(), 2u);
}

TEST(Cmudict, ReadsTheTextFormat) {
  test::TempDir dir;
  test::write_file(dir.file("cmudict.txt"), ";;; comment line\nKNIGHT  N AY1 T\nREAD  R EH1 D\nREAD(2)  R IY1 D\r\n\n");
  const auto words = read_cmudict(dir.file("cmudict.txt"));
  ASSERT_EQ(words.size(), 2u);
  EXPECT_EQ(words[0].word, "knight");
  EXPECT_EQ(words[1].prons, (std::vector<std::string>{"R EH1 D", "R IY1 D"}));
  test::write_file(dir.file("bad.txt"), "KNIGHT\n");
  EXPECT_THROW(read_cmudict(dir.file("bad.txt")), InputError);
  test::write_file(dir.file("bad.js"), "export const dictionary = {\"a\": 1}\n");
  EXPECT_THROW(read_cmudict(dir.file("bad.js")), InputError);
  test::write_file(dir.file("empty.js"), "export const dictionary = {}\n");
  EXPECT_THROW(read_cmudict(dir.file("empty.js")), InputError);
  EXPECT_THROW(read_cmudict(dir.file("missing.js")), InputError);
}

// word -> split index, and the records of a split file.
std::vector<SftRecord> records(const std::string& path) { return read_sft_jsonl(path, false, nullptr); }

std::string word_of(const SftRecord& r) { return r.prompt.substr(6, r.prompt.size() - 6 - 6); }  // "word: X\npron:"

TEST(Cmudict, SplitsByHeadword) {
  test::TempDir dir;
  // 300 words, some with two or three pronunciations.
  std::ostringstream js;
  js << "export const dictionary = {\n";
  for (int i = 0; i < 300; ++i) {
    js << "\"w" << i << "\": \"W IH1 N\",\n";
    if (i % 4 == 0) js << "\"w" << i << "(2)\": \"W AH0 N\",\n";
    if (i % 8 == 0) js << "\"w" << i << "(3)\": \"W EH2 N\",\n";
  }
  js << "\"zz\": \"Z\"}\n";
  test::write_file(dir.file("index.js"), js.str());
  CmudictSplitOptions o;
  o.val_fraction = 0.1;
  o.test_fraction = 0.05;
  o.seed = 9;
  const CmudictSplitStats st = build_cmudict_splits(dir.file("index.js"), dir.file("out"), o);
  EXPECT_EQ(st.words[0] + st.words[1] + st.words[2], 301);
  EXPECT_EQ(st.words[1], 30);  // round(301 · 0.1)
  EXPECT_EQ(st.words[2], 15);
  EXPECT_EQ(st.entries[0] + st.entries[1] + st.entries[2], 301 + 75 + 38);
  EXPECT_TRUE(cmudict_splits_ready(dir.file("out"), &o));

  std::map<std::string, int> split_of;
  const char* names[3] = {"train", "val", "test"};
  for (int s = 0; s < 3; ++s) {
    const auto recs = records(dir.file(std::string("out/") + names[s] + ".jsonl"));
    EXPECT_EQ(static_cast<int64_t>(recs.size()), st.entries[s]);
    std::map<std::string, std::set<std::string>> prons;
    for (const SftRecord& r : recs) {
      const std::string w = word_of(r);
      EXPECT_EQ(r.prompt, "word: " + w + "\npron:");
      ASSERT_EQ(r.completion.substr(0, 1), " ");
      const auto it = split_of.find(w);
      EXPECT_TRUE(it == split_of.end() || it->second == s) << w << " in two splits";
      split_of[w] = s;
      prons[w].insert(r.completion);
      // Every line of a word lists all its pronunciations as answers.
      EXPECT_NE(std::find(r.answers.begin(), r.answers.end(), r.completion), r.answers.end());
      const int n = w == "zz" ? 1 : 1 + (std::stoi(w.substr(1)) % 4 == 0) + (std::stoi(w.substr(1)) % 8 == 0);
      EXPECT_EQ(static_cast<int>(r.answers.size()), n) << w;
    }
    for (const auto& [w, p] : prons)
      EXPECT_EQ(p.size(), static_cast<size_t>(w == "zz" ? 1 : 1 + (std::stoi(w.substr(1)) % 4 == 0) +
                                                                   (std::stoi(w.substr(1)) % 8 == 0)));
  }
  EXPECT_EQ(split_of.size(), 301u);

  // The same seed writes the same bytes; another seed another split.
  build_cmudict_splits(dir.file("index.js"), dir.file("again"), o);
  for (const char* n : names)
    EXPECT_EQ(test::read_file(dir.file(std::string("out/") + n + ".jsonl")),
              test::read_file(dir.file(std::string("again/") + n + ".jsonl")));
  CmudictSplitOptions o2 = o;
  o2.seed = 10;
  EXPECT_FALSE(cmudict_splits_ready(dir.file("out"), &o2));
  build_cmudict_splits(dir.file("index.js"), dir.file("other"), o2);
  EXPECT_NE(test::read_file(dir.file("out/val.jsonl")), test::read_file(dir.file("other/val.jsonl")));

  // A missing split or manifest means not ready.
  std::filesystem::remove(dir.file("again/test.jsonl"));
  EXPECT_FALSE(cmudict_splits_ready(dir.file("again")));
  EXPECT_FALSE(cmudict_splits_ready(dir.file("nowhere")));
  EXPECT_TRUE(cmudict_splits_ready(dir.file("other")));  // any options
}

TEST(Cmudict, OneLineFormat) {
  test::TempDir dir;
  test::write_file(dir.file("index.js"), kModule);
  CmudictSplitOptions o;
  o.val_fraction = 0;
  o.test_fraction = 0;
  build_cmudict_splits(dir.file("index.js"), dir.file("out"), o);
  const std::string train = test::read_file(dir.file("out/train.jsonl"));
  EXPECT_NE(train.find("{\"prompt\":\"word: knight\\npron:\",\"completion\":\" N AY1 T\",\"answers\":[\" N AY1 T\"],"
                       "\"word\":\"knight\"}\n"),
            std::string::npos)
      << train;
  EXPECT_EQ(test::read_file(dir.file("out/val.jsonl")), "");
  EXPECT_THROW(build_cmudict_splits(dir.file("index.js"), dir.file("x"), CmudictSplitOptions{0.6, 0.5, 0}), InputError);
}

TEST(Cmudict, InstalledDictionary) {
  if (!std::filesystem::exists(kCmudictPath)) GTEST_SKIP() << kCmudictPath << " is not installed (tools/setup.sh)";
  CmudictReadStats st;
  const auto words = read_cmudict(kCmudictPath, &st);
  EXPECT_EQ(st.entries, 135155);  // cmu-pronouncing-dictionary 3.0.0
  EXPECT_EQ(st.skipped, 0);
  EXPECT_EQ(words.size(), 126046u);
  const auto it = std::find_if(words.begin(), words.end(), [](const CmudictWord& w) { return w.word == "knight"; });
  ASSERT_NE(it, words.end());
  EXPECT_EQ(it->prons, std::vector<std::string>{"N AY1 T"});
}

}  // namespace
}  // namespace kiln

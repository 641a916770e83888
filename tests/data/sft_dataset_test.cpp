// SFT records and examples: JSONL parsing and its errors (file and line),
// UTF-8, the prompt and chat templates, loss masks, truncation both ways.
//
// The tokenizer here has no merges: one token per byte, plus <|endoftext|>
// (id 256), so token counts are byte counts and every expectation can be
// written as text.
#include "data/sft_dataset.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/error.h"
#include "tests/harness/temp_dir.h"

namespace kiln {
namespace {

const Tokenizer& bytes_tok() {
  static const Tokenizer t = Tokenizer::from_merges({});
  return t;
}

std::string text_of(const std::vector<int32_t>& ids, size_t from, size_t to) {
  return bytes_tok().decode(ids.data() + from, to - from);
}

// The message of the InputError `fn` throws ("" if none).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

std::vector<SftRecord> parse(const std::string& text, bool skip = false, SftParseStats* st = nullptr) {
  return parse_sft_jsonl(text, "f.jsonl", skip, st);
}

TEST(SftUtf8, FindsTheFirstBadByte) {
  EXPECT_EQ(find_invalid_utf8(""), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("plain ascii"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("ab\x80"), 2u);                 // lone continuation byte
  EXPECT_EQ(find_invalid_utf8("a\xC0\xAF"), 1u);              // overlong '/'
  EXPECT_EQ(find_invalid_utf8("a\xE0\x80\xAF"), 1u);          // overlong, 3 bytes
  EXPECT_EQ(find_invalid_utf8("xy\xED\xA0\x80"), 2u);         // UTF-16 surrogate D800
  EXPECT_EQ(find_invalid_utf8("\xF4\x90\x80\x80"), 0u);       // above U+10FFFF
  EXPECT_EQ(find_invalid_utf8("abc\xE2\x82"), 3u);            // cut short at the end
  EXPECT_EQ(find_invalid_utf8("\xC3(x"), 0u);                 // continuation missing
  EXPECT_EQ(find_invalid_utf8("ok\xFF"), 2u);
}

TEST(SftParse, PromptCompletionAndAnswers) {
  const auto r = parse(
      "{\"prompt\": \"word: knight\\npron:\", \"completion\": \" N AY1 T\"}\n"
      "\n"
      "{\"prompt\": \"p\", \"completion\": \"c\", \"answers\": [\"c\", \"d\"], \"word\": \"ignored\"}\r\n");
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].line, 1);
  EXPECT_EQ(r[0].prompt, "word: knight\npron:");
  EXPECT_EQ(r[0].completion, " N AY1 T");
  EXPECT_FALSE(r[0].is_chat());
  EXPECT_EQ(r[0].answers, std::vector<std::string>{" N AY1 T"});  // default: the completion
  EXPECT_EQ(r[1].line, 3);
  EXPECT_EQ(r[1].answers, (std::vector<std::string>{"c", "d"}));
}

TEST(SftParse, Messages) {
  const auto r = parse(
      "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", \"content\": \"hi\"},"
      " {\"role\": \"assistant\", \"content\": \"hello\"}, {\"role\": \"user\", \"content\": \"again\"},"
      " {\"role\": \"assistant\", \"content\": \"hello again\"}]}");
  ASSERT_EQ(r.size(), 1u);
  ASSERT_TRUE(r[0].is_chat());
  ASSERT_EQ(r[0].messages.size(), 5u);
  EXPECT_EQ(r[0].messages[0].role, SftRole::system);
  EXPECT_EQ(r[0].messages[2].role, SftRole::assistant);
  EXPECT_EQ(r[0].messages[4].content, "hello again");
  EXPECT_EQ(r[0].answers, std::vector<std::string>{"hello again"});  // the last assistant turn
}

TEST(SftParse, BomAndBlankLinesAndNoFinalNewline) {
  SftParseStats st;
  const auto r = parse("\xEF\xBB\xBF{\"prompt\": \"a\", \"completion\": \"b\"}\n   \n\t\n{\"prompt\": \"c\", "
                       "\"completion\": \"d\"}",
                       false, &st);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[1].line, 4);
  EXPECT_EQ(st.lines, 4);
  EXPECT_EQ(st.blank_lines, 2);
  EXPECT_EQ(st.records, 2);
  EXPECT_EQ(st.bad_lines, 0);
}

struct BadLine {
  const char* line;
  const char* expect;  // part of the message
};

TEST(SftParse, BadLinesStopWithFileAndLine) {
  const std::string good = "{\"prompt\": \"a\", \"completion\": \"b\"}\n";
  const std::vector<BadLine> cases = {
      {"{\"prompt\": \"a\", \"completion\": }", "not valid JSON"},
      {"not json at all", "not valid JSON"},
      {"[1, 2]", "expected a JSON object, got array"},
      {"\"just a string\"", "expected a JSON object, got string"},
      {"{\"prompt\": \"a\"}", "has \"prompt\" but no \"completion\""},
      {"{\"completion\": \"a\"}", "has \"completion\" but no \"prompt\""},
      {"{\"text\": \"a\"}", "expected \"prompt\" and \"completion\""},
      {"{\"prompt\": 3, \"completion\": \"b\"}", "\"prompt\" must be a string, got number"},
      {"{\"prompt\": \"a\", \"completion\": null}", "\"completion\" must be a string, got null"},
      {"{\"prompt\": \"a\", \"completion\": \"b\", \"messages\": []}", "has both"},
      {"{\"messages\": []}", "\"messages\" must be a non-empty array of turns, got an empty array"},
      {"{\"messages\": {\"role\": \"user\"}}", "\"messages\" must be a non-empty array of turns, got object"},
      {"{\"messages\": [\"hi\"]}", "messages[0] must be an object, got string"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"content\": \"b\"}]}", "messages[1].role is missing"},
      {"{\"messages\": [{\"role\": \"user\"}]}", "messages[0].content is missing"},
      {"{\"messages\": [{\"role\": \"bot\", \"content\": \"a\"}]}", "messages[0].role: 'bot' is not system"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "messages[0].\"content\" must be a string"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}", "no assistant turn"},
      {"{\"prompt\": \"a\", \"completion\": \"b\", \"answers\": []}", "\"answers\" must be a non-empty array"},
      {"{\"prompt\": \"a\", \"completion\": \"b\", \"answers\": \"b\"}", "\"answers\" must be a non-empty array of "
                                                                        "strings, got string"},
      {"{\"prompt\": \"a\", \"completion\": \"b\", \"answers\": [\"b\", 1]}", "answers[1] must be a string"},
      {"{\"prompt\": \"caf\xC3\", \"completion\": \"b\"}", "not valid UTF-8 (byte 16 of the line, 0xc3)"},
      {"{\"prompt\": \"\xED\xA0\x80\", \"completion\": \"b\"}", "not valid UTF-8 (byte 13 of the line, 0xed)"},
  };
  for (const BadLine& c : cases) {
    const std::string text = good + good + c.line + "\n" + good;
    const std::string msg = error_of([&] { parse(text); });
    EXPECT_NE(msg.find("f.jsonl:3: "), std::string::npos) << c.line << "\n -> " << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.line << "\n -> " << msg;
    EXPECT_NE(msg.find("data.skip_bad_lines"), std::string::npos) << msg;
  }
}

TEST(SftParse, SkipBadLinesCountsAndReports) {
  std::string text;
  for (int i = 1; i <= 20; ++i)
    text += i % 3 == 0 ? "{broken\n" : "{\"prompt\": \"p" + std::to_string(i) + "\", \"completion\": \"c\"}\n";
  SftParseStats st;
  const auto r = parse(text, true, &st);
  EXPECT_EQ(st.bad_lines, 6);  // lines 3, 6, ..., 18
  EXPECT_EQ(st.records, 14);
  EXPECT_EQ(r.size(), 14u);
  ASSERT_EQ(st.first_errors.size(), 5u);  // the first few are kept
  EXPECT_NE(st.first_errors[0].find("f.jsonl:3: not valid JSON"), std::string::npos) << st.first_errors[0];
  EXPECT_NE(st.first_errors[4].find("f.jsonl:15:"), std::string::npos) << st.first_errors[4];
  EXPECT_EQ(r[2].prompt, "p4");
  EXPECT_EQ(r[2].line, 4);
}

TEST(SftParse, ReadsFilesAndNamesThem) {
  test::TempDir dir;
  test::write_file(dir.file("a.jsonl"), "{\"prompt\": \"a\", \"completion\": \"b\"}\n{oops\n");
  const std::string msg = error_of([&] { read_sft_jsonl(dir.file("a.jsonl"), false, nullptr); });
  EXPECT_NE(msg.find(dir.file("a.jsonl") + ":2: not valid JSON"), std::string::npos) << msg;
  const std::string missing = error_of([&] { read_sft_jsonl(dir.file("none.jsonl"), false, nullptr); });
  EXPECT_NE(missing.find(dir.file("none.jsonl")), std::string::npos) << missing;
}

// --- templates and masks -----------------------------------------------------------

SftRecord pc(const std::string& prompt, const std::string& completion) {
  SftRecord r;
  r.prompt = prompt;
  r.completion = completion;
  r.answers = {completion};
  return r;
}

// The tokens that carry loss, as text.
std::string loss_text(const SftTokens& t) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < t.ids.size(); ++i)
    if (t.loss[i]) ids.push_back(t.ids[i]);
  return bytes_tok().decode(ids);
}

TEST(SftEncode, PromptTemplateAndLossMask) {
  SftTemplate tmpl;
  tmpl.prompt = "Q: {prompt}\nA:";
  const SftEncoder enc(bytes_tok(), tmpl);
  EXPECT_EQ(enc.eos(), 256);
  const SftTokens t = enc.encode(pc("knight", " N AY1 T"));
  ASSERT_EQ(t.ids.size(), t.loss.size());
  EXPECT_EQ(bytes_tok().decode(t.ids), "Q: knight\nA: N AY1 T<|endoftext|>");
  EXPECT_EQ(t.ids.back(), 256);
  EXPECT_EQ(t.prompt_len, 12);  // "Q: knight\nA:"
  EXPECT_EQ(text_of(t.ids, 0, 12), "Q: knight\nA:");
  EXPECT_EQ(loss_text(t), " N AY1 T<|endoftext|>");
  for (int64_t i = 0; i < t.prompt_len; ++i) EXPECT_EQ(t.loss[i], 0) << i;
  EXPECT_EQ(t.cut_begin, 3);  // the prompt's own span: "knight"
  EXPECT_EQ(t.cut_end, 9);
  EXPECT_EQ(enc.encode_prompt(pc("knight", " N AY1 T")),
            std::vector<int32_t>(t.ids.begin(), t.ids.begin() + t.prompt_len));
}

TEST(SftEncode, SpecialTextInARecordIsText) {
  const SftEncoder enc(bytes_tok(), SftTemplate{});
  const SftTokens t = enc.encode(pc("<|endoftext|>", "x<|endoftext|>"));
  int eos = 0;
  for (const int32_t id : t.ids) eos += id == 256;
  EXPECT_EQ(eos, 1);  // only the appended one
  EXPECT_EQ(t.ids.size(), 13u + 14u + 1u);
}

TEST(SftEncode, TemplateWithoutPromptOrTokenizerWithoutEos) {
  SftTemplate tmpl;
  tmpl.prompt = "no placeholder";
  EXPECT_NE(error_of([&] { SftEncoder(bytes_tok(), tmpl); }).find("has no {prompt}"), std::string::npos);
  const Tokenizer no_eos = Tokenizer::from_merges({}, {});
  EXPECT_NE(error_of([&] { SftEncoder(no_eos, SftTemplate{}); }).find("no <|endoftext|>"), std::string::npos);
}

TEST(SftEncode, ChatTemplateOnlyAssistantTurnsCarryLoss) {
  const auto r = parse(
      "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"U1\"},"
      " {\"role\": \"assistant\", \"content\": \"A1\"}, {\"role\": \"user\", \"content\": \"U2\"},"
      " {\"role\": \"assistant\", \"content\": \"A2\"}]}");
  const SftEncoder enc(bytes_tok(), SftTemplate{});
  const SftTokens t = enc.encode(r[0]);
  const std::string want_prompt =
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|endoftext|>"
      "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n";
  EXPECT_EQ(bytes_tok().decode(t.ids), want_prompt + "A2<|endoftext|>");
  EXPECT_EQ(loss_text(t), "A1<|endoftext|>A2<|endoftext|>");
  EXPECT_EQ(text_of(t.ids, 0, static_cast<size_t>(t.prompt_len)), want_prompt);
  // Truncation may cut everything before the last assistant header.
  EXPECT_EQ(t.cut_begin, 0);
  EXPECT_EQ(text_of(t.ids, static_cast<size_t>(t.cut_end), static_cast<size_t>(t.prompt_len)),
            "<|im_start|>assistant\n");
}

TEST(SftFitTest, TruncatesThePromptFromTheLeftOrDrops) {
  SftTemplate tmpl;
  tmpl.prompt = "Q:{prompt}|";
  const SftEncoder enc(bytes_tok(), tmpl);
  // "Q:abcdefgh|xyz" + EOS: 15 tokens, 14 positions.
  SftTokens t = enc.encode(pc("abcdefgh", "xyz"));
  ASSERT_EQ(t.ids.size(), 15u);
  SftTokens same = t;
  EXPECT_EQ(fit_sft_example(&same, 14, SftOverflow::truncate), SftFit::fits);
  EXPECT_EQ(same.ids, t.ids);

  SftTokens cut = t;
  EXPECT_EQ(fit_sft_example(&cut, 10, SftOverflow::truncate), SftFit::truncated);
  EXPECT_EQ(bytes_tok().decode(cut.ids), "Q:efgh|xyz<|endoftext|>");  // template whole, prompt's left cut
  EXPECT_EQ(cut.ids.size(), 11u);
  EXPECT_EQ(cut.prompt_len, 7);
  EXPECT_EQ(loss_text(cut), "xyz<|endoftext|>");

  SftTokens all = t;  // the whole prompt may go
  EXPECT_EQ(fit_sft_example(&all, 6, SftOverflow::truncate), SftFit::truncated);
  EXPECT_EQ(bytes_tok().decode(all.ids), "Q:|xyz<|endoftext|>");

  SftTokens too_long = t;  // template + completion alone do not fit
  EXPECT_EQ(fit_sft_example(&too_long, 5, SftOverflow::truncate), SftFit::dropped);

  SftTokens drop = t;
  EXPECT_EQ(fit_sft_example(&drop, 13, SftOverflow::drop), SftFit::dropped);
}

TEST(SftDatasetTest, CountsTruncatedAndDropped) {
  std::vector<SftRecord> recs = {pc("ab", "c"), pc("abcdefghij", "c"), pc("a", "cdefghijklmn"), pc("", "")};
  recs[1].line = 2;
  SftDataOptions o;
  o.max_len = 8;
  const SftDataset d = SftDataset::from_records(recs, "mem", bytes_tok(), o);
  // "abc"+EOS: 3 positions; "abcdefghijc"+EOS cut to 8; "acdefghijklmn"+EOS: 13 > 8 and only 1 prompt token
  // to cut, dropped; ""+EOS: one token, nothing to train, dropped.
  ASSERT_EQ(d.size(), 2);
  EXPECT_EQ(d.stats().examples, 2);
  EXPECT_EQ(d.stats().truncated, 1);
  EXPECT_EQ(d.stats().dropped, 2);
  EXPECT_EQ(d.length(0), 3);
  EXPECT_EQ(d.length(1), 8);
  EXPECT_EQ(d.record(1).line, 2);
  EXPECT_EQ(bytes_tok().decode(d.ids(1), 9), "defghijc<|endoftext|>");
  EXPECT_EQ(d.targets(0), 2);  // "c" and EOS are targets
  EXPECT_EQ(d.targets(1), 2);
  EXPECT_EQ(d.prompt_len(1), 7);
  EXPECT_EQ(d.stats().positions, 11);
  EXPECT_EQ(d.stats().loss_tokens, 4);
  EXPECT_EQ(d.stats().longest, 8);
  EXPECT_EQ(d.stats().summary(8), "2 examples (1 truncated, 2 dropped as longer than 8), 11 tokens, 4 carry loss, "
                                  "longest 8");

  o.overflow = SftOverflow::drop;
  const SftDataset dd = SftDataset::from_records(recs, "mem", bytes_tok(), o);
  EXPECT_EQ(dd.size(), 1);
  EXPECT_EQ(dd.stats().dropped, 3);
  EXPECT_EQ(dd.stats().truncated, 0);
  EXPECT_NE(dd.fingerprint(), d.fingerprint());
}

TEST(SftDatasetTest, FromFileWithSkippedLines) {
  test::TempDir dir;
  test::write_file(dir.file("t.jsonl"), "{\"prompt\": \"ab\", \"completion\": \"c\"}\nnope\n"
                                        "{\"prompt\": \"x\", \"completion\": \"yz\"}\n");
  SftDataOptions o;
  o.skip_bad_lines = true;
  const SftDataset d = SftDataset::from_file(dir.file("t.jsonl"), bytes_tok(), o);
  EXPECT_EQ(d.size(), 2);
  EXPECT_EQ(d.stats().parse.bad_lines, 1);
  EXPECT_EQ(d.record(1).line, 3);
  EXPECT_NE(d.stats().summary(o.max_len).find("1 bad lines skipped"), std::string::npos);
  o.skip_bad_lines = false;
  const std::string msg = error_of([&] { SftDataset::from_file(dir.file("t.jsonl"), bytes_tok(), o); });
  EXPECT_NE(msg.find("t.jsonl:2: not valid JSON"), std::string::npos) << msg;
}

}  // namespace
}  // namespace kiln

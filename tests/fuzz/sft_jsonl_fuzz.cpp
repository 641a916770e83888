// SFT JSONL (data/sft_dataset.h): one JSON object per line, prompt/completion
// or messages. Parsed strictly and with bad lines skipped. Oracle: what the
// strict parse accepts, the lenient one accepts identically, skipping nothing.
#include <optional>
#include <string>

#include "data/sft_dataset.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  kiln::SftParseStats stats;
  std::optional<std::vector<kiln::SftRecord>> lenient;
  try {
    lenient = kiln::parse_sft_jsonl(text, "fuzz.jsonl", true, &stats);
  } catch (const kiln::InputError&) {
  }
  std::vector<kiln::SftRecord> strict;
  try {
    strict = kiln::parse_sft_jsonl(text, "fuzz.jsonl", false, nullptr);
  } catch (const kiln::InputError&) {
    return 0;
  }
  if (!lenient || lenient->size() != strict.size() || stats.bad_lines != 0)
    kiln::fuzz::fail("a strict parse that succeeds must match the lenient one");
  for (size_t i = 0; i < strict.size(); ++i) {
    const kiln::SftRecord &s = strict[i], &l = (*lenient)[i];
    if (s.prompt != l.prompt || s.completion != l.completion || s.messages.size() != l.messages.size() ||
        s.answers != l.answers || s.line != l.line)
      kiln::fuzz::fail("strict and lenient parses differ at record " + std::to_string(i));
  }
  return 0;
}

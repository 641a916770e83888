// GPT-2 tokenizer files (data/tokenizer.h): input = encoder.json, "\n===\n",
// vocab.bpe, "\n===\n", text. Oracle: a tokenizer that loads encodes the
// text to ids inside its vocabulary, decodes them back to the same bytes,
// and the two BPE strategies (GPT-2's loop, the heap) agree on it.
#include <string>

#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = kiln::fuzz::split_parts(data, size, 3);
  const kiln::fuzz::MemFile enc(parts[0], "encoder.json"), bpe(parts[1], "vocab.bpe");
  try {
    const kiln::Tokenizer tok = kiln::Tokenizer::load_files(enc.path(), bpe.path());
    const std::string text(parts[2]);
    for (bool special : {false, true}) {
      const std::vector<int32_t> ids = tok.encode(text, special);
      for (int32_t id : ids)
        if (id < 0 || id >= tok.vocab_size()) kiln::fuzz::fail("encode gave id " + std::to_string(id));
      if (!special && tok.decode(ids) != text) kiln::fuzz::fail("decode(encode(text)) != text");
    }
    std::vector<int32_t> a, b;
    kiln::detail::bpe_piece(tok, text.substr(0, 256), false, &a);
    kiln::detail::bpe_piece(tok, text.substr(0, 256), true, &b);
    if (a != b) kiln::fuzz::fail("BPE loop and heap disagree");
  } catch (const kiln::InputError&) {
  }
  return 0;
}

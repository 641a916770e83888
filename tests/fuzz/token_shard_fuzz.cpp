// A token shard (data/token_shard.h: llm.c's 1024-byte header, uint16
// tokens), opened by path (mmap) as the token loader opens it, then checked
// against a vocabulary as the LM task has it checked. Oracle: size() tokens
// are readable and max_id() is their maximum.
#include <algorithm>

#include "data/token_shard.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const kiln::fuzz::MemFile f(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz_train.bin");
  try {
    const kiln::TokenShard s(f.path());
    if (s.size() * 2 + kiln::kShardHeaderBytes != size) kiln::fuzz::fail("shard size does not match the file");
    const uint16_t m = s.size() ? *std::max_element(s.data(), s.data() + s.size()) : 0;
    if (m != s.max_id()) kiln::fuzz::fail("max_id() is not the largest token");
    s.check_ids(512);
  } catch (const kiln::InputError&) {
  }
  return 0;
}

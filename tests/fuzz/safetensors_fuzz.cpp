// A safetensors file (data/safetensors.h): 8-byte header length, JSON header,
// tensor bytes. Oracle: every tensor a parse accepts lies inside the file
// (each byte of every tensor view is read).
#include <memory>
#include <vector>

#include "data/safetensors.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = std::make_shared<const std::vector<uint8_t>>(data, data + size);
  try {
    const kiln::SafetensorsFile f = kiln::parse_safetensors(bytes, "fuzz.safetensors");
    uint64_t h = 0;
    for (const auto& [name, t] : f.tensors) {
      const std::vector<uint8_t> b = t.bytes();
      h += kiln::fuzz::touch(b.data(), b.size()) + name.size();
    }
    if (h == 1) std::printf(" ");  // keep the reads
  } catch (const kiln::InputError&) {
  }
  return 0;
}

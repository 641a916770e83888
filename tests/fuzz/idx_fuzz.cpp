// An IDX file (data/idx.h), raw or gzip-compressed, read by path as the image
// task reads it. Oracle: the element count matches the dimensions and every
// element is readable.
#include "data/idx.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const kiln::fuzz::MemFile f(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.idx");
  try {
    const kiln::IdxArray a = kiln::read_idx(f.path());
    size_t n = 1;
    for (auto d : a.dims) n *= static_cast<size_t>(d);
    if (n * kiln::idx_type_size(a.type) != a.bytes.size()) kiln::fuzz::fail("IDX element count does not match its dims");
    if (kiln::fuzz::touch(a.bytes.data(), a.bytes.size()) == 1) std::printf(" ");
  } catch (const kiln::InputError&) {
  }
  return 0;
}

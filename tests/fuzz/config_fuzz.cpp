// The YAML config and its command-line overrides (trainers/config.h):
// input = YAML text, then optionally "\n===\n" and one override per line
// ("key.sub=value"). Oracle: a config that loads is printed back as YAML
// (to_yaml) and must load again to an equal config.
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_common.h"
#include "trainers/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = kiln::fuzz::split_parts(data, size, 2);
  std::vector<std::string> overrides;
  std::string_view rest = parts[1];
  while (!rest.empty()) {
    const size_t nl = rest.find('\n');
    overrides.emplace_back(rest.substr(0, nl));
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
  }
  kiln::TrainConfig c;
  try {
    c = kiln::parse_config(std::string(parts[0]), "fuzz.yaml", overrides);
  } catch (const kiln::InputError&) {
    return 0;
  }
  const std::string yaml = kiln::to_yaml(c);
  try {
    const kiln::TrainConfig back = kiln::parse_config(yaml, "fuzz.yaml");
    if (back != c) kiln::fuzz::fail("to_yaml does not load back to an equal config:\n" + yaml);
  } catch (const kiln::InputError& e) {
    kiln::fuzz::fail(std::string("to_yaml of a valid config does not load: ") + e.what() + "\n" + yaml);
  }
  return 0;
}

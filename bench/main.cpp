// kiln-bench: runs the registered benchmark entries (see bench/harness.h).
//
//   kiln-bench [--filter REGEX] [--quick] [--json PATH] [--compare torch.json] [--list]
//
// The peak-measuring entries (order 0: copy, gemm) always run, so every
// other result can be given as a fraction of a peak measured in this run.
// Exit status: 0 when every entry ran, 1 when any threw, 2 for bad usage.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>
#include <string>

#include "bench/harness.h"
#include "runtime/device.h"
#include "runtime/error.h"

namespace {

void usage(FILE* f) {
  std::fprintf(f,
               "usage: kiln-bench [--filter REGEX] [--quick] [--json PATH] [--compare TORCH_JSON] [--list]\n"
               "  --filter REGEX   run the entries whose name matches (the peak entries always run)\n"
               "  --quick          fewer and smaller shapes (CI smoke runs)\n"
               "  --json PATH      also write every result as one JSON document\n"
               "  --compare PATH   add PyTorch times from bench/torch_bench.py's JSON as a column\n"
               "  --list           print the entries and exit\n");
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kiln::bench;
  Options options;
  std::string filter, json_path;
  bool list = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kiln-bench: %s needs a value\n", flag);
        usage(stderr);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--filter") filter = value("--filter");
    else if (a == "--json") json_path = value("--json");
    else if (a == "--compare") options.compare_path = value("--compare");
    else if (a == "--quick") options.quick = true;
    else if (a == "--list") list = true;
    else if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    } else {
      std::fprintf(stderr, "kiln-bench: unknown argument '%s'\n", a.c_str());
      usage(stderr);
      return 2;
    }
  }

  const std::vector<Entry> entries = registered_entries();
  if (list) {
    for (const Entry& e : entries) std::printf("%-24s order %d\n", e.name.c_str(), e.order);
    return 0;
  }
  std::regex re;
  try {
    re = std::regex(filter.empty() ? ".*" : filter);
  } catch (const std::regex_error& e) {
    std::fprintf(stderr, "kiln-bench: --filter '%s' is not a valid regular expression: %s\n", filter.c_str(), e.what());
    return 2;
  }

  std::unique_ptr<Context> ctx;
  try {
    ctx = std::make_unique<Context>(options);
  } catch (const kiln::Error& e) {
    std::fprintf(stderr, "kiln-bench: %s\n", e.what());
    return 2;
  }
  if (!ctx->has_gpu())
    std::printf("kiln-bench: no GPU (%s); running the CPU entries only\n", kiln::cuda_unavailable_reason().c_str());

  int failed = 0, ran = 0;
  ctx->print_header();
  for (const Entry& e : entries) {
    if (e.order != 0 && !std::regex_search(e.name, re)) continue;
    ++ran;
    try {
      e.fn(*ctx);
    } catch (const std::exception& ex) {
      ++failed;
      std::fprintf(stderr, "kiln-bench: entry '%s' failed: %s\n", e.name.c_str(), ex.what());
      ctx->add_failure(e.name, ex.what());
    }
  }
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << ctx->json() << "\n";
    if (!out) {
      std::fprintf(stderr, "kiln-bench: cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  std::printf("kiln-bench: %d entries ran, %zu results, %d failed\n", ran, ctx->results().size(), failed);
  return failed ? 1 : 0;
}

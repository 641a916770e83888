// What the trainer tests check on a run, in one place: the `kiln` binary run
// as a user runs it (exit status and output), a run's metrics without the
// wall-clock fields, and its newest checkpoint's weights as bytes.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "data/safetensors.h"
#include "trainers/checkpoint.h"
#include "trainers/metrics.h"

namespace kiln::test {

struct CliRun {
  int status = -1;      ///< exit status (-1: did not exit normally)
  std::string output;   ///< stdout, plus stderr when asked for
};

/// `kiln ARGS` from the build directory; `with_stderr` false keeps stdout only.
inline CliRun run_kiln(const std::string& args, bool with_stderr = true) {
  CliRun r;
  const std::string cmd = std::string(KILN_BINARY_DIR) + "/kiln " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

/// RUN/metrics.jsonl without what differs run to run (throughput, MFU).
inline std::vector<nlohmann::json> deterministic_metrics(const std::string& run) {
  std::vector<nlohmann::json> m = read_metrics(run + "/metrics.jsonl");
  for (auto& line : m)
    for (const char* k : {"samples_per_s", "tokens_per_s", "mfu"}) line.erase(k);
  return m;
}

/// The newest valid checkpoint's weights, name -> bytes.
inline std::map<std::string, std::vector<uint8_t>> final_weights(const std::string& run) {
  auto ck = find_latest_valid_checkpoint(run);
  EXPECT_TRUE(ck.has_value()) << run;
  std::map<std::string, std::vector<uint8_t>> out;
  if (!ck) return out;
  SafetensorsFile f = read_safetensors(*ck + "/" + kCheckpointWeights);
  for (auto& [name, t] : f.tensors) out[name] = t.bytes();
  return out;
}

}  // namespace kiln::test

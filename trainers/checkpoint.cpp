#include "trainers/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/crc32.h"
#include "runtime/atomic_file.h"
#include "runtime/error.h"

namespace kiln {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kFormat = "kiln-checkpoint";
constexpr int kVersion = 1;

// "step_<digits>" → step; false for any other name (temporaries start with '.').
bool parse_step_name(const std::string& name, int64_t* step) {
  if (name.size() <= 5 || name.compare(0, 5, "step_") != 0) return false;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    char c = name[i];
    if (c < '0' || c > '9') return false;
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, c - '0', &v)) return false;
  }
  *step = v;
  return true;
}

// ".step_000123.tmp.<pid>" / ".step_000123.del.<pid>" → pid; 0 otherwise.
long temp_owner_pid(const std::string& name) {
  if (name.compare(0, 6, ".step_") != 0) return 0;
  for (const char* tag : {".tmp.", ".del."}) {
    size_t at = name.rfind(tag);
    if (at == std::string::npos) continue;
    std::string digits = name.substr(at + 5);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return 0;
    return std::strtol(digits.c_str(), nullptr, 10);
  }
  return 0;
}

bool process_alive(long pid) { return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH; }

void make_dirs(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create directory '" + dir + "': " + ec.message());
  if (!fs::is_directory(dir)) throw Error("'" + dir + "' exists and is not a directory");
}

std::string read_whole(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError("cannot open '" + path + "': " + std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw InputError("cannot read '" + path + "'");
  return ss.str();
}

struct ManifestEntry {
  std::string name;
  uint64_t size = 0;
  uint32_t crc = 0;
};

struct Manifest {
  int64_t step = -1;
  std::vector<ManifestEntry> files;
  const ManifestEntry& entry(const std::string& dir, const std::string& name) const {
    for (const auto& e : files)
      if (e.name == name) return e;
    throw InputError(dir + "/" + kCheckpointManifest + ": does not list " + name);
  }
};

// Reads and validates manifest.json; everything in it is checked because a
// checkpoint directory may have been copied, edited or truncated by hand.
Manifest read_manifest(const std::string& dir) {
  std::string path = dir + "/" + kCheckpointManifest;
  if (!fs::exists(path)) {
    throw InputError(path + ": missing (the checkpoint is incomplete: " + kCheckpointManifest + " is written last)");
  }
  json m;
  try {
    m = json::parse(read_whole(path));
  } catch (const json::exception& e) {
    throw InputError(path + ": not valid JSON: " + e.what());
  }
  auto bad = [&](const std::string& why) { return InputError(path + ": " + why); };
  if (!m.is_object()) throw bad("not a JSON object");
  if (m.value("format", "") != kFormat) throw bad("\"format\" is not \"" + std::string(kFormat) + "\"");
  if (!m.contains("version") || !m["version"].is_number_integer() || m["version"].get<int>() != kVersion)
    throw bad("unsupported \"version\" (this kiln reads version " + std::to_string(kVersion) + ")");
  if (!m.contains("step") || !m["step"].is_number_integer() || m["step"].get<int64_t>() < 0)
    throw bad("\"step\" is not a non-negative integer");
  if (!m.contains("files") || !m["files"].is_array()) throw bad("\"files\" is not an array");
  Manifest out;
  out.step = m["step"].get<int64_t>();
  for (const json& f : m["files"]) {
    if (!f.is_object() || !f.contains("name") || !f["name"].is_string() || !f.contains("size") ||
        !f["size"].is_number_unsigned() || !f.contains("crc32") || !f["crc32"].is_string())
      throw bad("a \"files\" entry is not {name, size, crc32}");
    ManifestEntry e;
    e.name = f["name"].get<std::string>();
    // Names are plain file names inside the directory; nothing may point out of it.
    if (e.name.empty() || e.name.find('/') != std::string::npos || e.name == "." || e.name == "..")
      throw bad("file name '" + e.name + "' is not a plain file name");
    e.size = f["size"].get<uint64_t>();
    std::string hex = f["crc32"].get<std::string>();
    char* end = nullptr;
    unsigned long v = hex.size() == 10 && hex.compare(0, 2, "0x") == 0 ? std::strtoul(hex.c_str() + 2, &end, 16) : 0;
    if (!end || *end != '\0' || v > 0xffffffffUL) throw bad("crc32 '" + hex + "' of " + e.name + " is not 0x%08x");
    e.crc = static_cast<uint32_t>(v);
    out.files.push_back(e);
  }
  for (const char* required : {kCheckpointWeights, kCheckpointOptimizer, kCheckpointState}) out.entry(dir, required);
  // The directory name and the manifest must agree: a renamed copy would
  // otherwise resume at the wrong step.
  int64_t named = 0;
  std::string base = fs::path(dir).filename().string();
  if (base.empty()) base = fs::path(dir).parent_path().filename().string();
  if (parse_step_name(base, &named) && named != out.step)
    throw bad("says step " + std::to_string(out.step) + " but the directory is " + base);
  return out;
}

json parse_state(const std::string& path, const std::string& text, int64_t step) {
  json state;
  try {
    state = json::parse(text);
  } catch (const json::exception& e) {
    throw InputError(path + ": not valid JSON: " + e.what());
  }
  if (!state.is_object()) throw InputError(path + ": not a JSON object");
  if (!state.contains("step") || !state["step"].is_number_integer() || state["step"].get<int64_t>() != step)
    throw InputError(path + ": \"step\" does not match the manifest's step " + std::to_string(step));
  return state;
}

// Checks one file against its manifest entry, given its bytes.
void check_bytes(const std::string& path, const ManifestEntry& e, const void* data, size_t n) {
  if (n != e.size) {
    throw InputError(path + ": size " + std::to_string(n) + " bytes, manifest says " + std::to_string(e.size) +
                     " (truncated or corrupt)");
  }
  uint32_t crc = crc32_of(data, n);
  if (crc != e.crc) {
    throw InputError(path + ": CRC-32 " + crc32_hex(crc) + " does not match the manifest's " + crc32_hex(e.crc) +
                     " (the file is corrupt)");
  }
}

void require_listed_file(const std::string& path) {
  if (!fs::exists(path)) throw InputError(path + ": missing (listed in " + kCheckpointManifest + ")");
}

// The whole file, read straight into the buffer the parsed tensors will
// point into (no second copy: optimizer state can be gigabytes).
std::shared_ptr<std::vector<uint8_t>> read_bytes(const std::string& path) {
  require_listed_file(path);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw InputError("cannot open '" + path + "': " + std::strerror(errno));
  struct stat st;
  if (::fstat(fileno(f), &st) != 0) {
    int err = errno;
    std::fclose(f);
    throw InputError("cannot stat '" + path + "': " + std::strerror(err));
  }
  auto bytes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(st.st_size));
  size_t got = std::fread(bytes->data(), 1, bytes->size(), f);
  bool bad = std::ferror(f) != 0;
  int err = errno;
  std::fclose(f);
  if (bad) throw InputError("cannot read '" + path + "': " + std::strerror(err));
  bytes->resize(got);  // a file that shrank fails the size check that follows
  return bytes;
}

// Removes a directory tree, first renaming it out of the step_ namespace.
void retire_directory(const std::string& root, const std::string& name) {
  std::string from = root + "/" + name;
  std::string to = root + "/." + name + ".del." + std::to_string(static_cast<long>(::getpid()));
  std::error_code ec;
  fs::remove_all(to, ec);
  if (::rename(from.c_str(), to.c_str()) != 0) {
    int err = errno;
    throw Error("cannot remove checkpoint '" + from + "': rename failed: " + std::strerror(err));
  }
  fs::remove_all(to, ec);
  if (ec) throw Error("cannot remove '" + to + "': " + ec.message());
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  KILN_CHECK(step >= 0, "checkpoint step must be non-negative, got " << step);
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%06lld", static_cast<long long>(step));
  return buf;
}

std::string checkpoints_root(const std::string& run_dir) { return run_dir + "/checkpoints"; }

std::string save_checkpoint(const std::string& run_dir, int64_t step, const std::vector<StTensorView>& weights,
                            const std::vector<StTensorView>& optimizer_state, const nlohmann::json& state,
                            const std::map<std::string, std::string>& weights_metadata) {
  KILN_CHECK(state.is_object() || state.is_null(), "checkpoint state must be a JSON object");
  json st = state.is_null() ? json::object() : state;
  if (st.contains("step")) {
    KILN_CHECK(st["step"].is_number_integer() && st["step"].get<int64_t>() == step,
               "checkpoint state has \"step\": " << st["step"].dump() << " but is saved as step " << step);
  }
  st["step"] = step;

  const std::string root = checkpoints_root(run_dir);
  const std::string name = checkpoint_dir_name(step);
  const std::string final_dir = root + "/" + name;
  const std::string tmp = root + "/." + name + ".tmp." + std::to_string(static_cast<long>(::getpid()));
  bool root_existed = fs::is_directory(root);
  make_dirs(root);
  if (!root_existed) fsync_directory(parent_directory(root));

  std::error_code ec;
  fs::remove_all(tmp, ec);  // our own leftover from an earlier failed save
  make_dirs(tmp);
  try {
    std::map<std::string, std::string> meta = weights_metadata;
    meta.emplace("format", "pt");  // what Hugging Face loaders expect of PyTorch weights
    write_safetensors(tmp + "/" + kCheckpointWeights, weights, meta);
    write_safetensors(tmp + "/" + kCheckpointOptimizer, optimizer_state);
    write_file_atomic(tmp + "/" + kCheckpointState, st.dump(2) + "\n");

    json files = json::array();
    for (const char* f : {kCheckpointWeights, kCheckpointOptimizer, kCheckpointState}) {
      uint64_t size = 0;
      // Reading back what was written (from the page cache) checksums the
      // bytes the file actually holds.
      uint32_t crc = crc32_file(tmp + "/" + f, &size);
      files.push_back({{"name", f}, {"size", size}, {"crc32", crc32_hex(crc)}});
    }
    json manifest = {{"format", kFormat}, {"version", kVersion}, {"step", step}, {"files", files}};
    write_file_atomic(tmp + "/" + kCheckpointManifest, manifest.dump(2) + "\n");

    if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      int err = errno;
      if (err != EEXIST && err != ENOTEMPTY) {
        throw Error("cannot move checkpoint '" + tmp + "' to '" + final_dir + "': " + std::strerror(err));
      }
      // Re-saving a step (e.g. the final save after a resume at that step):
      // swap the two directories in one atomic step, then drop the old one.
      if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) != 0) {
        err = errno;
        throw Error("cannot replace checkpoint '" + final_dir + "': " + std::strerror(err));
      }
      fs::remove_all(tmp, ec);  // now holds the old contents
    }
    fsync_directory(root);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  return final_dir;
}

std::string save_checkpoint(const std::string& run_dir, int64_t step, const std::vector<NamedTensor>& weights,
                            const std::vector<NamedTensor>& optimizer_state, const nlohmann::json& state,
                            const std::map<std::string, std::string>& weights_metadata) {
  StHostViews w(weights), o(optimizer_state);
  return save_checkpoint(run_dir, step, w.views(), o.views(), state, weights_metadata);
}

void verify_checkpoint(const std::string& dir) {
  if (!fs::is_directory(dir)) throw InputError("checkpoint '" + dir + "' is not a directory");
  Manifest m = read_manifest(dir);
  for (const ManifestEntry& e : m.files) {
    std::string path = dir + "/" + e.name;
    require_listed_file(path);
    uint64_t size = 0;
    uint32_t crc = crc32_file(path, &size);
    if (size != e.size) {
      throw InputError(path + ": size " + std::to_string(size) + " bytes, manifest says " + std::to_string(e.size) +
                       " (truncated or corrupt)");
    }
    if (crc != e.crc) {
      throw InputError(path + ": CRC-32 " + crc32_hex(crc) + " does not match the manifest's " + crc32_hex(e.crc) +
                       " (the file is corrupt)");
    }
  }
  std::string state_path = dir + "/" + kCheckpointState;
  parse_state(state_path, read_whole(state_path), m.step);
}

Checkpoint load_checkpoint(const std::string& dir) {
  if (!fs::is_directory(dir)) throw InputError("checkpoint '" + dir + "' is not a directory");
  Manifest m = read_manifest(dir);
  Checkpoint ck;
  ck.dir = dir;
  ck.step = m.step;
  for (const char* f : {kCheckpointWeights, kCheckpointOptimizer}) {
    std::string path = dir + "/" + f;
    auto bytes = read_bytes(path);
    check_bytes(path, m.entry(dir, f), bytes->data(), bytes->size());
    SafetensorsFile sf = parse_safetensors(std::move(bytes), path);
    (std::string(f) == kCheckpointWeights ? ck.weights : ck.optimizer) = std::move(sf);
  }
  std::string state_path = dir + "/" + kCheckpointState;
  require_listed_file(state_path);
  std::string text = read_whole(state_path);
  check_bytes(state_path, m.entry(dir, kCheckpointState), text.data(), text.size());
  ck.state = parse_state(state_path, text, m.step);
  return ck;
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::string root = checkpoints_root(run_dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    int64_t step = 0;
    if (!parse_step_name(e.path().filename().string(), &step)) continue;
    if (!e.is_directory(ec)) continue;
    out.emplace_back(step, e.path().string());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

std::optional<std::string> find_latest_valid_checkpoint(const std::string& run_dir) {
  for (const auto& [step, dir] : list_checkpoints(run_dir)) {
    try {
      verify_checkpoint(dir);
      return dir;
    } catch (const InputError& e) {
      std::fprintf(stderr, "kiln: warning: skipping checkpoint %s: %s\n", dir.c_str(), e.what());
    }
  }
  return std::nullopt;
}

int prune_checkpoints(const std::string& run_dir, int keep_last, int64_t saved_step) {
  std::string root = checkpoints_root(run_dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return 0;
  int removed = 0;
  auto retire = [&](const std::string& dir) {
    retire_directory(root, fs::path(dir).filename().string());
    ++removed;
  };
  auto all = list_checkpoints(run_dir);  // newest first
  if (saved_step >= 0) {
    for (const auto& [step, dir] : all)
      if (step > saved_step) retire(dir);  // an abandoned timeline's
  }
  if (keep_last >= 1) {
    int kept = 0;
    for (const auto& [step, dir] : all) {
      if (saved_step >= 0 && step > saved_step) continue;  // retired above
      if (kept >= keep_last) {
        retire(dir);
        continue;
      }
      if (step == saved_step) {
        ++kept;  // just written and checksummed: no second read
        continue;
      }
      try {
        verify_checkpoint(dir);
        ++kept;
      } catch (const InputError& e) {
        std::fprintf(stderr, "kiln: warning: removing corrupt checkpoint %s: %s\n", dir.c_str(), e.what());
        retire(dir);
      }
    }
  }
  // Leftovers of saves or prunes that a crash interrupted.
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    long pid = temp_owner_pid(e.path().filename().string());
    if (pid > 0 && pid != static_cast<long>(::getpid()) && !process_alive(pid)) stale.push_back(e.path());
  }
  for (const fs::path& p : stale) fs::remove_all(p, ec);
  fsync_directory(root);
  return removed;
}

}  // namespace kiln

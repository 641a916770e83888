// Checkpoints: a directory per saved step, written so that a kill -9 or a
// power cut at any moment leaves either the previous set of checkpoints or a
// complete new one, and a corrupt one is noticed (CRC-32) and skipped.
//
//   RUN_DIR/checkpoints/step_000123/
//     model.safetensors      weights, named as the model's parameters
//                            (layers.0.weight), readable by Python's safetensors
//     optimizer.safetensors  optimizer state tensors (moments, ...)
//     state.json             step, epoch, RNG, data position, config hash, ...
//                            whatever the trainer passes, plus "step"
//     manifest.json          written last: {format, version, step,
//                            files: [{name, size, crc32}]}
//
// Saving assembles the directory as RUN_DIR/checkpoints/.step_000123.tmp.<pid>
// (every file fsynced), then renames it into place and fsyncs
// checkpoints/. Readers only ever look at directories named step_<digits>, so
// a half-written temporary is invisible.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/safetensors.h"
#include "data/safetensors_tensor.h"

namespace kiln {

/// File names inside a checkpoint directory.
constexpr const char* kCheckpointWeights = "model.safetensors";
constexpr const char* kCheckpointOptimizer = "optimizer.safetensors";
constexpr const char* kCheckpointState = "state.json";
constexpr const char* kCheckpointManifest = "manifest.json";

/// "step_000123" (at least six digits; larger steps simply get more).
std::string checkpoint_dir_name(int64_t step);
/// RUN_DIR/checkpoints
std::string checkpoints_root(const std::string& run_dir);

/// Writes RUN_DIR/checkpoints/step_<step>/ atomically and returns its path.
/// `state` must be a JSON object; "step" is added to it (if the trainer put a
/// different "step" there, that is an Error). Re-saving an existing step
/// replaces it atomically (rename exchange). Weights get safetensors metadata
/// {"format": "pt"} plus `weights_metadata`. Throws kiln::Error naming the
/// path on I/O failure (disk full, ...), leaving earlier checkpoints intact.
std::string save_checkpoint(const std::string& run_dir, int64_t step, const std::vector<StTensorView>& weights,
                            const std::vector<StTensorView>& optimizer_state, const nlohmann::json& state,
                            const std::map<std::string, std::string>& weights_metadata = {});

/// save_checkpoint for tensors on any device (copied to the host first), e.g.
/// the model's (name, value) pairs and the optimizer's state().
std::string save_checkpoint(const std::string& run_dir, int64_t step, const std::vector<NamedTensor>& weights,
                            const std::vector<NamedTensor>& optimizer_state, const nlohmann::json& state,
                            const std::map<std::string, std::string>& weights_metadata = {});

/// A loaded checkpoint; the tensors' bytes live in the files' buffers
/// (to_tensor / load_into / load_tensors in data/safetensors_tensor.h turn
/// them into tensors).
struct Checkpoint {
  std::string dir;
  int64_t step = -1;
  SafetensorsFile weights;
  SafetensorsFile optimizer;
  nlohmann::json state;  ///< state.json as saved (including "step")
};

/// Reads a checkpoint directory, checking every file's size and CRC-32
/// against the manifest before parsing it. A missing manifest (incomplete
/// checkpoint), a missing or corrupt file, or a bad header is an InputError
/// naming the file and what is wrong.
Checkpoint load_checkpoint(const std::string& dir);

/// The checks of load_checkpoint (manifest, sizes, CRC-32s, state.json) while
/// holding no more than one read buffer: streams the files. Throws InputError
/// naming the file.
void verify_checkpoint(const std::string& dir);

/// Every RUN_DIR/checkpoints/step_<digits> directory, newest (highest step)
/// first, valid or not. Temporaries and other names are ignored.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& run_dir);

/// The newest checkpoint that verifies, or nullopt when there is none.
/// Prints one line per skipped checkpoint on stderr:
///   kiln: warning: skipping checkpoint DIR: WHY
std::optional<std::string> find_latest_valid_checkpoint(const std::string& run_dir);

/// Keeps the `keep_last` newest step directories that verify and deletes
/// the others (keep_last < 1 keeps everything), plus any temporary left by a
/// process that no longer runs. Corrupt checkpoints are not counted (so a
/// run never trades a valid checkpoint for a corrupt one) and are deleted:
/// nothing can resume from them. Verifying reads the files of the
/// checkpoints it keeps (except `saved_step`'s).
///
/// `saved_step` >= 0 names the checkpoint the caller has just saved (and
/// checksummed): it is always kept, and every step directory of a later step
/// is deleted, because it belongs to the timeline this run abandoned (an
/// explicit restart, or a resume that fell back past corrupt checkpoints)
/// and resuming from it would splice two runs together.
///
/// Each victim is first renamed out of the step_ namespace so a crash
/// mid-delete never leaves a half-deleted "checkpoint". Returns how many
/// step directories were removed.
int prune_checkpoints(const std::string& run_dir, int keep_last, int64_t saved_step = -1);

}  // namespace kiln

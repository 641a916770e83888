// Token shards in llm.c's layout, so shards made by llm.c's scripts
// (dev/data/*.py) load in kiln and the reverse:
//
//   [256 × int32, little-endian]  header: [0] magic 20240520, [1] version 1,
//                                 [2] number of tokens N, the rest zero
//   [N × uint16, little-endian]   the tokens
//
// Version 1 is uint16 tokens (GPT-2's 50257 fit); llm.c's version 2 (uint32,
// Llama 3) is rejected by name. Reading validates everything against the
// file's size: a wrong magic or version, a negative count, a file shorter
// than its header promises (truncated) or longer (trailing bytes) is an
// InputError naming the file and what was expected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderInts = 256;
inline constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);  // 1024

/// Writes `n` tokens as a shard at `path`, atomically (temporary file, fsync,
/// rename): a reader sees the old file or the whole new one. A token outside
/// [0, 65535] is an InputError naming its position and value (nothing is
/// written); so is n ≥ 2^31 (the header's count is an int32).
void write_token_shard(const std::string& path, const int32_t* tokens, size_t n);
void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens);
void write_token_shard(const std::string& path, const uint16_t* tokens, size_t n);

/// A shard mapped read-only into memory (mmap): opening costs nothing per
/// token, and many loaders (or processes) share the pages.
class TokenShard {
 public:
  /// Opens and validates `path` (see the header comment); InputError if bad.
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(TokenShard&& o) noexcept;
  TokenShard& operator=(TokenShard&& o) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  /// Number of tokens.
  size_t size() const { return n_; }
  /// The tokens (little-endian uint16; kiln's hosts are little-endian).
  const uint16_t* data() const { return tokens_; }
  uint16_t operator[](size_t i) const { return tokens_[i]; }

  /// The largest token id (0 for an empty shard): one pass over the tokens.
  uint16_t max_id() const;
  /// Checks every token against a vocabulary of `vocab_size` ids (one pass;
  /// nothing to do when vocab_size > 65535). InputError naming the file, the
  /// first offending token, its index and its byte offset in the file.
  void check_ids(int64_t vocab_size) const;

 private:
  void release() noexcept;
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  size_t n_ = 0;
};

/// Reads a whole shard into memory (validated like TokenShard).
std::vector<uint16_t> read_token_shard(const std::string& path);

/// The shards of one split in `dir`: regular files ending in ".bin" whose
/// name contains `split` ("train", "val"), sorted by name. Matches kiln's
/// `train_000000.bin` and llm.c's `fineweb_train_000001.bin` /
/// `tiny_shakespeare_val.bin`. InputError if `dir` is missing or none match.
std::vector<std::string> find_token_shards(const std::string& dir, const std::string& split);

}  // namespace kiln

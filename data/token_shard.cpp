#include "data/token_shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "runtime/atomic_file.h"
#include "runtime/error.h"

// Tokens are read straight from the mapping as uint16; llm.c writes them
// little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "token shards assume a little-endian host");

namespace kiln {

namespace {

std::vector<int32_t> make_header(size_t n) {
  std::vector<int32_t> h(kShardHeaderInts, 0);
  h[0] = kShardMagic;
  h[1] = kShardVersion;
  h[2] = static_cast<int32_t>(n);
  return h;
}

void check_count(const std::string& path, size_t n) {
  KILN_INPUT_CHECK(n <= static_cast<size_t>(INT32_MAX),
                   path << ": " << n << " tokens do not fit one shard (the header's count is an int32; at most "
                        << INT32_MAX << ")");
}

void write_shard_u16(const std::string& path, const uint16_t* tokens, size_t n) {
  const std::vector<int32_t> header = make_header(n);
  AtomicFile f(path);
  f.write(header.data(), kShardHeaderBytes);
  if (n > 0) f.write(tokens, n * sizeof(uint16_t));
  f.commit();
}

}  // namespace

void write_token_shard(const std::string& path, const int32_t* tokens, size_t n) {
  check_count(path, n);
  std::vector<uint16_t> u(n);
  for (size_t i = 0; i < n; ++i) {
    KILN_INPUT_CHECK(tokens[i] >= 0 && tokens[i] <= 65535,
                     path << ": token " << i << " is " << tokens[i]
                          << ", outside [0, 65535]; llm.c's version-1 shards store uint16 tokens");
    u[i] = static_cast<uint16_t>(tokens[i]);
  }
  write_shard_u16(path, u.data(), n);
}

void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens) {
  write_token_shard(path, tokens.data(), tokens.size());
}

void write_token_shard(const std::string& path, const uint16_t* tokens, size_t n) {
  check_count(path, n);
  write_shard_u16(path, tokens, n);
}

TokenShard::TokenShard(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KILN_INPUT_CHECK(fd >= 0, path << ": cannot open token shard: " << std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    const int err = errno;
    ::close(fd);
    KILN_INPUT_CHECK(false, path << ": not a regular file" << (err ? std::string(": ") + std::strerror(err) : ""));
  }
  const auto bytes = static_cast<size_t>(st.st_size);
  if (bytes < kShardHeaderBytes) {
    ::close(fd);
    KILN_INPUT_CHECK(false, path << ": truncated token shard: " << bytes << " bytes, shorter than llm.c's "
                                 << kShardHeaderBytes << "-byte header (256 int32: magic " << kShardMagic
                                 << ", version " << kShardVersion << ", token count)");
  }
  void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping stays valid
  KILN_INPUT_CHECK(map != MAP_FAILED, path << ": cannot map token shard: " << std::strerror(err));
  map_ = map;
  map_bytes_ = bytes;

  int32_t h[3];
  std::memcpy(h, map, sizeof(h));
  if (h[0] != kShardMagic) {
    release();
    KILN_INPUT_CHECK(false, path << ": bad magic " << h[0] << " in the header, expected " << kShardMagic
                                 << " (not an llm.c token shard)");
  }
  if (h[1] != kShardVersion) {
    const int32_t v = h[1];
    release();
    KILN_INPUT_CHECK(false, path << ": token shard version " << v << ", expected " << kShardVersion
                                 << " (uint16 tokens)" << (v == 2 ? "; version 2 is llm.c's uint32 (Llama 3) layout" : ""));
  }
  if (h[2] < 0) {
    release();
    KILN_INPUT_CHECK(false, path << ": header says " << h[2] << " tokens, expected a count >= 0");
  }
  const size_t n = static_cast<size_t>(h[2]);
  const size_t expect = kShardHeaderBytes + n * sizeof(uint16_t);
  if (bytes != expect) {
    release();
    if (bytes < expect) {
      KILN_INPUT_CHECK(false, path << ": truncated token shard: the header says " << n << " tokens, so "
                                   << expect << " bytes, but the file has " << bytes << " (" << (bytes - kShardHeaderBytes) / 2
                                   << " tokens)");
    }
    KILN_INPUT_CHECK(false, path << ": token shard has " << bytes - expect << " bytes after the " << n
                                 << " tokens its header declares (expected exactly " << expect << " bytes)");
  }
  tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(map) + kShardHeaderBytes);
  n_ = n;
}

uint16_t TokenShard::max_id() const {
  // A branch-free max over blocks vectorizes; ~0.1 s for 100M tokens (200 MB).
  uint16_t m = 0;
  for (size_t i = 0; i < n_; ++i) m = tokens_[i] > m ? tokens_[i] : m;
  return m;
}

void TokenShard::check_ids(int64_t vocab_size) const {
  if (vocab_size > 65535 || n_ == 0) return;  // every uint16 fits
  KILN_INPUT_CHECK(vocab_size >= 1, path_ << ": cannot check token ids against a vocabulary of " << vocab_size);
  if (max_id() < vocab_size) return;
  // Rare path: find where the first bad id is, for the message.
  size_t i = 0;
  while (i < n_ && tokens_[i] < vocab_size) ++i;
  KILN_INPUT_CHECK(false, path_ << ": token " << i << " (byte offset " << kShardHeaderBytes + 2 * i << ") is id "
                                << tokens_[i] << ", outside the vocabulary of " << vocab_size << " (ids 0.."
                                << vocab_size - 1 << "); was this shard made with another tokenizer?");
}

void TokenShard::release() noexcept {
  if (map_) ::munmap(map_, map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
  tokens_ = nullptr;
  n_ = 0;
}

TokenShard::~TokenShard() { release(); }

TokenShard::TokenShard(TokenShard&& o) noexcept
    : path_(std::move(o.path_)), map_(o.map_), map_bytes_(o.map_bytes_), tokens_(o.tokens_), n_(o.n_) {
  o.map_ = nullptr;
  o.map_bytes_ = 0;
  o.tokens_ = nullptr;
  o.n_ = 0;
}

TokenShard& TokenShard::operator=(TokenShard&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    map_ = o.map_;
    map_bytes_ = o.map_bytes_;
    tokens_ = o.tokens_;
    n_ = o.n_;
    o.map_ = nullptr;
    o.map_bytes_ = 0;
    o.tokens_ = nullptr;
    o.n_ = 0;
  }
  return *this;
}

std::vector<uint16_t> read_token_shard(const std::string& path) {
  TokenShard s(path);
  return std::vector<uint16_t>(s.data(), s.data() + s.size());
}

std::vector<std::string> find_token_shards(const std::string& dir, const std::string& split) {
  namespace fs = std::filesystem;
  std::error_code ec;
  KILN_INPUT_CHECK(fs::is_directory(dir, ec), dir << ": token shard directory not found");
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".bin") == 0 && name.find(split) != std::string::npos &&
        e.is_regular_file(ec))
      out.push_back(e.path().string());
  }
  KILN_INPUT_CHECK(!ec, dir << ": cannot list: " << ec.message());
  std::sort(out.begin(), out.end());
  KILN_INPUT_CHECK(!out.empty(), dir << ": no " << split << " token shards (expected files named like " << split
                                     << "_000000.bin)");
  return out;
}

}  // namespace kiln

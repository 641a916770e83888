// Token shards in llm.c's layout: round trips, the exact bytes on disk, and
// every kind of bad file as an InputError that names the file.
#include "data/token_shard.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "data/file_io.h"
#include "runtime/error.h"
#include "tests/harness/temp_dir.h"

namespace kiln {
namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string header_bytes(int32_t magic, int32_t version, int32_t count) {
  std::string h(kShardHeaderBytes, '\0');
  std::memcpy(&h[0], &magic, 4);
  std::memcpy(&h[4], &version, 4);
  std::memcpy(&h[8], &count, 4);
  return h;
}

// Opening `path` must throw InputError mentioning the path and `needle`.
void expect_bad(const std::string& path, const std::string& needle) {
  try {
    TokenShard s(path);
    ADD_FAILURE() << path << " opened";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

TEST(TokenShard, WriteReadRoundTrip) {
  test::TempDir dir;
  std::vector<int32_t> tokens;
  for (int i = 0; i < 10007; ++i) tokens.push_back((i * 7919) % 65536);
  tokens.push_back(0);
  tokens.push_back(65535);
  const std::string path = dir.file("train_000000.bin");
  write_token_shard(path, tokens);

  TokenShard s(path);
  ASSERT_EQ(s.size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(s[i], tokens[i]) << i;
  const std::vector<uint16_t> r = read_token_shard(path);
  EXPECT_TRUE(std::equal(r.begin(), r.end(), tokens.begin()));

  // The bytes are llm.c's: header of 256 int32 (magic, version, count, zeros)
  // then little-endian uint16 tokens; no temporary file is left behind.
  const std::string bytes = read_file(path);
  ASSERT_EQ(bytes.size(), 1024 + 2 * tokens.size());
  EXPECT_EQ(bytes.substr(0, 1024), header_bytes(20240520, 1, static_cast<int32_t>(tokens.size())));
  EXPECT_EQ(static_cast<unsigned char>(bytes[1024 + 2 * 10008]), 0xFF);
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 1u);

  // uint16 overload and an empty shard.
  const uint16_t few[] = {1, 2, 3};
  write_token_shard(dir.file("few.bin"), few, 3);
  EXPECT_EQ(read_token_shard(dir.file("few.bin")), (std::vector<uint16_t>{1, 2, 3}));
  write_token_shard(dir.file("empty.bin"), std::vector<int32_t>{});
  EXPECT_EQ(TokenShard(dir.file("empty.bin")).size(), 0u);

  // Moving keeps the mapping valid.
  TokenShard a(path);
  TokenShard b = std::move(a);
  EXPECT_EQ(b.size(), tokens.size());
  EXPECT_EQ(b[1], tokens[1]);
}

TEST(TokenShard, TokensOutsideUint16AreRejectedAtWrite) {
  test::TempDir dir;
  const std::string path = dir.file("bad.bin");
  for (int32_t bad : {65536, -1, 50257 * 2}) {
    try {
      write_token_shard(path, std::vector<int32_t>{1, 2, bad});
      ADD_FAILURE() << bad << " was written";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(bad)), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
    EXPECT_FALSE(std::filesystem::exists(path));
  }
  // An existing shard survives a rejected rewrite.
  write_token_shard(path, std::vector<int32_t>{7});
  EXPECT_THROW(write_token_shard(path, std::vector<int32_t>{70000}), InputError);
  EXPECT_EQ(read_token_shard(path), std::vector<uint16_t>{7});
}

TEST(TokenShard, BadFilesAreInputErrorsNamingTheFile) {
  test::TempDir dir;
  const std::string tokens(20, '\x01');  // 10 tokens

  write_bytes(dir.file("magic.bin"), header_bytes(20240521, 1, 10) + tokens);
  expect_bad(dir.file("magic.bin"), "bad magic 20240521");

  write_bytes(dir.file("version.bin"), header_bytes(20240520, 2, 10) + tokens);
  expect_bad(dir.file("version.bin"), "version 2, expected 1");

  write_bytes(dir.file("truncated.bin"), header_bytes(20240520, 1, 11) + tokens);
  expect_bad(dir.file("truncated.bin"), "truncated");

  write_bytes(dir.file("short_header.bin"), header_bytes(20240520, 1, 0).substr(0, 100));
  expect_bad(dir.file("short_header.bin"), "1024-byte header");

  write_bytes(dir.file("trailing.bin"), header_bytes(20240520, 1, 9) + tokens);
  expect_bad(dir.file("trailing.bin"), "bytes after");

  write_bytes(dir.file("negative.bin"), header_bytes(20240520, 1, -5) + tokens);
  expect_bad(dir.file("negative.bin"), "-5 tokens");

  write_bytes(dir.file("empty_file.bin"), "");
  expect_bad(dir.file("empty_file.bin"), "truncated");

  expect_bad(dir.file("missing.bin"), "cannot open");
  EXPECT_THROW(read_token_shard(dir.file("magic.bin")), InputError);
}

TEST(TokenShard, FindShardsOfASplit) {
  test::TempDir dir;
  for (const char* name : {"val_000000.bin", "train_000001.bin", "train_000000.bin", "fineweb_train_000002.bin",
                           "train_notes.txt"})
    write_token_shard(dir.file(name), std::vector<int32_t>{1});
  EXPECT_EQ(find_token_shards(dir.path(), "train"),
            (std::vector<std::string>{dir.file("fineweb_train_000002.bin"), dir.file("train_000000.bin"),
                                      dir.file("train_000001.bin")}));
  EXPECT_EQ(find_token_shards(dir.path(), "val"), std::vector<std::string>{dir.file("val_000000.bin")});
  EXPECT_THROW(find_token_shards(dir.path(), "test"), InputError);
  EXPECT_THROW(find_token_shards(dir.file("nope"), "train"), InputError);
}

}  // namespace
}  // namespace kiln

#include "runtime/atomic_file.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "tests/harness/temp_dir.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class AtomicFileTest : public ::testing::Test {
 protected:

  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  static std::string slurp(const std::string& p) { return test::read_file(p); }
  static void put(const std::string& p, const std::string& s) { test::write_file(p, s); }
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  test::TempDir tmp_;
  std::string dir_ = tmp_.path();
};

TEST_F(AtomicFileTest, WritesNewFileAndLeavesNoTemporary) {
  write_file_atomic(path("a.bin"), std::string("hello\0world", 11));
  EXPECT_EQ(slurp(path("a.bin")), std::string("hello\0world", 11));
  EXPECT_EQ(listing(), std::vector<std::string>{"a.bin"});
}

TEST_F(AtomicFileTest, ReplacesExistingFile) {
  put(path("a.txt"), "old contents that are longer than the new ones");
  write_file_atomic(path("a.txt"), "new");
  EXPECT_EQ(slurp(path("a.txt")), "new");
  EXPECT_EQ(listing(), std::vector<std::string>{"a.txt"});
}

TEST_F(AtomicFileTest, PiecewiseWritesAndEmptyFile) {
  {
    AtomicFile f(path("p.txt"));
    EXPECT_EQ(f.temp_path(), path("p.txt") + ".tmp." + std::to_string(getpid()));
    f.write("abc");
    f.write(std::string(1000, 'x'));
    f.write("", 0);
    EXPECT_EQ(f.bytes_written(), 1003u);
    // Not visible under the target name before commit.
    EXPECT_FALSE(fs::exists(path("p.txt")));
    EXPECT_TRUE(fs::exists(f.temp_path()));
    f.commit();
    EXPECT_THROW(f.write("more"), Error);
  }
  EXPECT_EQ(slurp(path("p.txt")), "abc" + std::string(1000, 'x'));
  write_file_atomic(path("empty"), "");
  EXPECT_TRUE(fs::exists(path("empty")));
  EXPECT_EQ(fs::file_size(path("empty")), 0u);
}

TEST_F(AtomicFileTest, DestroyedWithoutCommitLeavesTargetUntouched) {
  put(path("keep.txt"), "original");
  {
    AtomicFile f(path("keep.txt"));
    f.write("half of the new contents");
  }
  EXPECT_EQ(slurp(path("keep.txt")), "original");
  EXPECT_EQ(listing(), std::vector<std::string>{"keep.txt"});
  {
    AtomicFile f(path("keep.txt"));
    f.write("x");
    f.abort();
    f.abort();  // idempotent
  }
  EXPECT_EQ(slurp(path("keep.txt")), "original");
}

TEST_F(AtomicFileTest, MissingDirectoryNamesPathAndErrno) {
  std::string p = path("no/such/dir/file.bin");
  try {
    write_file_atomic(p, "x");
    FAIL() << "expected kiln::Error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(p), std::string::npos) << m;
    EXPECT_NE(m.find("No such file or directory"), std::string::npos) << m;
  }
}

// A full disk, simulated with RLIMIT_FSIZE: write() fails with EFBIG part
// way through. The old target must survive and the temporary must be gone.
TEST_F(AtomicFileTest, WriteFailurePartWayKeepsOldFileAndRemovesTemporary) {
  put(path("big.bin"), "previous good version");
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  // Without this the kernel kills us with SIGXFSZ instead of returning EFBIG.
  sighandler_t old_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old_limit;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string message;
  try {
    AtomicFile f(path("big.bin"));
    std::string chunk(1000, 'z');
    for (int i = 0; i < 10; ++i) f.write(chunk);
    f.commit();
  } catch (const Error& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old_limit);
  signal(SIGXFSZ, old_handler);
  ASSERT_FALSE(message.empty()) << "the write past RLIMIT_FSIZE should have thrown";
  EXPECT_NE(message.find(path("big.bin")), std::string::npos) << message;
  EXPECT_NE(message.find("File too large"), std::string::npos) << message;
  EXPECT_EQ(slurp(path("big.bin")), "previous good version");
  EXPECT_EQ(listing(), std::vector<std::string>{"big.bin"});
}

// kill -9 in the middle of a write: the target keeps its old contents; only a
// stale temporary may remain.
TEST_F(AtomicFileTest, KilledWriterNeverLeavesPartialTarget) {
  put(path("state.json"), "{\"step\": 1}");
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    AtomicFile f(path("state.json"));
    f.write("{\"step\": 2, \"half");
    raise(SIGKILL);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(slurp(path("state.json")), "{\"step\": 1}");
  std::string stale = path("state.json") + ".tmp." + std::to_string(pid);
  EXPECT_TRUE(fs::exists(stale));
  // A later writer (another pid) is unaffected by the stale temporary.
  write_file_atomic(path("state.json"), "{\"step\": 3}");
  EXPECT_EQ(slurp(path("state.json")), "{\"step\": 3}");
}

TEST_F(AtomicFileTest, FsyncDirectoryErrors) {
  EXPECT_NO_THROW(fsync_directory(dir_));
  EXPECT_THROW(fsync_directory(path("missing")), Error);
}

TEST(AtomicFile, ParentDirectory) {
  EXPECT_EQ(parent_directory("a/b/c.txt"), "a/b");
  EXPECT_EQ(parent_directory("c.txt"), ".");
  EXPECT_EQ(parent_directory("/c.txt"), "/");
  EXPECT_EQ(parent_directory("/x/y/"), "/x/y");
}

}  // namespace
}  // namespace kiln

#include "trainers/metrics.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "runtime/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kiln_metrics_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  static std::string slurp(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  std::string dir_;
};

// What a trainer writes at step s: a train line every step, a val line every
// 5 steps (before that step's checkpoint).
void write_step(MetricsWriter& w, int64_t s) {
  w.write({{"step", s}, {"split", "train"}, {"loss", 2.0 / static_cast<double>(s)}, {"lr", 1e-3},
           {"samples_per_s", 12345.678}, {"grad_norm", 0.1 * static_cast<double>(s)}});
  if (s % 5 == 0) w.write({{"step", s}, {"split", "val"}, {"loss", 1.0 / static_cast<double>(s)}, {"accuracy", 0.5}});
}

TEST_F(MetricsTest, LinesAreFlushedAsWritten) {
  std::string p = dir_ + "/metrics.jsonl";
  MetricsWriter w(p);
  write_step(w, 1);
  // Visible to another reader before the writer is closed.
  std::string text = slurp(p);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1);
  json j = json::parse(text);
  EXPECT_EQ(j["step"], 1);
  EXPECT_EQ(j["split"], "train");
  write_step(w, 5);
  EXPECT_EQ(read_metrics(p).size(), 3u);
  EXPECT_THROW(w.write({{"loss", 1.0}}), Error);      // no step
  EXPECT_THROW(w.write({{"step", "5"}}), Error);      // not an integer
  EXPECT_EQ(w.lines_kept(), 0);
}

TEST_F(MetricsTest, ResumedFileEqualsUninterruptedFile) {
  std::string full = dir_ + "/full.jsonl";
  {
    MetricsWriter w(full);
    for (int s = 1; s <= 12; ++s) write_step(w, s);
  }
  std::string resumed = dir_ + "/resumed.jsonl";
  {
    MetricsWriter w(resumed);
    for (int s = 1; s <= 8; ++s) write_step(w, s);
  }
  // Killed while writing step 9's line.
  std::ofstream(resumed, std::ios::app) << "{\"step\":9,\"split\":\"tr";
  ASSERT_NE(slurp(resumed), slurp(full));
  {
    MetricsWriter w(resumed, /*resume_step=*/5);  // the newest checkpoint was step 5
    EXPECT_EQ(w.lines_kept(), 6);                 // train 1..5 and val 5
    for (int s = 6; s <= 12; ++s) write_step(w, s);
  }
  EXPECT_EQ(slurp(resumed), slurp(full));
  // No temporaries left next to it.
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
}

TEST_F(MetricsTest, ResumeDropsJunkWithWarningAndCreatesMissingFile) {
  std::string p = dir_ + "/m.jsonl";
  std::ofstream(p) << "{\"step\":1,\"loss\":1}\nnot json\n{\"no_step\":1}\n{\"step\":2,\"loss\":0.5}\n";
  testing::internal::CaptureStderr();
  {
    MetricsWriter w(p, 1);
    EXPECT_EQ(w.lines_kept(), 1);
  }
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find(p + ":2"), std::string::npos) << err;
  EXPECT_NE(err.find(p + ":3"), std::string::npos) << err;
  EXPECT_EQ(slurp(p), "{\"step\":1,\"loss\":1}\n");

  std::string fresh = dir_ + "/absent.jsonl";
  {
    MetricsWriter w(fresh, 100);
    w.write({{"step", 101}});
  }
  EXPECT_EQ(slurp(fresh), "{\"step\":101}\n");
}

TEST_F(MetricsTest, FreshRunReplacesOldFile) {
  std::string p = dir_ + "/m.jsonl";
  std::ofstream(p) << "{\"step\":1}\n{\"step\":2}\n";
  {
    MetricsWriter w(p);
    w.write({{"step", 1}, {"loss", 3.5}});
  }
  EXPECT_EQ(slurp(p), "{\"loss\":3.5,\"step\":1}\n");
  EXPECT_THROW(MetricsWriter(dir_ + "/no/such/dir/m.jsonl"), Error);
}

TEST_F(MetricsTest, ReadMetricsToleratesOnlyATrailingPartialLine) {
  std::string p = dir_ + "/m.jsonl";
  std::ofstream(p) << "{\"step\":1}\n\n{\"step\":2}\n{\"step\":3,\"lo";
  auto recs = read_metrics(p);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1]["step"], 2);
  std::ofstream(p) << "{\"step\":1}\n[1,2]\n{\"step\":3}\n";
  try {
    read_metrics(p);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(p + ":2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_metrics(dir_ + "/missing.jsonl"), InputError);
}

TEST(Console, FormatDuration) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(44.6), "45s");
  EXPECT_EQ(format_duration(59.4), "59s");
  EXPECT_EQ(format_duration(60), "1m00s");
  EXPECT_EQ(format_duration(187), "3m07s");
  EXPECT_EQ(format_duration(3600 * 2 + 5 * 60 + 9), "2h05m");
  EXPECT_EQ(format_duration(86400 * 3 + 3600 * 4), "3d04h");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::nan("")), "?");
}

TEST(Console, FormatRate) {
  EXPECT_EQ(format_rate(0.5), "0.50");
  EXPECT_EQ(format_rate(12.34), "12.3");
  EXPECT_EQ(format_rate(950), "950");
  EXPECT_EQ(format_rate(999.7), "1.00K");
  EXPECT_EQ(format_rate(18234), "18.2K");
  EXPECT_EQ(format_rate(123456), "123K");
  EXPECT_EQ(format_rate(1.05e6), "1.05M");
  EXPECT_EQ(format_rate(2.5e9), "2.50G");
}

std::string read_all(FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}

TEST(Console, PlainLinesEveryLogIntervalWhenNotATerminal) {
  FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  double clock = 0;
  {
    ConsoleReporter::Options o;
    o.total_steps = 100;
    o.log_every = 10;
    o.out = f;  // a file, so automatic mode picks plain lines
    o.clock = [&] { return clock; };
    ConsoleReporter c(o);
    EXPECT_FALSE(c.is_bar());
    c.start(0);
    for (int s = 1; s <= 100; ++s) {
      clock = s;  // one second per step
      c.step({s, 0.5, 1e-3, 1200.0, "samples/s"});
      if (s == 50) c.message("val loss 0.4000 accuracy 0.8800");
    }
  }
  std::string out = read_all(f);
  std::fclose(f);
  EXPECT_EQ(out.find('\r'), std::string::npos);
  EXPECT_EQ(out.find('\x1b'), std::string::npos);
  // Step 1, every 10th step (10..100) and the message.
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 12) << out;
  EXPECT_NE(out.find("step 1/100 | loss 0.5000 | lr 1.00e-03 | 1.20K samples/s | eta 1m39s\n"), std::string::npos)
      << out;
  EXPECT_NE(out.find("step 10/100 | loss 0.5000 | lr 1.00e-03 | 1.20K samples/s | eta 1m30s\n"), std::string::npos)
      << out;
  EXPECT_NE(out.find("step 50/100 | loss 0.5000 | lr 1.00e-03 | 1.20K samples/s | eta 50s\n"
                     "val loss 0.4000 accuracy 0.8800\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("step 100/100 | loss 0.5000 | lr 1.00e-03 | 1.20K samples/s | eta 0s\n"), std::string::npos);
}

TEST(Console, EtaCountsOnlyThisRunsStepsAfterResume) {
  FILE* f = std::tmpfile();
  double clock = 0;
  {
    ConsoleReporter::Options o;
    o.total_steps = 1000;
    o.log_every = 100;
    o.out = f;
    o.clock = [&] { return clock; };
    ConsoleReporter c(o);
    c.start(900);  // resumed after step 900
    clock = 2.0;
    c.step({901, 1.0, 0.0, 0.0, "tokens/s"});
  }
  std::string out = read_all(f);
  std::fclose(f);
  // 99 steps left at 2 s per step; throughput 0 is hidden.
  EXPECT_EQ(out, "step 901/1000 | loss 1.0000 | lr 0.00e+00 | eta 3m18s\n");
}

TEST(Console, BarRedrawsInPlaceThrottledAndNeverWraps) {
  FILE* f = std::tmpfile();
  double clock = 0;
  {
    ConsoleReporter::Options o;
    o.total_steps = 100;
    o.out = f;
    o.mode = ConsoleReporter::Mode::bar;
    o.width = 80;
    o.min_redraw_s = 0.1;
    o.clock = [&] { return clock; };
    ConsoleReporter c(o);
    EXPECT_TRUE(c.is_bar());
    c.start(0);
    for (int s = 1; s <= 100; ++s) {
      clock = 0.01 * s;  // 10 ms per step: a redraw every ~10 steps
      c.step({s, 2.25, 3e-4, 18234.0, "samples/s"});
      if (s == 55) c.message("saved checkpoint step_000055");
    }
    c.finish();
    c.finish();
  }
  std::string out = read_all(f);
  std::fclose(f);
  size_t draws = 0;
  for (size_t i = out.find('\r'); i != std::string::npos; i = out.find('\r', i + 1)) ++draws;
  // ~10 throttled draws + the last step + the message's clear and redraw.
  EXPECT_GE(draws, 10u);
  EXPECT_LE(draws, 14u);
  EXPECT_NE(out.find("\r\x1b[Ksaved checkpoint step_000055\n\rstep 5"), std::string::npos) << out;
  // The final state: a full bar, then one newline from finish().
  std::string last = out.substr(out.rfind('\r') + 1);
  EXPECT_EQ(last.substr(0, 13), "step 100/100 ");
  EXPECT_NE(last.find("[########"), std::string::npos) << last;
  EXPECT_EQ(last.find('.'), last.find("2.25") + 1) << "bar fully filled: " << last;
  EXPECT_NE(last.find("loss 2.2500  lr 3.00e-04  18.2K samples/s  eta 0s\x1b[K\n"), std::string::npos) << last;
  EXPECT_EQ(last.back(), '\n');
  // Every drawn line fits in 79 columns.
  size_t start = 0;
  while ((start = out.find('\r', start)) != std::string::npos) {
    size_t end = out.find_first_of("\r\x1b\n", start + 1);
    EXPECT_LE(end - start - 1, 79u) << out.substr(start + 1, end - start - 1);
    start = end;
  }
}

TEST(Console, NarrowTerminalDropsTheBarAndTruncates) {
  FILE* f = std::tmpfile();
  {
    ConsoleReporter::Options o;
    o.total_steps = 10;
    o.out = f;
    o.mode = ConsoleReporter::Mode::bar;
    o.width = 40;
    ConsoleReporter c(o);
    c.step({10, 1.0, 1.0, 5.0, "samples/s"});
  }
  std::string out = read_all(f);
  std::fclose(f);
  EXPECT_EQ(out.find(" ["), std::string::npos) << out;
  EXPECT_EQ(out.substr(0, 1), "\r");
  EXPECT_EQ(out.find("\x1b[K"), 40u) << out;  // 39 visible columns
}

}  // namespace
}  // namespace kiln

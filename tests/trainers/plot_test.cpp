#include "trainers/plot.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "runtime/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class PlotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kiln_plot_XXXXXX";
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
  // A classifier run: train every step, val every 25 steps, one test at the end.
  void write_run(const std::string& path, bool with_accuracy = true) {
    std::ofstream f(path);
    for (int s = 1; s <= 100; ++s) {
      json t = {{"step", s}, {"split", "train"}, {"loss", 2.3 * std::exp(-s / 40.0)}, {"lr", 1e-3}};
      if (with_accuracy) t["accuracy"] = 0.1 + 0.008 * s;
      f << t.dump() << "\n";
      if (s % 25 == 0) {
        json v = {{"step", s}, {"split", "val"}, {"loss", 2.0 * std::exp(-s / 50.0)}};
        if (with_accuracy) v["accuracy"] = 0.2 + 0.007 * s;
        f << v.dump() << "\n";
      }
    }
    json t = {{"step", 100}, {"split", "test"}, {"loss", 0.31}};
    if (with_accuracy) t["accuracy"] = 0.891;
    f << t.dump() << "\n";
  }
  int run_cmd(std::vector<std::string> args) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    return cmd_plot(static_cast<int>(argv.size()), argv.data());
  }
  std::string dir_;
};

TEST(Plot, NiceTicksCoverTheRangeWithRoundSteps) {
  EXPECT_EQ(nice_ticks(0, 1000), (std::vector<double>{0, 200, 400, 600, 800, 1000}));
  EXPECT_EQ(nice_ticks(1, 100).front(), 0);
  EXPECT_EQ(nice_ticks(1, 100).back(), 100);
  struct R {
    double lo, hi;
  } ranges[] = {{0.13, 0.87}, {1, 937}, {-3.2, 7.9}, {0.0012, 0.0019}, {5, 5}, {0, 0}, {1e6, 3.3e7}, {2.302, 2.31}};
  for (const R& r : ranges) {
    std::vector<double> t = nice_ticks(r.lo, r.hi);
    ASSERT_GE(t.size(), 2u) << r.lo << ".." << r.hi;
    EXPECT_LE(t.front(), r.lo) << r.lo << ".." << r.hi;
    EXPECT_GE(t.back(), r.hi) << r.lo << ".." << r.hi;
    EXPECT_LE(t.size(), 13u) << r.lo << ".." << r.hi;
    double step = t[1] - t[0];
    double mant = step / std::pow(10.0, std::floor(std::log10(step) + 1e-9));
    EXPECT_TRUE(std::fabs(mant - 1) < 1e-6 || std::fabs(mant - 2) < 1e-6 || std::fabs(mant - 5) < 1e-6)
        << "step " << step << " for " << r.lo << ".." << r.hi;
    if (r.lo == r.hi) {
      EXPECT_LT(t.front(), r.lo);
    }
  }
}

TEST(Plot, PanelsGroupSplitsAndMetrics) {
  std::vector<json> recs = {
      {{"step", 1}, {"split", "train"}, {"loss", 2.0}, {"accuracy", 0.1}},
      {{"step", 2}, {"split", "train"}, {"loss", 1.5}},
      {{"step", 2}, {"split", "val"}, {"loss", 1.7}, {"accuracy", 0.4}},
      {{"step", 3}, {"loss", 1.2}},                        // no split: train
      {{"step", 4}, {"split", "train"}, {"loss", nullptr}},  // NaN written by nlohmann as null: skipped
      {{"split", "train"}, {"loss", 9.0}},                   // no step: skipped
  };
  auto panels = metrics_panels(recs);
  ASSERT_EQ(panels.size(), 2u);
  EXPECT_EQ(panels[0].y_label, "loss");
  ASSERT_EQ(panels[0].series.size(), 2u);
  EXPECT_EQ(panels[0].series[0].label, "train loss");
  EXPECT_EQ(panels[0].series[0].x, (std::vector<double>{1, 2, 3}));
  EXPECT_EQ(panels[0].series[0].y, (std::vector<double>{2.0, 1.5, 1.2}));
  EXPECT_EQ(panels[0].series[1].label, "val loss");
  EXPECT_TRUE(panels[0].series[1].markers);
  EXPECT_FALSE(panels[0].log_y);
  EXPECT_EQ(panels[1].y_label, "accuracy");
  ASSERT_EQ(panels[1].series.size(), 2u);
  EXPECT_EQ(panels[1].series[1].y, (std::vector<double>{0.4}));

  // Without accuracy anywhere: only the loss panel. Losses over 3 decades: log axis.
  std::vector<json> lm;
  for (int s = 1; s <= 50; ++s) lm.push_back({{"step", s}, {"split", "train"}, {"loss", 10.0 * std::pow(0.85, s)}});
  auto p2 = metrics_panels(lm);
  ASSERT_EQ(p2.size(), 1u);
  EXPECT_TRUE(p2[0].log_y);
  EXPECT_FALSE(p2[0].series[0].markers);  // 50 dense points: a line
  EXPECT_NE(render_svg(p2, "t").find("loss (log scale)"), std::string::npos);
  EXPECT_TRUE(metrics_panels({}).empty());
  EXPECT_EQ(render_svg(p2, "t").find("smoothed"), std::string::npos);

  // A long noisy train curve also gets a smoothed line; sparse val points do not.
  std::vector<json> dense;
  for (int s = 1; s <= 500; ++s) dense.push_back({{"step", s}, {"loss", 1.0 + 0.2 * (s % 2)}});
  dense.push_back({{"step", 500}, {"split", "val"}, {"loss", 1.1}});
  std::string svg = render_svg(metrics_panels(dense), "t");
  size_t first = svg.find("class=\"smoothed\"");
  EXPECT_NE(first, std::string::npos);
  EXPECT_EQ(svg.find("class=\"smoothed\"", first + 1), std::string::npos);
}

TEST_F(PlotTest, CommandWritesSvgWithEverySeries) {
  write_run(dir_ + "/metrics.jsonl");
  testing::internal::CaptureStdout();
  ASSERT_EQ(run_cmd({"plot", dir_}), 0);
  std::string said = testing::internal::GetCapturedStdout();
  EXPECT_NE(said.find(dir_ + "/metrics.svg"), std::string::npos) << said;
  EXPECT_NE(said.find("6 series"), std::string::npos) << said;
  std::string svg = slurp(dir_ + "/metrics.svg");
  ASSERT_FALSE(svg.empty());
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  // Every series with its number of points, and its legend entry.
  for (auto [series, points] : std::vector<std::pair<std::string, int>>{
           {"train loss", 100}, {"val loss", 4}, {"test loss", 1}, {"train accuracy", 100}, {"val accuracy", 4}, {"test accuracy", 1}}) {
    EXPECT_NE(svg.find("data-series=\"" + series + "\" data-points=\"" + std::to_string(points) + "\""),
              std::string::npos)
        << series;
    EXPECT_NE(svg.find(">" + series + "</text>"), std::string::npos) << series;
  }
  EXPECT_NE(svg.find("data-panel=\"loss\""), std::string::npos);
  EXPECT_NE(svg.find("data-panel=\"accuracy\""), std::string::npos);
  EXPECT_NE(svg.find(">step</text>"), std::string::npos);
  // The title is the run directory's name.
  EXPECT_NE(svg.find(">" + fs::path(dir_).filename().string() + "</text>"), std::string::npos);
  // Step ticks 0..100 along the bottom.
  EXPECT_NE(svg.find(">100</text>"), std::string::npos);

  // Every drawn point lies inside a panel's plot area (x in [80, 690]).
  std::regex pt("([0-9.]+),([0-9.]+)");
  size_t at = 0;
  int checked = 0;
  while ((at = svg.find("points=\"", at)) != std::string::npos) {
    at += 8;
    std::string pts = svg.substr(at, svg.find('"', at) - at);
    for (auto it = std::sregex_iterator(pts.begin(), pts.end(), pt); it != std::sregex_iterator(); ++it) {
      double x = std::stod((*it)[1]);
      double y = std::stod((*it)[2]);
      EXPECT_GE(x, 80 - 1e-6);
      EXPECT_LE(x, 690 + 1e-6);
      EXPECT_GE(y, 50 - 1e-6);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 2 * (100 + 4 + 1));
}

TEST_F(PlotTest, LossOnlyRunHasNoAccuracyPanel) {
  write_run(dir_ + "/metrics.jsonl", /*with_accuracy=*/false);
  testing::internal::CaptureStdout();
  ASSERT_EQ(run_cmd({"plot", dir_ + "/metrics.jsonl", "--out", dir_ + "/custom.svg"}), 0);
  testing::internal::GetCapturedStdout();
  std::string svg = slurp(dir_ + "/custom.svg");
  EXPECT_NE(svg.find("data-series=\"train loss\""), std::string::npos);
  EXPECT_EQ(svg.find("accuracy"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir_ + "/metrics.svg"));
}

TEST_F(PlotTest, SvgIsWellFormedXml) {
  // Labels that need escaping must not break the document.
  std::ofstream(dir_ + "/metrics.jsonl") << "{\"step\":1,\"split\":\"a<b&\\\"c\",\"loss\":1.0}\n"
                                            "{\"step\":2,\"split\":\"a<b&\\\"c\",\"loss\":0.5}\n";
  testing::internal::CaptureStdout();
  ASSERT_EQ(run_cmd({"plot", dir_ + "/", "--out=" + dir_ + "/x.svg"}), 0);
  testing::internal::GetCapturedStdout();
  std::string svg = slurp(dir_ + "/x.svg");
  EXPECT_NE(svg.find("a&lt;b&amp;&quot;c loss"), std::string::npos);
  // The system interpreter first: it starts fastest and the check needs only the stdlib.
  for (const char* py : {"/usr/bin/python3", "python3"}) {
    std::string cmd = std::string(py) + " -c 'import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])' " +
                      dir_ + "/x.svg";
    if (std::system((std::string(py) + " -c '' >/dev/null 2>&1").c_str()) != 0) continue;
    EXPECT_EQ(std::system(cmd.c_str()), 0) << "not well-formed XML: " << cmd;
    return;
  }
  GTEST_SKIP() << "no python3 to check XML well-formedness";
}

TEST_F(PlotTest, EmptyMetricsGiveAPlaceholder) {
  std::ofstream(dir_ + "/metrics.jsonl") << "";
  testing::internal::CaptureStdout();
  ASSERT_EQ(run_cmd({"plot", dir_}), 0);
  EXPECT_NE(testing::internal::GetCapturedStdout().find("0 series"), std::string::npos);
  EXPECT_NE(slurp(dir_ + "/metrics.svg").find("no loss or accuracy records"), std::string::npos);
}

TEST_F(PlotTest, UsageAndInputErrorsExitWithTwo) {
  testing::internal::CaptureStderr();
  EXPECT_EQ(run_cmd({"plot"}), 2);
  EXPECT_EQ(run_cmd({"plot", dir_, "--bogus"}), 2);
  EXPECT_EQ(run_cmd({"plot", dir_, "--out"}), 2);
  EXPECT_EQ(run_cmd({"plot", dir_, dir_}), 2);
  EXPECT_EQ(run_cmd({"plot", dir_ + "/missing_run"}), 2);
  std::ofstream(dir_ + "/metrics.jsonl") << "{\"step\":1}\nnot json\n{\"step\":2}\n";
  EXPECT_EQ(run_cmd({"plot", dir_}), 2);
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("usage: kiln plot"), std::string::npos) << err;
  EXPECT_NE(err.find("unknown option '--bogus'"), std::string::npos) << err;
  EXPECT_NE(err.find(dir_ + "/missing_run/metrics.jsonl"), std::string::npos) << err;
  EXPECT_NE(err.find(dir_ + "/metrics.jsonl:2"), std::string::npos) << err;
  testing::internal::CaptureStdout();
  EXPECT_EQ(run_cmd({"plot", "--help"}), 0);
  EXPECT_NE(testing::internal::GetCapturedStdout().find("usage"), std::string::npos);
}

}  // namespace
}  // namespace kiln

// What a run reports: metrics.jsonl (one JSON object per line, the record
// plots and comparisons read) and the console (a progress bar on a terminal,
// plain log lines otherwise).
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kiln {

/// Writes RUN_DIR/metrics.jsonl, one object per line, flushed per line so a
/// killed run loses at most the line being written.
///
/// Resuming from a checkpoint at step S keeps the existing lines whose "step"
/// is <= S byte for byte, drops the rest (they will be produced again) and a
/// trailing partial line, then appends. So a resumed run's file equals an
/// uninterrupted run's, provided the trainer writes a step's lines (train,
/// then val) before saving that step's checkpoint.
class MetricsWriter {
 public:
  /// resume_step < 0: a fresh run (an existing file is replaced).
  /// Throws Error naming the path when it cannot be opened or rewritten.
  explicit MetricsWriter(const std::string& path, int64_t resume_step = -1);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  /// Appends `record` (a JSON object with an integer "step") as one line.
  void write(const nlohmann::json& record);

  const std::string& path() const { return path_; }
  /// Lines kept from an earlier run when resuming (0 for a fresh run).
  int64_t lines_kept() const { return kept_; }

 private:
  std::string path_;
  FILE* f_ = nullptr;
  int64_t kept_ = 0;
};

/// Reads metrics.jsonl: every complete line as a JSON object. A trailing
/// partial line (a run killed mid-write) is ignored; a malformed line
/// elsewhere, or a missing file, is an InputError naming file and line.
std::vector<nlohmann::json> read_metrics(const std::string& path);

/// One finished training step, as the console shows it.
struct StepReport {
  int64_t step = 0;          ///< steps finished so far (1-based)
  double loss = 0;
  double lr = 0;
  double throughput = 0;     ///< units per second; <= 0 hides it
  std::string unit = "samples/s";
};

/// Progress on the console. On a terminal: one line redrawn in place
///   step 1200/5000 [#######.............] loss 0.4123  lr 3.0e-04  18.2K samples/s  eta 1m23s
/// (at most every `min_redraw_s`, and always on the last step); messages
/// (eval results, "saved checkpoint ...") print above it. Not on a terminal:
/// a plain line every `log_every` steps, on the first and the last.
class ConsoleReporter {
 public:
  enum class Mode { automatic, bar, lines };  ///< automatic: bar when isatty(out)
  struct Options {
    int64_t total_steps = 0;
    int64_t log_every = 10;
    FILE* out = stdout;
    Mode mode = Mode::automatic;
    int width = 0;              ///< line width; 0: the terminal's (100 if unknown)
    double min_redraw_s = 0.1;  ///< bar mode: redraw at most this often
    std::function<double()> clock;  ///< seconds; default steady_clock (tests inject one)
  };

  explicit ConsoleReporter(Options opt);
  ~ConsoleReporter();

  /// Marks the start of timing; `first_step` is the step a resumed run starts
  /// after (0 for a fresh run), so ETA counts only this run's steps.
  void start(int64_t first_step = 0);
  void step(const StepReport& r);
  /// Prints a whole line (clearing and redrawing the bar around it).
  void message(const std::string& line);
  /// Ends the bar's line. Idempotent; the destructor calls it.
  void finish();

  bool is_bar() const { return bar_; }

 private:
  std::string render(const StepReport& r, double eta_s) const;
  double now() const;

  Options opt_;
  bool bar_ = false;
  bool started_ = false;
  bool drawn_ = false;  // a bar is on screen (needs clearing before a message)
  bool finished_ = false;
  int64_t first_step_ = 0;
  double t0_ = 0;
  double last_draw_ = -1e300;
  StepReport last_;
};

/// "45s", "3m07s", "2h05m", "3d04h"; "?" for negative or non-finite values.
std::string format_duration(double seconds);
/// Three significant digits with a K/M/G suffix: "950", "18.2K", "1.05M".
std::string format_rate(double per_second);

}  // namespace kiln

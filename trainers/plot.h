// `kiln plot RUN_DIR [--out FILE.svg]`: loss and accuracy curves from a run's
// metrics.jsonl, drawn as a self-contained SVG (no Python, no plotting
// library). One panel for loss (a series per split: train, val, test, ...),
// one for accuracy when any record has it; panels share the step axis.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kiln {

struct PlotSeries {
  std::string label;  ///< "train loss", "val accuracy", ...
  std::string color;  ///< CSS colour
  std::vector<double> x, y;
  bool markers = false;  ///< draw a dot at each point (sparse series: val, test)
};

struct PlotPanel {
  std::string y_label;  ///< "loss", "accuracy"
  std::vector<PlotSeries> series;
  bool log_y = false;  ///< log10 y axis (chosen for losses that span > 1.5 decades)
};

/// Groups metrics records (objects with "step", "split" and numeric
/// "loss"/"accuracy") into panels. Records without a split count as "train";
/// non-finite values are skipped. Panels without any point are left out.
std::vector<PlotPanel> metrics_panels(const std::vector<nlohmann::json>& records);

/// The SVG document for `panels` under `title` (axes, ticks, grid, labels,
/// legend). An empty panel list gives a document saying there is no data.
std::string render_svg(const std::vector<PlotPanel>& panels, const std::string& title);

/// Reads `metrics_path`, writes `svg_path` (atomically). Returns the number of
/// series drawn. InputError when the metrics file is missing or malformed.
int plot_metrics(const std::string& metrics_path, const std::string& svg_path, const std::string& title);

/// Tick positions for [lo, hi]: multiples of 1, 2 or 5 × 10^k, about
/// `target` of them, covering the range ("nice numbers").
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

/// Entry point of `kiln plot`. argv[0] is the subcommand name ("plot"),
/// then RUN_DIR (or a metrics.jsonl path) and optionally --out FILE.svg
/// (default RUN_DIR/metrics.svg). Returns 0, or 2 for a usage or input error
/// (message on stderr), 1 for any other failure.
int cmd_plot(int argc, char** argv);

}  // namespace kiln

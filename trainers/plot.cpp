#include "trainers/plot.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>

#include "runtime/atomic_file.h"
#include "runtime/error.h"
#include "trainers/metrics.h"

namespace kiln {

using json = nlohmann::json;

namespace {

// Layout, in SVG user units (pixels at 100%).
constexpr double kWidth = 860;
constexpr double kPanelHeight = 300;
constexpr double kLeft = 80;     // room for y tick labels and the y label
constexpr double kRight = 170;   // room for the legend
constexpr double kTop = 50;      // room for the title
constexpr double kGap = 60;      // between panels (x tick labels)
constexpr double kBottom = 60;   // x tick labels and the x label
constexpr size_t kMaxPoints = 20000;  // per series; beyond, every k-th point
constexpr size_t kSmoothAbove = 200;  // dense series longer than this get a smoothed line

const char* color_for(const std::string& split, int index) {
  if (split == "train") return "#1f77b4";
  if (split == "val") return "#ff7f0e";
  if (split == "test") return "#2ca02c";
  static const char* others[] = {"#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  return others[index % 5];
}

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&apos;"; break;
      default:
        // Control characters are not allowed in XML 1.0 text.
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\t' || c == '\n') o += c;
    }
  }
  return o;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

// Tick label: short, without floating-point noise (0.30000000000000004).
std::string tick_label(double v, double step) {
  if (std::fabs(v) < step * 1e-9) v = 0;
  char b[32];
  double a = std::fabs(v);
  if (a >= 1e6 && std::fmod(a, 1e6) == 0) {
    std::snprintf(b, sizeof b, "%gM", v / 1e6);
  } else if (a >= 1e4 && std::fmod(a, 1e3) == 0) {
    std::snprintf(b, sizeof b, "%gK", v / 1e3);
  } else {
    std::snprintf(b, sizeof b, "%.6g", v);
  }
  return b;
}

struct Range {
  double lo = 0, hi = 1;
};

// log10 ticks: every decade, plus 2× and 5× when few decades are shown.
std::vector<double> log_ticks(double lo, double hi) {
  int d0 = static_cast<int>(std::floor(std::log10(lo) + 1e-9));
  int d1 = static_cast<int>(std::ceil(std::log10(hi) - 1e-9));
  if (d1 <= d0) d1 = d0 + 1;
  std::vector<double> t;
  bool minor = d1 - d0 <= 2;
  for (int d = d0; d <= d1; ++d) {
    double p = std::pow(10.0, d);
    t.push_back(p);
    if (minor && d < d1) {
      t.push_back(2 * p);
      t.push_back(5 * p);
    }
  }
  return t;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {0, 1};
  if (hi < lo) std::swap(lo, hi);
  if (hi - lo < 1e-12 * std::max(1.0, std::fabs(hi))) {
    // One value: show a small window around it.
    double pad = lo == 0 ? 1 : std::fabs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  target = std::max(target, 2);
  double raw = (hi - lo) / target;
  int k = static_cast<int>(std::floor(std::log10(raw)));
  double mant = 1;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * std::pow(10.0, k) >= raw * 0.999) {
      mant = m;
      break;
    }
  }
  // Tick i is i·mant·10^k; dividing by 10^-k (exact for small k) instead of
  // multiplying by an inexact 10^k makes 6·2/10^4 exactly the double 0.0012.
  auto tick = [&](double i) { return k >= 0 ? i * mant * std::pow(10.0, k) : i * mant / std::pow(10.0, -k); };
  double step = tick(1);
  double first = std::floor(lo / step + 1e-9);
  double last = std::ceil(hi / step - 1e-9);
  if (tick(first) > lo) first -= 1;  // the tolerance above must not uncover the range
  if (tick(last) < hi) last += 1;
  std::vector<double> t;
  for (double i = first; i <= last + 0.5; i += 1) t.push_back(tick(i));
  return t;
}

std::vector<PlotPanel> metrics_panels(const std::vector<json>& records) {
  // split → points, in file order, kept per metric.
  std::map<std::string, PlotSeries> loss, acc;
  std::vector<std::string> split_order;
  for (const json& r : records) {
    if (!r.is_object() || !r.contains("step") || !r["step"].is_number()) continue;
    std::string split = r.contains("split") && r["split"].is_string() ? r["split"].get<std::string>() : "train";
    if (std::find(split_order.begin(), split_order.end(), split) == split_order.end()) split_order.push_back(split);
    double x = r["step"].get<double>();
    for (auto [key, dest] : {std::pair<const char*, std::map<std::string, PlotSeries>*>{"loss", &loss},
                             std::pair<const char*, std::map<std::string, PlotSeries>*>{"accuracy", &acc}}) {
      if (!r.contains(key) || !r[key].is_number()) continue;
      double y = r[key].get<double>();
      if (!std::isfinite(y)) continue;
      PlotSeries& s = (*dest)[split];
      s.x.push_back(x);
      s.y.push_back(y);
    }
  }
  std::vector<PlotPanel> panels;
  for (auto [name, src] : {std::pair<const char*, std::map<std::string, PlotSeries>*>{"loss", &loss},
                           std::pair<const char*, std::map<std::string, PlotSeries>*>{"accuracy", &acc}}) {
    PlotPanel p;
    p.y_label = name;
    int index = 0;
    for (const std::string& split : split_order) {
      auto it = src->find(split);
      if (it == src->end()) continue;
      PlotSeries s = std::move(it->second);
      s.label = split + " " + name;
      s.color = color_for(split, index++);
      // Dense series (train, every step) read best as lines; sparse ones
      // (evaluations) need visible points.
      s.markers = split != "train" || s.x.size() <= 30;
      p.series.push_back(std::move(s));
    }
    if (p.series.empty()) continue;
    if (std::string(name) == "loss") {
      double mn = INFINITY, mx = -INFINITY;
      for (const auto& s : p.series)
        for (double y : s.y) {
          mn = std::min(mn, y);
          mx = std::max(mx, y);
        }
      p.log_y = mn > 0 && mx / mn > std::pow(10.0, 1.5);
    }
    panels.push_back(std::move(p));
  }
  return panels;
}

std::string render_svg(const std::vector<PlotPanel>& panels, const std::string& title) {
  const double plot_w = kWidth - kLeft - kRight;
  const size_t n = panels.size();
  const double height = kTop + (n ? n * kPanelHeight + (n - 1) * kGap : kPanelHeight) + kBottom;
  std::ostringstream o;
  o << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << height
    << "\" viewBox=\"0 0 " << kWidth << " " << height << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << kWidth / 2 << "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">" << xml_escape(title)
    << "</text>\n";
  if (n == 0) {
    o << "<text x=\"" << kWidth / 2 << "\" y=\"" << height / 2
      << "\" text-anchor=\"middle\" fill=\"#666\">no loss or accuracy records to plot</text>\n</svg>\n";
    return o.str();
  }

  // One step axis for all panels so they line up.
  double xmin = INFINITY, xmax = -INFINITY;
  for (const auto& p : panels)
    for (const auto& s : p.series)
      for (double x : s.x) {
        xmin = std::min(xmin, x);
        xmax = std::max(xmax, x);
      }
  std::vector<double> xt = nice_ticks(xmin, xmax);
  Range xr{xt.front(), xt.back()};
  double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1;
  auto px = [&](double x) { return kLeft + (x - xr.lo) / (xr.hi - xr.lo) * plot_w; };

  for (size_t pi = 0; pi < n; ++pi) {
    const PlotPanel& p = panels[pi];
    const double top = kTop + pi * (kPanelHeight + kGap);
    const double bottom = top + kPanelHeight;
    double ymin = INFINITY, ymax = -INFINITY;
    for (const auto& s : p.series)
      for (double y : s.y) {
        if (p.log_y && y <= 0) continue;
        ymin = std::min(ymin, y);
        ymax = std::max(ymax, y);
      }
    std::vector<double> yt = p.log_y ? log_ticks(ymin, ymax) : nice_ticks(ymin, ymax);
    Range yr{yt.front(), yt.back()};
    double ystep = yt.size() > 1 ? yt[1] - yt[0] : 1;
    auto fy = [&](double y) { return p.log_y ? std::log10(y) : y; };
    auto py = [&](double y) { return bottom - (fy(y) - fy(yr.lo)) / (fy(yr.hi) - fy(yr.lo)) * kPanelHeight; };

    o << "<g class=\"panel\" data-panel=\"" << xml_escape(p.y_label) << "\">\n";
    // Grid and ticks.
    o << "<g stroke=\"#e5e5e5\" stroke-width=\"1\">\n";
    for (double x : xt) o << "<line x1=\"" << num(px(x)) << "\" y1=\"" << top << "\" x2=\"" << num(px(x)) << "\" y2=\"" << bottom << "\"/>\n";
    for (double y : yt) o << "<line x1=\"" << kLeft << "\" y1=\"" << num(py(y)) << "\" x2=\"" << kLeft + plot_w << "\" y2=\"" << num(py(y)) << "\"/>\n";
    o << "</g>\n";
    o << "<rect x=\"" << kLeft << "\" y=\"" << top << "\" width=\"" << plot_w << "\" height=\"" << kPanelHeight
      << "\" fill=\"none\" stroke=\"#333\"/>\n";
    o << "<g class=\"xticks\" text-anchor=\"middle\" fill=\"#333\">\n";
    for (double x : xt) {
      o << "<line x1=\"" << num(px(x)) << "\" y1=\"" << bottom << "\" x2=\"" << num(px(x)) << "\" y2=\"" << bottom + 5
        << "\" stroke=\"#333\"/><text x=\"" << num(px(x)) << "\" y=\"" << bottom + 18 << "\">"
        << tick_label(x, xstep) << "</text>\n";
    }
    o << "</g>\n<g class=\"yticks\" text-anchor=\"end\" fill=\"#333\">\n";
    for (double y : yt) {
      o << "<line x1=\"" << kLeft - 5 << "\" y1=\"" << num(py(y)) << "\" x2=\"" << kLeft << "\" y2=\"" << num(py(y))
        << "\" stroke=\"#333\"/><text x=\"" << kLeft - 8 << "\" y=\"" << num(py(y) + 4) << "\">"
        << tick_label(y, p.log_y ? y : ystep) << "</text>\n";
    }
    o << "</g>\n";
    o << "<text x=\"" << kLeft + plot_w / 2 << "\" y=\"" << bottom + 38 << "\" text-anchor=\"middle\">step</text>\n";
    o << "<text transform=\"translate(22," << num(top + kPanelHeight / 2) << ") rotate(-90)\" text-anchor=\"middle\">"
      << xml_escape(p.y_label) << (p.log_y ? " (log scale)" : "") << "</text>\n";

    // Series.
    for (const PlotSeries& s : p.series) {
      size_t stride = s.x.size() > kMaxPoints ? (s.x.size() + kMaxPoints - 1) / kMaxPoints : 1;
      std::ostringstream pts;
      size_t count = 0;
      for (size_t i = 0; i < s.x.size(); i += stride) {
        if (p.log_y && s.y[i] <= 0) continue;
        pts << (count ? " " : "") << num(px(s.x[i])) << "," << num(py(s.y[i]));
        ++count;
      }
      // A dense noisy series (train loss, every step) is drawn faintly with
      // an exponential moving average on top, so the trend stays readable.
      bool smooth = !s.markers && s.x.size() > kSmoothAbove;
      o << "<g class=\"series\" data-series=\"" << xml_escape(s.label) << "\" data-points=\"" << count << "\">\n";
      o << "<polyline fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"1.5\""
        << (smooth ? " stroke-opacity=\"0.3\"" : "") << " points=\"" << pts.str() << "\"/>\n";
      if (smooth) {
        // Span ~1/50 of the run; bias-corrected so the start is not dragged to 0.
        double alpha = 2.0 / (static_cast<double>(s.x.size()) / 50.0 + 1.0);
        double ema = 0, weight = 0;
        std::ostringstream sm;
        size_t k = 0;
        for (size_t i = 0; i < s.x.size(); ++i) {
          double y = p.log_y ? (s.y[i] > 0 ? std::log10(s.y[i]) : NAN) : s.y[i];
          if (!std::isfinite(y)) continue;
          ema = (1 - alpha) * ema + alpha * y;
          weight = (1 - alpha) * weight + alpha;
          if (i % stride) continue;
          double v = ema / weight;
          sm << (k++ ? " " : "") << num(px(s.x[i])) << "," << num(py(p.log_y ? std::pow(10.0, v) : v));
        }
        o << "<polyline class=\"smoothed\" fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"2\" points=\""
          << sm.str() << "\"/>\n";
      }
      if (s.markers) {
        for (size_t i = 0; i < s.x.size(); i += stride) {
          if (p.log_y && s.y[i] <= 0) continue;
          o << "<circle cx=\"" << num(px(s.x[i])) << "\" cy=\"" << num(py(s.y[i])) << "\" r=\"3\" fill=\"" << s.color
            << "\"/>\n";
        }
      }
      o << "</g>\n";
    }

    // Legend, right of the panel.
    double lx = kLeft + plot_w + 20;
    for (size_t si = 0; si < p.series.size(); ++si) {
      double ly = top + 16 + si * 20.0;
      o << "<g class=\"legend\"><line x1=\"" << lx << "\" y1=\"" << ly << "\" x2=\"" << lx + 24 << "\" y2=\"" << ly
        << "\" stroke=\"" << p.series[si].color << "\" stroke-width=\"2\"/><text x=\"" << lx + 30 << "\" y=\""
        << ly + 4 << "\">" << xml_escape(p.series[si].label) << "</text></g>\n";
    }
    o << "</g>\n";
  }
  o << "</svg>\n";
  return o.str();
}

int plot_metrics(const std::string& metrics_path, const std::string& svg_path, const std::string& title) {
  std::vector<PlotPanel> panels = metrics_panels(read_metrics(metrics_path));
  write_file_atomic(svg_path, render_svg(panels, title));
  int series = 0;
  for (const auto& p : panels) series += static_cast<int>(p.series.size());
  return series;
}

int cmd_plot(int argc, char** argv) {
  const char* usage =
      "usage: kiln plot RUN_DIR [--out FILE.svg]\n"
      "  Draws loss and accuracy against step from RUN_DIR/metrics.jsonl (RUN_DIR may\n"
      "  also be the metrics.jsonl file) into an SVG, by default RUN_DIR/metrics.svg.\n";
  std::string run, out;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(usage, stdout);
      return 0;
    }
    if (a == "--out" || a == "-o") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kiln plot: %s needs a file name\n%s", a.c_str(), usage);
        return 2;
      }
      out = argv[++i];
    } else if (a.compare(0, 6, "--out=") == 0) {
      out = a.substr(6);
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "kiln plot: unknown option '%s'\n%s", a.c_str(), usage);
      return 2;
    } else if (run.empty()) {
      run = a;
    } else {
      std::fprintf(stderr, "kiln plot: unexpected argument '%s'\n%s", a.c_str(), usage);
      return 2;
    }
  }
  if (run.empty()) {
    std::fprintf(stderr, "kiln plot: missing RUN_DIR\n%s", usage);
    return 2;
  }
  while (run.size() > 1 && run.back() == '/') run.pop_back();
  struct stat st;
  bool is_file = ::stat(run.c_str(), &st) == 0 && S_ISREG(st.st_mode);
  std::string metrics = is_file ? run : run + "/metrics.jsonl";
  std::string dir = is_file ? parent_directory(run) : run;
  if (out.empty()) out = dir + "/metrics.svg";
  std::string title = dir;
  size_t slash = title.find_last_of('/');
  if (slash != std::string::npos && slash + 1 < title.size()) title = title.substr(slash + 1);
  try {
    int series = plot_metrics(metrics, out, title);
    std::printf("kiln plot: wrote %s (%d series)\n", out.c_str(), series);
    return 0;
  } catch (const InputError& e) {
    std::fprintf(stderr, "kiln plot: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln plot: %s\n", e.what());
    return 1;
  }
}

}  // namespace kiln

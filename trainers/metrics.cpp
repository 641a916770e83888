#include "trainers/metrics.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "runtime/atomic_file.h"
#include "runtime/error.h"

namespace kiln {

using json = nlohmann::json;

namespace {

bool read_text(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return true;
}

bool has_int_step(const json& j) { return j.is_object() && j.contains("step") && j["step"].is_number_integer(); }

}  // namespace

// ---------------------------------------------------------------------------
// metrics.jsonl

MetricsWriter::MetricsWriter(const std::string& path, int64_t resume_step) : path_(path) {
  if (resume_step >= 0) {
    std::string text;
    if (read_text(path, &text)) {
      std::string kept;
      size_t pos = 0;
      int64_t line_no = 0;
      while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        if (nl == std::string::npos) break;  // partial last line of a killed run: dropped
        std::string line = text.substr(pos, nl - pos);
        pos = nl + 1;
        ++line_no;
        json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (!has_int_step(j)) {
          std::fprintf(stderr, "kiln: warning: %s:%lld is not a metrics record; dropped on resume\n", path.c_str(),
                       static_cast<long long>(line_no));
          continue;
        }
        if (j["step"].get<int64_t>() > resume_step) continue;  // will be written again
        kept += line;
        kept += '\n';
        ++kept_;
      }
      // Atomic, so a crash here cannot lose the lines being kept.
      write_file_atomic(path, kept);
    }
  }
  f_ = std::fopen(path.c_str(), resume_step >= 0 ? "ab" : "wb");
  if (!f_) {
    int err = errno;
    throw Error("cannot open metrics file '" + path + "': " + std::strerror(err));
  }
}

MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}

void MetricsWriter::write(const json& record) {
  KILN_CHECK(has_int_step(record), "metrics record needs an integer \"step\": " << record.dump());
  std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0) {
    int err = errno;
    throw Error("cannot write metrics file '" + path_ + "': " + std::strerror(err));
  }
}

std::vector<json> read_metrics(const std::string& path) {
  std::string text;
  if (!read_text(path, &text)) {
    throw InputError("cannot open metrics file '" + path + "': " + std::strerror(errno));
  }
  std::vector<json> out;
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    bool partial = nl == std::string::npos;
    std::string line = text.substr(pos, partial ? std::string::npos : nl - pos);
    pos = partial ? text.size() : nl + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      if (partial) break;  // the run was killed while writing this line
      throw InputError(path + ":" + std::to_string(line_no) + ": not a JSON object");
    }
    out.push_back(std::move(j));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Console

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  long long t = static_cast<long long>(std::llround(s));
  char buf[32];
  if (t < 60) {
    std::snprintf(buf, sizeof buf, "%llds", t);
  } else if (t < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
  } else if (t < 86400) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 3600, (t % 3600) / 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lldd%02lldh", t / 86400, (t % 86400) / 3600);
  }
  return buf;
}

std::string format_rate(double v) {
  if (!std::isfinite(v)) return "?";
  const char* suffix[] = {"", "K", "M", "G", "T"};
  int k = 0;
  // Decide the suffix on the rounded value so 999.96 prints as "1.00K".
  while (k < 4 && std::fabs(v) >= 999.5) {
    v /= 1000.0;
    ++k;
  }
  char buf[32];
  double a = std::fabs(v);
  std::snprintf(buf, sizeof buf, a < 9.995 ? "%.2f%s" : a < 99.95 ? "%.1f%s" : "%.0f%s", v, suffix[k]);
  return buf;
}

ConsoleReporter::ConsoleReporter(Options opt) : opt_(std::move(opt)) {
  KILN_CHECK(opt_.out != nullptr, "ConsoleReporter needs an output stream");
  if (opt_.log_every < 1) opt_.log_every = 1;
  bar_ = opt_.mode == Mode::bar || (opt_.mode == Mode::automatic && ::isatty(fileno(opt_.out)));
}

ConsoleReporter::~ConsoleReporter() { finish(); }

double ConsoleReporter::now() const {
  if (opt_.clock) return opt_.clock();
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

void ConsoleReporter::start(int64_t first_step) {
  started_ = true;
  first_step_ = first_step;
  t0_ = now();
}

std::string ConsoleReporter::render(const StepReport& r, double eta_s) const {
  char buf[64];
  std::string head = "step " + std::to_string(r.step);
  if (opt_.total_steps > 0) head += "/" + std::to_string(opt_.total_steps);
  std::string tail;
  const char* sep = bar_ ? "  " : " | ";
  std::snprintf(buf, sizeof buf, "loss %.4f", r.loss);
  tail += buf;
  std::snprintf(buf, sizeof buf, "%slr %.2e", sep, r.lr);
  tail += buf;
  if (r.throughput > 0) tail += sep + format_rate(r.throughput) + " " + r.unit;
  if (opt_.total_steps > 0) tail += std::string(sep) + "eta " + format_duration(eta_s);
  if (!bar_) return head + sep + tail;

  int width = opt_.width;
  if (width <= 0) {
    struct winsize ws;
    width = ::ioctl(fileno(opt_.out), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 100;
  }
  std::string line = head;
  // The bar takes what the text leaves, within [10, 40] cells, or is dropped.
  int room = width - 1 - static_cast<int>(head.size() + tail.size()) - 5;  // " [", "]", "  "
  if (opt_.total_steps > 0 && room >= 10) {
    int cells = std::min(room, 40);
    double frac = std::min(1.0, std::max(0.0, static_cast<double>(r.step) / static_cast<double>(opt_.total_steps)));
    int filled = static_cast<int>(frac * cells);
    line += " [" + std::string(filled, '#') + std::string(cells - filled, '.') + "]";
  }
  line += "  " + tail;
  // Never wrap: a wrapped line cannot be redrawn in place with \r.
  if (static_cast<int>(line.size()) > width - 1) line.resize(static_cast<size_t>(std::max(0, width - 1)));
  return line;
}

void ConsoleReporter::step(const StepReport& r) {
  if (!started_) start(r.step - 1);
  last_ = r;
  double t = now();
  int64_t done = r.step - first_step_;
  double eta = -1;
  if (done > 0 && opt_.total_steps > 0) {
    eta = static_cast<double>(opt_.total_steps - r.step) * (t - t0_) / static_cast<double>(done);
  }
  bool last = opt_.total_steps > 0 && r.step >= opt_.total_steps;
  if (bar_) {
    if (!last && t - last_draw_ < opt_.min_redraw_s) return;
    last_draw_ = t;
    std::string line = "\r" + render(r, eta) + "\x1b[K";
    std::fputs(line.c_str(), opt_.out);
    drawn_ = true;
  } else {
    if (!(r.step % opt_.log_every == 0 || last || r.step == first_step_ + 1)) return;
    std::string line = render(r, eta) + "\n";
    std::fputs(line.c_str(), opt_.out);
  }
  std::fflush(opt_.out);
}

void ConsoleReporter::message(const std::string& line) {
  if (bar_ && drawn_) {
    std::fputs(("\r\x1b[K" + line + "\n").c_str(), opt_.out);
    // Redraw the bar below the message, as it was.
    double t = now();
    int64_t done = last_.step - first_step_;
    double eta = done > 0 && opt_.total_steps > 0
                     ? static_cast<double>(opt_.total_steps - last_.step) * (t - t0_) / static_cast<double>(done)
                     : -1;
    std::fputs(("\r" + render(last_, eta) + "\x1b[K").c_str(), opt_.out);
  } else {
    std::fputs((line + "\n").c_str(), opt_.out);
  }
  std::fflush(opt_.out);
}

void ConsoleReporter::finish() {
  if (finished_) return;
  finished_ = true;
  if (bar_ && drawn_) {
    std::fputs("\n", opt_.out);
    std::fflush(opt_.out);
  }
  drawn_ = false;
}

}  // namespace kiln

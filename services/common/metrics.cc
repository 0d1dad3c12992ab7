#include "services/common/metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "services/common/log.h"

namespace internvl::services {
namespace {

void AtomicAdd(std::atomic<double>& a, double delta) {
  double old = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(old, old + delta, std::memory_order_relaxed)) {
  }
}

bool ValidName(const std::string& name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

// Prometheus numbers: integers without exponent noise, +Inf/-Inf/NaN spelled
// as the format requires.
std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

// Label values escape backslash, double quote and newline.
std::string EscapeLabelValue(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

// Help text escapes backslash and newline.
std::string EscapeHelp(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string FormatLabels(const Labels& labels, const std::pair<std::string, std::string>* extra = nullptr) {
  if (labels.empty() && extra == nullptr) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    absl::StrAppend(&out, first ? "" : ",", k, "=\"", EscapeLabelValue(v), "\"");
    first = false;
  }
  if (extra != nullptr) absl::StrAppend(&out, first ? "" : ",", extra->first, "=\"", extra->second, "\"");
  out += "}";
  return out;
}

void CheckLabels(const Labels& labels) {
  for (const auto& [k, v] : labels) {
    if (!ValidName(k) || k == "le") FatalError(absl::StrCat("bad label name ", k));
  }
}

}  // namespace

void Counter::Increment(double delta) {
  if (delta < 0) return;  // counters never go down
  AtomicAdd(value_, delta);
}

void Gauge::Add(double delta) { AtomicAdd(value_, delta); }

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)), counts_(new std::atomic<uint64_t>[upper_bounds_.size() + 1]) {
  for (size_t i = 0; i + 1 < upper_bounds_.size(); ++i)
    if (!(upper_bounds_[i] < upper_bounds_[i + 1])) FatalError("histogram bounds must ascend");
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) counts_[i].store(0);
}

void Histogram::Observe(double value) {
  size_t i = 0;
  while (i < upper_bounds_.size() && value > upper_bounds_[i]) ++i;
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, value);
  count_.fetch_add(1, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.upper_bounds = upper_bounds_;
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    s.cumulative_counts.push_back(cumulative);
  }
  s.sum = sum_.load(std::memory_order_relaxed);
  // The +Inf bucket is the count: keep the two consistent under concurrent
  // observations.
  s.count = cumulative;
  return s;
}

std::vector<double> DefaultLatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

MetricsRegistry::Family& MetricsRegistry::GetFamily(const std::string& name, const std::string& help, Type type) {
  if (!ValidName(name)) FatalError(absl::StrCat("bad metric name ", name));
  auto [it, inserted] = families_.try_emplace(name);
  if (inserted) {
    it->second.type = type;
    it->second.help = help;
  }
  if (it->second.type != type) FatalError(absl::StrCat("metric ", name, " registered with two types"));
  return it->second;
}

Counter* MetricsRegistry::GetCounter(const std::string& name, const std::string& help, const Labels& labels) {
  absl::MutexLock lock(&mu_);
  CheckLabels(labels);
  auto& slot = GetFamily(name, help, Type::kCounter).counters[labels];
  if (!slot) slot = std::make_unique<Counter>();
  return slot.get();
}

Gauge* MetricsRegistry::GetGauge(const std::string& name, const std::string& help, const Labels& labels) {
  absl::MutexLock lock(&mu_);
  CheckLabels(labels);
  auto& slot = GetFamily(name, help, Type::kGauge).gauges[labels];
  if (!slot) slot = std::make_unique<Gauge>();
  return slot.get();
}

Histogram* MetricsRegistry::GetHistogram(const std::string& name, const std::string& help,
                                         const std::vector<double>& upper_bounds, const Labels& labels) {
  absl::MutexLock lock(&mu_);
  CheckLabels(labels);
  auto& slot = GetFamily(name, help, Type::kHistogram).histograms[labels];
  if (!slot) slot = std::make_unique<Histogram>(upper_bounds);
  return slot.get();
}

std::string MetricsRegistry::Render() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const auto& [name, family] : families_) {
    const char* type = family.type == Type::kCounter ? "counter" : family.type == Type::kGauge ? "gauge" : "histogram";
    absl::StrAppend(&out, "# HELP ", name, " ", EscapeHelp(family.help), "\n# TYPE ", name, " ", type, "\n");
    for (const auto& [labels, c] : family.counters) {
      absl::StrAppend(&out, name, FormatLabels(labels), " ", FormatValue(c->value()), "\n");
    }
    for (const auto& [labels, g] : family.gauges) {
      absl::StrAppend(&out, name, FormatLabels(labels), " ", FormatValue(g->value()), "\n");
    }
    for (const auto& [labels, h] : family.histograms) {
      const Histogram::Snapshot s = h->snapshot();
      for (size_t i = 0; i <= s.upper_bounds.size(); ++i) {
        const std::pair<std::string, std::string> le{
            "le", i < s.upper_bounds.size() ? FormatValue(s.upper_bounds[i]) : "+Inf"};
        absl::StrAppend(&out, name, "_bucket", FormatLabels(labels, &le), " ", s.cumulative_counts[i], "\n");
      }
      absl::StrAppend(&out, name, "_sum", FormatLabels(labels), " ", FormatValue(s.sum), "\n");
      absl::StrAppend(&out, name, "_count", FormatLabels(labels), " ", s.count, "\n");
    }
  }
  return out;
}

double MetricsRegistry::GaugeSum(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  const auto it = families_.find(name);
  if (it == families_.end()) return 0;
  double sum = 0;
  for (const auto& [labels, g] : it->second.gauges) sum += g->value();
  return sum;
}

RpcMetrics::RpcMetrics(MetricsRegistry* registry, std::string service)
    : registry_(registry),
      service_(std::move(service)),
      in_flight_(registry->GetGauge("internvl_in_flight_requests", "RPCs started and not yet finished",
                                    {{"service", service_}})) {}

absl::Status RpcMetrics::Admit() const {
  if (registry_->admitting()) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(service_, " is shutting down; retry on another replica"));
}

void RpcMetrics::Record(const std::string& method, const std::string& code, double seconds) {
  registry_
      ->GetCounter("internvl_requests_total", "Finished RPCs by method and status code",
                   {{"service", service_}, {"method", method}, {"code", code}})
      ->Increment();
  registry_
      ->GetHistogram("internvl_request_latency_seconds", "RPC latency from start to finish", DefaultLatencyBuckets(),
                     {{"service", service_}, {"method", method}})
      ->Observe(seconds);
}

}  // namespace internvl::services

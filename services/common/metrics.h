// Prometheus metrics: counters, gauges and histograms in a registry that
// renders the text exposition format (version 0.0.4) for `GET /metrics`.
//
// Metrics are created once (at startup) and then updated lock-free from any
// thread; the returned pointers live as long as the registry. A family is a
// name + help + type; each distinct label set is one series of the family.
//
//   MetricsRegistry registry;
//   Counter* hits = registry.GetCounter("internvl_cache_hits_total", "...");
//   hits->Increment();
//   std::string text = registry.Render();
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace internvl::services {

// Label name -> value, rendered in name order.
using Labels = std::map<std::string, std::string>;

// A monotonically increasing value.
class Counter {
 public:
  void Increment(double delta = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down (queue depth, in-flight calls).
class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double delta);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted into cumulative buckets (`le` upper bounds, +Inf
// implied), with their sum and count.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<uint64_t> cumulative_counts;  // one per bound, then +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const;

 private:
  const std::vector<double> upper_bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // per bucket (not cumulative), last = +Inf
  std::atomic<double> sum_{0.0};
  std::atomic<uint64_t> count_{0};
};

// Latency buckets in seconds, 1 ms .. 60 s (model calls range from a cache hit
// to a multi-second encode of 13 large tiles).
std::vector<double> DefaultLatencyBuckets();

class MetricsRegistry {
 public:
  // Returns the series of family `name` with `labels`, creating either on
  // first use. The same name must always be used with the same type (a
  // mismatch is a programming error and aborts). Names and label names must
  // match [a-zA-Z_:][a-zA-Z0-9_:]*.
  Counter* GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge* GetGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  // `upper_bounds` (ascending) are used when the series is created.
  Histogram* GetHistogram(const std::string& name, const std::string& help, const std::vector<double>& upper_bounds,
                          const Labels& labels = {});

  // The text exposition format: families in name order, each with # HELP and
  // # TYPE lines, then its series.
  std::string Render() const;

  // Sum of every series of gauge family `name` (0 when there is none).
  double GaugeSum(const std::string& name) const;

  // Graceful drain, for RunServer on SIGTERM: after StopAdmitting(),
  // RpcMetrics::Admit() of every service registered here refuses new calls.
  void StopAdmitting() { admitting_ = false; }
  bool admitting() const { return admitting_.load(); }

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Family {
    Type type;
    std::string help;
    std::map<Labels, std::unique_ptr<Counter>> counters;
    std::map<Labels, std::unique_ptr<Gauge>> gauges;
    std::map<Labels, std::unique_ptr<Histogram>> histograms;
  };
  Family& GetFamily(const std::string& name, const std::string& help, Type type) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, Family> families_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> admitting_{true};
};

// The standard per-RPC metrics every service exports:
//   internvl_requests_total{service,method,code}
//   internvl_request_latency_seconds{service,method} (histogram)
//   internvl_in_flight_requests{service}
class RpcMetrics {
 public:
  RpcMetrics(MetricsRegistry* registry, std::string service);
  // Counts a finished call. `code` is the gRPC code name (e.g. "OK").
  void Record(const std::string& method, const std::string& code, double seconds);
  Gauge* in_flight() { return in_flight_; }
  MetricsRegistry* registry() { return registry_; }
  // OK while the process takes new calls; UNAVAILABLE (retryable, another
  // replica serves it) once its server began draining. Checked by each RPC
  // handler before it starts a call.
  absl::Status Admit() const;

 private:
  MetricsRegistry* registry_;
  std::string service_;
  Gauge* in_flight_;
};

}  // namespace internvl::services

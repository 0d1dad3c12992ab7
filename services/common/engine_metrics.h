// Prometheus series of the inference engine (core/engine/llm_engine.h),
// updated after every engine step:
//   internvl_engine_running_sequences, internvl_queue_depth{service} (waiting
//   sequences: what the decoder's HPA scales on), internvl_busy_workers{service}
//   (running sequences), internvl_engine_batch_sequences / _batch_tokens (the
//   last step), internvl_engine_kv_blocks{state="used"|"free"|"total"},
//   internvl_engine_prefix_query_tokens_total / _prefix_hit_tokens_total (hit
//   rate = hits / queries), internvl_engine_preemptions_total,
//   internvl_engine_steps_total, internvl_engine_step_sequences_total (mean
//   batch = step_sequences / steps), and the histograms
//   internvl_engine_time_to_first_token_seconds,
//   internvl_engine_inter_token_latency_seconds, internvl_engine_step_seconds.
#pragma once

#include <string>

#include "core/engine/llm_engine.h"
#include "services/common/metrics.h"

namespace internvl::services {

class EngineMetrics : public EngineObserver {
 public:
  // `service` labels the queue-depth and busy gauges ("llm_decoder", "all_in_one").
  EngineMetrics(MetricsRegistry* registry, const std::string& service);
  void OnStep(const EngineStepReport& report) override;

 private:
  Gauge* running_;
  Gauge* queue_depth_;
  Gauge* busy_;
  Gauge* batch_sequences_;
  Gauge* batch_tokens_;
  Gauge* kv_used_;
  Gauge* kv_free_;
  Gauge* kv_total_;
  Counter* prefix_query_;
  Counter* prefix_hit_;
  Counter* preemptions_;
  Counter* steps_;
  Counter* step_sequences_;
  Histogram* ttft_;
  Histogram* itl_;
  Histogram* step_;
};

}  // namespace internvl::services

#include "services/common/engine_metrics.h"

namespace internvl::services {
namespace {

// 1 ms .. 10 s: inter-token gaps and step times of a CPU or GPU decoder.
std::vector<double> StepBuckets() { return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}; }

}  // namespace

EngineMetrics::EngineMetrics(MetricsRegistry* r, const std::string& service)
    : running_(r->GetGauge("internvl_engine_running_sequences", "Sequences in the running batch")),
      queue_depth_(r->GetGauge("internvl_queue_depth", "Requests waiting for a worker", {{"service", service}})),
      busy_(r->GetGauge("internvl_busy_workers", "Workers running a request", {{"service", service}})),
      batch_sequences_(r->GetGauge("internvl_engine_batch_sequences", "Sequences in the last engine step")),
      batch_tokens_(r->GetGauge("internvl_engine_batch_tokens", "Tokens fed in the last engine step")),
      kv_used_(r->GetGauge("internvl_engine_kv_blocks", "KV cache blocks", {{"state", "used"}})),
      kv_free_(r->GetGauge("internvl_engine_kv_blocks", "KV cache blocks", {{"state", "free"}})),
      kv_total_(r->GetGauge("internvl_engine_kv_blocks", "KV cache blocks", {{"state", "total"}})),
      prefix_query_(r->GetCounter("internvl_engine_prefix_query_tokens_total",
                                  "Prompt tokens looked up in the prefix cache at admission")),
      prefix_hit_(r->GetCounter("internvl_engine_prefix_hit_tokens_total",
                                "Prompt tokens whose K/V came from the prefix cache")),
      preemptions_(r->GetCounter("internvl_engine_preemptions_total", "Sequences preempted for KV blocks")),
      steps_(r->GetCounter("internvl_engine_steps_total", "Batched engine steps")),
      step_sequences_(r->GetCounter("internvl_engine_step_sequences_total",
                                    "Sequences over all steps (mean batch = this / steps)")),
      ttft_(r->GetHistogram("internvl_engine_time_to_first_token_seconds", "Submit to the first sampled token",
                            DefaultLatencyBuckets())),
      itl_(r->GetHistogram("internvl_engine_inter_token_latency_seconds", "Gap between a sequence's tokens",
                           StepBuckets())),
      step_(r->GetHistogram("internvl_engine_step_seconds", "One batched forward + sampling", StepBuckets())) {}

void EngineMetrics::OnStep(const EngineStepReport& report) {
  running_->Set(static_cast<double>(report.running));
  queue_depth_->Set(static_cast<double>(report.waiting));
  busy_->Set(static_cast<double>(report.running));
  batch_sequences_->Set(static_cast<double>(report.batch_sequences));
  batch_tokens_->Set(static_cast<double>(report.batch_tokens));
  kv_used_->Set(static_cast<double>(report.kv_blocks_used));
  kv_free_->Set(static_cast<double>(report.kv_blocks_free));
  kv_total_->Set(static_cast<double>(report.kv_blocks_total));
  if (report.prefix_query_tokens > 0) prefix_query_->Increment(static_cast<double>(report.prefix_query_tokens));
  if (report.prefix_hit_tokens > 0) prefix_hit_->Increment(static_cast<double>(report.prefix_hit_tokens));
  if (report.preemptions > 0) preemptions_->Increment(static_cast<double>(report.preemptions));
  steps_->Increment();
  step_sequences_->Increment(static_cast<double>(report.batch_sequences));
  for (double s : report.time_to_first_token_s) ttft_->Observe(s);
  for (double s : report.inter_token_s) itl_->Observe(s);
  step_->Observe(report.step_seconds);
}

}  // namespace internvl::services

#include "services/trainer/trainer_service.h"

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "services/common/status_map.h"
#include "services/common/streaming_reactor.h"

namespace internvl::services::trainer {
namespace {

class WatchCall;

// The manager's view of one WatchJob call. Once it has ended the call it
// never touches the reactor again (which may then be gone).
class WatchSink : public EventSink {
 public:
  explicit WatchSink(StreamingWriteReactor<v1::JobEvent>* call) : call_(call) {}
  void Send(const v1::JobEvent& event) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!done_) call_->Write(event);
  }
  void End() override { Close(absl::OkStatus()); }
  void Close(const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    done_ = true;
    call_->Close(status);
  }

 private:
  std::mutex mu_;
  StreamingWriteReactor<v1::JobEvent>* const call_;
  bool done_ = false;
};

class WatchCall : public StreamingWriteReactor<v1::JobEvent> {
 public:
  WatchCall(grpc::CallbackServerContext* context, RpcMetrics* metrics, JobManager* manager,
            const v1::WatchJobRequest& request)
      : StreamingWriteReactor<v1::JobEvent>(context, metrics, "WatchJob") {
    if (manager == nullptr) return;  // refused: Deny() follows
    auto sink = std::make_shared<WatchSink>(this);
    const std::string id = request.job_id();
    SetCancelHook([manager, id, sink] {
      manager->Unwatch(id, sink.get());
      sink->Close(absl::CancelledError("the client went away"));
    });
    const absl::Status status = manager->Watch(id, request.from_sequence(), sink);
    if (!status.ok()) sink->Close(status);
    // Nothing after this point: the call may already be finished and gone.
  }
  void Deny(const absl::Status& status) { Close(status); }
};

}  // namespace

TrainerService::TrainerService(JobManager* manager, MetricsRegistry* registry, BearerAuth auth)
    : manager_(manager), metrics_(registry, "trainer"), auth_(std::move(auth)) {}

template <typename Fn>
grpc::ServerUnaryReactor* TrainerService::Unary(grpc::CallbackServerContext* context, const char* method, Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  metrics_.in_flight()->Add(1);
  absl::Status checked = auth_.Check(*context);
  const grpc::Status status = ToGrpcStatus(checked.ok() ? fn() : checked);
  metrics_.in_flight()->Add(-1);
  metrics_.Record(method, GrpcCodeName(status.error_code()),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

grpc::ServerUnaryReactor* TrainerService::SubmitJob(grpc::CallbackServerContext* context, const v1::JobSpec* request,
                                                    v1::JobId* response) {
  return Unary(context, "SubmitJob", [&]() -> absl::Status {
    auto id = manager_->Submit(*request);
    if (!id.ok()) return id.status();
    response->set_job_id(*id);
    return absl::OkStatus();
  });
}

grpc::ServerWriteReactor<v1::JobEvent>* TrainerService::WatchJob(grpc::CallbackServerContext* context,
                                                                 const v1::WatchJobRequest* request) {
  if (absl::Status denied = auth_.Check(*context); !denied.ok()) {
    auto* call = new WatchCall(context, &metrics_, nullptr, *request);
    call->Deny(denied);
    return call;
  }
  return new WatchCall(context, &metrics_, manager_, *request);
}

grpc::ServerUnaryReactor* TrainerService::CancelJob(grpc::CallbackServerContext* context, const v1::JobId* request,
                                                    v1::Job* response) {
  return Unary(context, "CancelJob", [&]() -> absl::Status {
    auto job = manager_->Cancel(request->job_id());
    if (!job.ok()) return job.status();
    *response = std::move(*job);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* TrainerService::GetJob(grpc::CallbackServerContext* context, const v1::JobId* request,
                                                 v1::Job* response) {
  return Unary(context, "GetJob", [&]() -> absl::Status {
    auto job = manager_->Get(request->job_id());
    if (!job.ok()) return job.status();
    *response = std::move(*job);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* TrainerService::ListJobs(grpc::CallbackServerContext* context,
                                                   const v1::ListJobsRequest* request, v1::ListJobsResponse* response) {
  return Unary(context, "ListJobs", [&]() -> absl::Status {
    std::vector<v1::JobState> states;
    for (int s : request->states()) states.push_back(static_cast<v1::JobState>(s));
    for (v1::Job& job : manager_->List(states)) *response->add_jobs() = std::move(job);
    return absl::OkStatus();
  });
}

}  // namespace internvl::services::trainer

// The Trainer gRPC service (trainer.proto) over JobManager: handlers only
// convert and delegate (every call is a quick, in-memory operation, except
// SubmitJob's few file checks); WatchJob streams through a
// StreamingWriteReactor that the manager feeds as events happen.
#pragma once

#include "internvl/v1/trainer.grpc.pb.h"
#include "services/common/metrics.h"
#include "services/common/security.h"
#include "services/trainer/job_manager.h"

namespace internvl::services::trainer {

class TrainerService : public v1::Trainer::CallbackService {
 public:
  // `manager` must outlive the service. With tokens in `auth`, every call
  // needs one (UNAUTHENTICATED otherwise): whoever reaches the trainer can
  // start jobs.
  TrainerService(JobManager* manager, MetricsRegistry* registry, BearerAuth auth = {});

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* context, const v1::JobSpec* request,
                                      v1::JobId* response) override;
  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* context,
                                                   const v1::WatchJobRequest* request) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context, const v1::JobId* request,
                                      v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context, const v1::JobId* request,
                                   v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context, const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;

 private:
  template <typename Fn>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, const char* method, Fn&& fn);

  JobManager* const manager_;
  RpcMetrics metrics_;
  const BearerAuth auth_;
};

}  // namespace internvl::services::trainer

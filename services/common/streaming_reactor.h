// Reactors for RPCs whose replies are produced incrementally by a worker
// thread (token streaming): the worker Write()s messages as they appear and
// Close()s once; the reactor sends them in order, one write in flight at a
// time, then finishes. Unlike ReplyingReactor (reactors.h), nothing is
// buffered until the end, and a cancellation hook lets a worker abort the
// downstream call it is blocked in (e.g. ClientContext::TryCancel) the moment
// the client goes away.
//
// Lifetime: the reactor deletes itself in OnDone, which gRPC calls only after
// Finish (i.e. after Close and the queued writes); a worker may use the
// pointer until its Close() call returns.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"
#include "services/common/metrics.h"
#include "services/common/status_map.h"

namespace internvl::services {

// What a worker sees of its call: whether the client went away, and a hook
// run (once, on a gRPC thread) when it does.
class CallCancellation {
 public:
  virtual ~CallCancellation() = default;
  virtual bool cancelled() const = 0;
  // Installs `hook` (replacing any previous one; nullptr removes it). Runs
  // it at once when the call is already cancelled. The hook runs under a
  // lock that SetCancelHook also takes, so after SetCancelHook(nullptr)
  // returns the old hook is not running and will not run.
  virtual void SetCancelHook(std::function<void()> hook) = 0;
};

// Base = grpc::ServerWriteReactor<Response> or
// grpc::ServerBidiReactor<Request, Response>.
template <typename Base, typename Response>
class StreamingReactor : public Base, public CallCancellation {
 public:
  StreamingReactor(grpc::CallbackServerContext* context, RpcMetrics* metrics, std::string method)
      : context_(context), metrics_(metrics), method_(std::move(method)), start_(std::chrono::steady_clock::now()) {
    metrics_->in_flight()->Add(1);
  }

  // Queues one message. Any thread, before Close(). False once the call is
  // broken (client gone): the message is dropped.
  bool Write(Response response) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (broken_ || closed_) return false;
      queue_.push_back(std::move(response));
      if (writing_) return true;
      writing_ = true;
      current_ = std::move(queue_.front());
      queue_.pop_front();
    }
    this->StartWrite(&current_);
    return true;
  }

  // Ends the call with `status` after the queued messages (an error status
  // drops messages not yet sent). Any thread; exactly once.
  void Close(const absl::Status& status) {
    bool finish_now = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      final_status_ = ToGrpcStatus(status);
      if (!status.ok()) queue_.clear();
      finish_now = !writing_;
    }
    if (finish_now) FinishNow();
  }

  bool cancelled() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_ || broken_ || context_->IsCancelled();
  }
  void SetCancelHook(std::function<void()> hook) override {
    std::lock_guard<std::mutex> lock(hook_mu_);
    hook_ = std::move(hook);
    if (hook_ && hook_cancelled_) hook_();
  }
  grpc::CallbackServerContext* context() { return context_; }

  void OnWriteDone(bool ok) override {
    bool next = false, finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!ok) {
        broken_ = true;
        queue_.clear();
      }
      if (!queue_.empty()) {
        current_ = std::move(queue_.front());
        queue_.pop_front();
        next = true;
      } else {
        writing_ = false;
        finish = closed_;
      }
    }
    if (!ok) RunCancelHook();
    if (next) this->StartWrite(&current_);
    if (finish) FinishNow();
  }
  void OnCancel() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
    }
    RunCancelHook();
  }
  void OnDone() override {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    metrics_->Record(method_, GrpcCodeName(final_code_), seconds);
    metrics_->in_flight()->Add(-1);
    delete this;
  }

 protected:
  // Finishes at once with `status` (for errors found on a gRPC thread,
  // before any worker was involved).
  void Fail(const absl::Status& status) { Close(status); }

 private:
  void RunCancelHook() {
    std::lock_guard<std::mutex> lock(hook_mu_);
    hook_cancelled_ = true;
    if (hook_) hook_();
  }
  void FinishNow() {
    grpc::Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
      status =
          broken_ && final_status_.ok() ? grpc::Status(grpc::StatusCode::CANCELLED, "client went away") : final_status_;
      final_code_ = status.error_code();
    }
    this->Finish(status);
  }

  grpc::CallbackServerContext* const context_;
  RpcMetrics* const metrics_;
  const std::string method_;
  const std::chrono::steady_clock::time_point start_;
  mutable std::mutex mu_;
  std::deque<Response> queue_;
  Response current_;
  bool writing_ = false;
  bool closed_ = false;
  bool broken_ = false;
  bool cancelled_ = false;
  bool finished_ = false;
  grpc::Status final_status_;
  grpc::StatusCode final_code_ = grpc::StatusCode::UNKNOWN;
  std::mutex hook_mu_;
  std::function<void()> hook_;
  bool hook_cancelled_ = false;
};

// Server-streaming call (the request came with the call).
template <typename Response>
using StreamingWriteReactor = StreamingReactor<grpc::ServerWriteReactor<Response>, Response>;

// Client- and server-streaming call: OnMessage() sees each request message
// (an error ends the call with it), OnAllReceived() runs at the half-close;
// both on gRPC threads, so they stay cheap (validate, copy, Submit). The
// worker then Write()s and Close()s.
template <typename Request, typename Response>
class ReadAllThenStreamReactor : public StreamingReactor<grpc::ServerBidiReactor<Request, Response>, Response> {
 public:
  using StreamingReactor<grpc::ServerBidiReactor<Request, Response>, Response>::StreamingReactor;

  // Call at the end of the subclass constructor.
  void StartReading() { this->StartRead(&request_); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      if (this->cancelled()) {
        this->Close(absl::CancelledError("client cancelled"));
      } else {
        OnAllReceived();
      }
      return;
    }
    const absl::Status status = OnMessage(request_);
    if (!status.ok()) {
      this->Close(status);
      return;
    }
    request_.Clear();
    this->StartRead(&request_);
  }

 protected:
  virtual absl::Status OnMessage(const Request& request) = 0;
  virtual void OnAllReceived() = 0;

 private:
  Request request_;
};

}  // namespace internvl::services

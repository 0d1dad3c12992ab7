// Callback-API reactors for the services' streaming RPCs. The gRPC thread
// only starts the call and hands work to a WorkQueue; the worker computes the
// whole reply (e.g. every tensor chunk) and calls Reply() or Fail(), after
// which the reactor writes the messages one at a time (OnWriteDone drives the
// next) and finishes. No gRPC thread ever blocks on compute.
//
// Lifetime: a reactor deletes itself in OnDone, which gRPC calls only after
// Finish() and all pending operations, so a worker holding the pointer is safe
// until it has called Reply()/Fail() (exactly one of them, exactly once).
// Every reactor counts itself in RpcMetrics (in-flight gauge, requests by
// code, latency).
#pragma once

#include <atomic>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"
#include "services/common/metrics.h"
#include "services/common/status_map.h"

namespace internvl::services {

// Base = grpc::ServerWriteReactor<Response> or
// grpc::ServerBidiReactor<Request, Response>.
template <typename Base, typename Response>
class ReplyingReactor : public Base {
 public:
  ReplyingReactor(grpc::CallbackServerContext* context, RpcMetrics* metrics, std::string method)
      : context_(context), metrics_(metrics), method_(std::move(method)), start_(std::chrono::steady_clock::now()) {
    metrics_->in_flight()->Add(1);
  }

  // Writes `responses` in order, then finishes with OK. Any thread; once.
  void Reply(std::vector<Response> responses) {
    responses_ = std::move(responses);
    next_ = 0;
    WriteNext();
  }
  // Finishes with `status` (mapped to its gRPC code). Any thread; once.
  void Fail(const absl::Status& status) { FinishWith(ToGrpcStatus(status)); }

  // True once the client cancelled or the deadline passed (workers check it
  // to skip work nobody will read).
  bool cancelled() const { return cancelled_.load() || context_->IsCancelled(); }
  grpc::CallbackServerContext* context() { return context_; }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "client went away during the reply"));
      return;
    }
    WriteNext();
  }
  void OnCancel() override { cancelled_ = true; }
  void OnDone() override {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    metrics_->Record(method_, GrpcCodeName(final_code_), seconds);
    metrics_->in_flight()->Add(-1);
    delete this;
  }

 protected:
  void FinishWith(const grpc::Status& status) {
    final_code_ = status.error_code();
    this->Finish(status);
  }

 private:
  void WriteNext() {
    if (next_ < responses_.size()) {
      this->StartWrite(&responses_[next_++]);
    } else {
      FinishWith(grpc::Status::OK);
    }
  }

  grpc::CallbackServerContext* const context_;
  RpcMetrics* const metrics_;
  const std::string method_;
  const std::chrono::steady_clock::time_point start_;
  std::atomic<bool> cancelled_{false};
  std::vector<Response> responses_;
  size_t next_ = 0;
  grpc::StatusCode final_code_ = grpc::StatusCode::UNKNOWN;
};

// Server-streaming call: the request came with the call.
template <typename Response>
using WriteReactor = ReplyingReactor<grpc::ServerWriteReactor<Response>, Response>;

// Client- and server-streaming call whose reply starts after the client has
// sent everything: OnMessage() sees each request message (an error status
// ends the call with it), OnAllReceived() runs when the client half-closes.
// Both run on gRPC threads, so they must stay cheap (validate, copy, Submit).
template <typename Request, typename Response>
class ReadAllThenReplyReactor : public ReplyingReactor<grpc::ServerBidiReactor<Request, Response>, Response> {
 public:
  using ReplyingReactor<grpc::ServerBidiReactor<Request, Response>, Response>::ReplyingReactor;

  // Call at the end of the subclass constructor.
  void StartReading() { this->StartRead(&request_); }

  void OnReadDone(bool ok) override {
    if (!ok) {  // half-close (or the call broke: then OnCancel/OnDone follow)
      if (this->cancelled()) {
        this->FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled"));
      } else {
        OnAllReceived();
      }
      return;
    }
    const absl::Status status = OnMessage(request_);
    if (!status.ok()) {
      this->Fail(status);
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

// A call refused before it starts (the server is draining): finishes at once
// with the status, counted like any other call. Base = grpc::ServerUnaryReactor,
// grpc::ServerWriteReactor<R> or grpc::ServerBidiReactor<Q, R>.
template <typename Base>
class RefusedCall : public Base {
 public:
  RefusedCall(RpcMetrics* metrics, std::string method, const absl::Status& status)
      : metrics_(metrics), method_(std::move(method)), status_(ToGrpcStatus(status)) {
    this->Finish(status_);
  }
  void OnDone() override {
    metrics_->Record(method_, GrpcCodeName(status_.error_code()), 0);
    delete this;
  }

 private:
  RpcMetrics* const metrics_;
  const std::string method_;
  const grpc::Status status_;
};

// nullptr when `metrics` admits a new call (RpcMetrics::Admit), else a
// reactor that refuses it; handlers return it instead of starting the call.
template <typename Base>
Base* RefuseIfDraining(RpcMetrics* metrics, const std::string& method) {
  absl::Status admitted = metrics->Admit();
  if (admitted.ok()) return nullptr;
  return new RefusedCall<Base>(metrics, method, admitted);
}

}  // namespace internvl::services

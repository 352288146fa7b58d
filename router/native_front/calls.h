// The calls the native front serves: `InferCall` (a ModelInfer: to a loaded copy, on its
// instance's stream or unary, else to the Python router) and `FallbackProxy` (any other call:
// to the Python router, message by message).
#pragma once

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "instance_stream.h"
#include "reports.h"
#include "routes.h"
#include "wire.h"

namespace meshserve {

using Clock = std::chrono::system_clock;

const std::string kInferMethod = "/inference.GRPCInferenceService/ModelInfer";
const std::string kModelHeader = "mm-model-id";
const std::string kVmodelHeader = "mm-vmodel-id";
// router/dataplane.py TRIED_HEADER: a handed-over call's failed attempt, for the Python router's retries.
const std::string kTriedHeader = "meshserve-tried";
// protos/limits.py BUSY_TRAILER: a runtime's RESOURCE_EXHAUSTED that is backpressure.
const std::string kBusyTrailer = "meshserve-busy";
// router/call_metadata.py: the router answers this much before the caller's deadline (at most 10 %).
constexpr auto kAnswerMargin = std::chrono::milliseconds(50);

struct Shared {
  RouteTable* routes;
  Reports* reports;
  grpc::GenericStub* fallback;
  std::chrono::milliseconds default_deadline;
  std::string handover_token;  // proves a meshserve-tried header to the Python router
  size_t max_message_bytes;    // the router's limit, both ways
  std::string limit_setting;   // how the router's messages name that limit's setting
  std::atomic<uint64_t> turn{0};
};

inline bool IsHopHeader(const grpc::string_ref& key) {
  return key.starts_with(":") || key.starts_with("grpc-") || key == "user-agent" || key == "te" ||
         key == "content-type" || key == "host" || key == "connection" || key == "accept-encoding" ||
         key == "content-length";
}

inline std::string Str(const grpc::string_ref& ref) { return std::string(ref.data(), ref.size()); }

// Any call the Python router answers: a bidirectional proxy to it, message by message. Its
// two halves (the caller's call, served here, and the call to the Python router) are two
// reactors; the proxy is freed when both are done.
class FallbackProxy {
 public:
  FallbackProxy(grpc::GenericCallbackServerContext* server_context, Shared* shared)
      : server_context_(server_context), caller_(this), upstream_(this) {
    for (const auto& [key, value] : server_context->client_metadata()) {
      if (!IsHopHeader(key) && key != kTriedHeader) client_context_.AddMetadata(Str(key), Str(value));
    }
    client_context_.set_deadline(server_context->deadline());
    shared->fallback->PrepareBidiStreamingCall(&client_context_, server_context->method(), grpc::StubOptions(),
                                               &upstream_);
    upstream_.StartRead(&from_upstream_);
    upstream_.StartCall();
    caller_.StartRead(&from_caller_);
  }

  grpc::ServerGenericBidiReactor* reactor() { return &caller_; }

 private:
  // The caller's call, served here.
  class Caller : public grpc::ServerGenericBidiReactor {
   public:
    explicit Caller(FallbackProxy* proxy) : proxy_(proxy) {}
    void OnReadDone(bool ok) override {
      if (ok) {
        proxy_->upstream_.StartWrite(&proxy_->from_caller_);
      } else {
        proxy_->upstream_.StartWritesDone();
      }
    }
    void OnWriteDone(bool ok) override { proxy_->CallerWriteDone(ok); }
    void OnCancel() override { proxy_->client_context_.TryCancel(); }
    void OnDone() override { proxy_->Release(); }

   private:
    FallbackProxy* proxy_;
  };

  // The call to the Python router.
  class Upstream : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    explicit Upstream(FallbackProxy* proxy) : proxy_(proxy) {}
    void OnReadInitialMetadataDone(bool ok) override { proxy_->InitialMetadataDone(ok); }
    void OnReadDone(bool ok) override {
      if (ok) proxy_->ReplyRead();  // else: the upstream's status follows in OnDone
    }
    void OnWriteDone(bool ok) override {
      if (ok) proxy_->caller_.StartRead(&proxy_->from_caller_);
    }
    void OnDone(const grpc::Status& status) override { proxy_->UpstreamDone(status); }

   private:
    FallbackProxy* proxy_;
  };

  // The caller's initial metadata is the upstream's, so nothing goes to the caller before it
  // is known; the status goes once the last reply written has left.
  void InitialMetadataDone(bool ok) {
    std::lock_guard<std::mutex> lock(mu_);
    if (ok) {
      for (const auto& [key, value] : client_context_.GetServerInitialMetadata()) {
        server_context_->AddInitialMetadata(Str(key), Str(value));
      }
    }
    initial_metadata_known_ = true;
    if (reply_waiting_) {
      reply_waiting_ = false;
      writing_ = true;
      caller_.StartWrite(&from_upstream_);
    }
  }

  void ReplyRead() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!initial_metadata_known_) {
      reply_waiting_ = true;
      return;
    }
    writing_ = true;
    caller_.StartWrite(&from_upstream_);
  }

  void CallerWriteDone(bool ok) {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (finish_waiting_) {
      finish_waiting_ = false;
      caller_.Finish(status_);
      return;
    }
    lock.unlock();
    if (ok) {
      upstream_.StartRead(&from_upstream_);
    } else {
      client_context_.TryCancel();
    }
  }

  void UpstreamDone(const grpc::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [key, value] : client_context_.GetServerTrailingMetadata()) {
        server_context_->AddTrailingMetadata(Str(key), Str(value));
      }
      if (writing_ || reply_waiting_) {
        status_ = status;
        finish_waiting_ = true;
        if (reply_waiting_) {  // a reply read before the initial metadata came (it did not)
          reply_waiting_ = false;
          writing_ = true;
          caller_.StartWrite(&from_upstream_);
        }
      } else {
        caller_.Finish(status);
      }
    }
    Release();
  }

  void Release() {
    if (--holders_ == 0) delete this;
  }

  grpc::GenericCallbackServerContext* server_context_;
  grpc::ClientContext client_context_;
  grpc::ByteBuffer from_caller_;
  grpc::ByteBuffer from_upstream_;
  Caller caller_;
  Upstream upstream_;
  std::mutex mu_;
  bool initial_metadata_known_ = false;
  bool reply_waiting_ = false;
  bool writing_ = false;
  bool finish_waiting_ = false;
  grpc::Status status_;
  std::atomic<int> holders_{2};
};

// A ModelInfer call. Its states: reading the request; at a copy (on the stream, or unary);
// at the Python router (a miss, a name to re-point, or a copy that answered UNAVAILABLE or
// NOT_FOUND: handed over with a meshserve-tried header); finished.
class InferCall : public grpc::ServerGenericBidiReactor, public StreamCaller {
 public:
  InferCall(grpc::GenericCallbackServerContext* server_context, Shared* shared)
      : server_context_(server_context), shared_(shared), started_(std::chrono::steady_clock::now()) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the call ended before its request came"));
      return;
    }
    // An oversized request is the Python router's to refuse, in its words.
    endpoint_ = request_.Length() > shared_->max_message_bytes ? nullptr : Choose();
    if (endpoint_ == nullptr) {
      ToPythonRouter();
      return;
    }
    endpoint_->in_flight.fetch_add(1, std::memory_order_relaxed);
    PrepareHit();
    auto stream = endpoint_->Stream();
    if (stream == nullptr || !PostOn(stream)) ToCopyUnary();
  }

  void OnCancel() override {
    bool finish_here = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      if (upstream_ != nullptr) {
        upstream_->TryCancel();  // its callback finishes the call
      } else if (stream_ != nullptr && stream_->Cancel(stream_id_)) {
        stream_.reset();
        finish_here = true;  // the call was still waiting on the stream: nobody else will answer it
      }
    }
    if (finish_here) {
      LeaveCopy();
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the caller went away"));
    }
  }

  void OnDone() override { delete this; }

  // StreamCaller: exactly one of these, unless OnCancel took the call back first.
  void OnStreamReply(StreamReply reply) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stream_.reset();
    }
    bool busy = false;
    for (const auto& header : reply.trailing) busy |= header.first == kBusyTrailer;
    const char* handover = HandOverReason(reply.status.error_code(), busy);
    if (handover != nullptr) {
      HandOver(handover, reply.status.error_message());
      return;
    }
    for (auto& [key, value] : reply.trailing) server_context_->AddTrailingMetadata(key, value);
    if (reply.status.ok()) reply_ = grpc::ByteBuffer(&reply.body, 1);
    Answer(reply.status);
  }

  void OnStreamFailed(bool unsupported) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stream_.reset();
    }
    if (unsupported) {
      ToCopyUnary();  // it never ran there
    } else {
      HandOver("unavailable", "the stream to the instance ended");
    }
  }

 private:
  // The loaded copy with the fewest calls in flight from here (ties in turn), or nullptr: the
  // Python router takes the call. Sets model_ and the labels.
  std::shared_ptr<Endpoint> Choose() {
    std::string model_header, vmodel_header;
    bool has_model_header = false, has_vmodel_header = false;
    for (const auto& [key, value] : server_context_->client_metadata()) {
      if (key == kModelHeader) {
        model_header = Str(value);
        has_model_header = true;
      } else if (key == kVmodelHeader) {
        vmodel_header = Str(value);
        has_vmodel_header = true;
      }
    }
    if (has_model_header && has_vmodel_header) return nullptr;
    grpc::Slice slice;
    if (!request_.TrySingleSlice(&slice).ok() && !request_.DumpToSingleSlice(&slice).ok()) return nullptr;
    std::string name;
    if (!ReadModelName(slice.begin(), slice.size(), &name)) return nullptr;
    auto routes = shared_->routes->Snapshot();
    if (has_vmodel_header) {
      auto vmodel = routes->vmodels.find(vmodel_header);
      if (vmodel == routes->vmodels.end()) return nullptr;
      model_ = vmodel->second;
      vmodel_label_ = vmodel_header;
    } else if (has_model_header) {
      model_ = model_header;
    } else {
      if (routes->vmodels.count(name)) return nullptr;  // a vmodel by name: the request is re-pointed there
      model_ = name;
    }
    if (model_.empty() || model_ != name) return nullptr;  // the request names another model: re-pointed there
    header_routed_ = has_model_header || has_vmodel_header;
    auto found = routes->models.find(model_);
    if (found == routes->models.end() || found->second.empty()) return nullptr;
    const auto& copies = found->second;
    size_t start = shared_->turn.fetch_add(1, std::memory_order_relaxed) % copies.size();
    const std::shared_ptr<Endpoint>* best = &copies[start];
    for (size_t i = 1; i < copies.size(); ++i) {
      const auto& candidate = copies[(start + i) % copies.size()];
      if (candidate->in_flight.load(std::memory_order_relaxed) < (*best)->in_flight.load(std::memory_order_relaxed)) {
        best = &candidate;
      }
    }
    return *best;
  }

  // What a hit carries to the copy: the caller's headers less the routing ones (mm-model-id
  // when the caller routed by header), and the caller's deadline less the answer margin.
  void PrepareHit() {
    for (const auto& [key, value] : server_context_->client_metadata()) {
      if (IsHopHeader(key) || key == kModelHeader || key == kVmodelHeader || key == kTriedHeader) continue;
      hit_headers_.emplace_back(Str(key), Str(value));
    }
    if (header_routed_) hit_headers_.emplace_back(kModelHeader, model_);
    auto now = Clock::now();
    hit_deadline_ = server_context_->deadline();
    if (hit_deadline_ == Clock::time_point::max()) {
      hit_deadline_ = now + shared_->default_deadline;
    } else if (hit_deadline_ > now) {
      hit_deadline_ -= std::min<Clock::duration>(kAnswerMargin, (hit_deadline_ - now) / 10);
    }
  }

  bool PostOn(const std::shared_ptr<InstanceStream>& stream) {
    auto left = std::chrono::duration_cast<std::chrono::microseconds>(hit_deadline_ - Clock::now()).count();
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_) return false;  // the unary path finishes it as cancelled
    if (!stream->Post(this, request_, EncodeHeaders(hit_headers_), std::max<int64_t>(left, 1), &stream_id_)) {
      return false;
    }
    stream_ = stream;
    return true;
  }

  void ToCopyUnary() {
    auto context = std::make_unique<grpc::ClientContext>();
    for (const auto& [key, value] : hit_headers_) context->AddMetadata(key, value);
    context->set_deadline(hit_deadline_);
    CallUnary(&endpoint_->stub, std::move(context), true);
  }

  // The caller's call as it came (and which copy failed it, if one did).
  void ToPythonRouter() {
    auto context = std::make_unique<grpc::ClientContext>();
    for (const auto& [key, value] : server_context_->client_metadata()) {
      if (!IsHopHeader(key) && key != kTriedHeader) context->AddMetadata(Str(key), Str(value));
    }
    if (!tried_.empty()) context->AddMetadata(kTriedHeader, tried_);
    context->set_deadline(server_context_->deadline());
    CallUnary(shared_->fallback, std::move(context), false);
  }

  void CallUnary(grpc::GenericStub* stub, std::unique_ptr<grpc::ClientContext> context, bool hit) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      upstream_ = std::move(context);
      if (cancelled_) upstream_->TryCancel();
    }
    reply_.Clear();
    stub->UnaryCall(upstream_.get(), kInferMethod, grpc::StubOptions(), &request_, &reply_,
                    [this, hit](grpc::Status status) { OnUnaryDone(std::move(status), hit); });
  }

  void OnUnaryDone(grpc::Status status, bool hit) {
    std::unique_ptr<grpc::ClientContext> context;
    {
      std::lock_guard<std::mutex> lock(mu_);
      context = std::move(upstream_);
    }
    if (hit) {
      bool busy = false;
      for (const auto& [key, value] : context->GetServerTrailingMetadata()) busy |= key == kBusyTrailer;
      const char* handover = HandOverReason(status.error_code(), busy);
      if (handover != nullptr) {
        HandOver(handover, status.error_message());
        return;
      }
    }
    for (const auto& [key, value] : context->GetServerInitialMetadata()) {
      server_context_->AddInitialMetadata(Str(key), Str(value));
    }
    for (const auto& [key, value] : context->GetServerTrailingMetadata()) {
      server_context_->AddTrailingMetadata(Str(key), Str(value));
    }
    if (hit) {
      Answer(status);
    } else if (status.ok()) {
      StartWriteAndFinish(&reply_, grpc::WriteOptions(), status);
    } else {
      Finish(status);
    }
  }

  // Why a copy's answer goes to the Python router instead of the caller (router/routing.py
  // retries these elsewhere), or nullptr.
  static const char* HandOverReason(grpc::StatusCode code, bool busy) {
    if (code == grpc::StatusCode::UNAVAILABLE) return "unavailable";
    if (code == grpc::StatusCode::NOT_FOUND) return "not_found";
    if (code == grpc::StatusCode::RESOURCE_EXHAUSTED && busy) return "busy";
    return nullptr;
  }

  // The copy did not serve it: the Python router retries it elsewhere, knowing which copy failed.
  void HandOver(const std::string& reason, std::string message) {
    LeaveCopy();
    if (reason != "busy") shared_->reports->Add("r\t" + reason + "\n");  // the router counts a busy retry itself
    for (char& c : message) {
      if (c < 0x20 || c > 0x7e) c = '?';  // a header value is printable ASCII
    }
    tried_ = shared_->handover_token + " " + reason + " " + endpoint_->address + " " + message;
    ToPythonRouter();
  }

  // A hit's answer, reported to the Python router's metrics; a reply over the limit is refused
  // as the Python router refuses it.
  void Answer(grpc::Status status) {
    LeaveCopy();
    if (status.ok() && reply_.Length() > shared_->max_message_bytes) {
      status = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            "the reply of model '" + model_ + "' of " + std::to_string(reply_.Length()) +
                                " bytes is larger than max (" + std::to_string(shared_->max_message_bytes) +
                                " bytes), the router's " + shared_->limit_setting);
    }
    auto micros = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started_);
    shared_->reports->Add("o\t" + std::to_string(static_cast<int>(status.error_code())) + "\t" +
                          std::to_string(micros.count()) + "\t" + std::to_string(request_.Length()) + "\t" +
                          (status.ok() ? std::to_string(reply_.Length()) : std::string("-")) + "\t" + model_ + "\t" +
                          vmodel_label_ + "\n");
    if (status.ok()) {
      StartWriteAndFinish(&reply_, grpc::WriteOptions(), status);
    } else {
      Finish(status);
    }
  }

  void LeaveCopy() {
    if (!left_copy_) {
      left_copy_ = true;
      endpoint_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  grpc::GenericCallbackServerContext* server_context_;
  Shared* shared_;
  const std::chrono::steady_clock::time_point started_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer reply_;
  std::string model_;
  std::string vmodel_label_;
  bool header_routed_ = false;
  std::shared_ptr<Endpoint> endpoint_;
  Headers hit_headers_;
  Clock::time_point hit_deadline_;
  bool left_copy_ = false;
  std::string tried_;  // set when a hit is handed over
  std::mutex mu_;      // what OnCancel, on another thread, reads:
  bool cancelled_ = false;
  std::unique_ptr<grpc::ClientContext> upstream_;  // the unary call in flight
  std::shared_ptr<InstanceStream> stream_;         // the stream the call waits on
  uint64_t stream_id_ = 0;
};

class Front : public grpc::CallbackGenericService {
 public:
  explicit Front(Shared* shared) : shared_(shared) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    if (context->method() == kInferMethod) return new InferCall(context, shared_);
    return (new FallbackProxy(context, shared_))->reactor();
  }

 private:
  Shared* shared_;
};

}  // namespace meshserve

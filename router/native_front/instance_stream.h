// ModelInfer calls to one meshserve runtime as frames on one long-lived
// `meshserve.stream.v1.InferenceStream/Calls` stream, as router/instance_stream.py sends them
// (its docstring is the protocol's description): a call is a CallFrame under its own id, its
// answer the ReplyFrame of that id, in whatever order calls finish. Frames waiting while a
// write is in flight leave together as one CallBatch.
//
// Who completes a call: whoever takes its id out of `pending_` (the reader with its reply,
// OnDone with the stream's failure, or Cancel for a caller that went away), once.
#pragma once

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "wire.h"

namespace meshserve {

const std::string kCallsMethod = "/meshserve.stream.v1.InferenceStream/Calls";
const std::string kStreamMarker = "meshserve-stream";            // a runtime serving the stream opens with it
const std::string kMaxReplyHeader = "meshserve-max-reply-bytes";  // the largest reply the router takes
constexpr size_t kFrameMarginBytes = 1 << 20;                     // router/instance_stream.py FRAME_MARGIN_BYTES
constexpr size_t kOutboxBytes = 8 << 20;                          // beyond this waiting, calls go unary
constexpr auto kReprobe = std::chrono::seconds(60);               // unary calls only, after UNIMPLEMENTED

struct StreamReply {
  grpc::Status status;
  grpc::Slice body;
  Headers trailing;
};

// What a call on the stream is told, exactly once.
class StreamCaller {
 public:
  virtual ~StreamCaller() = default;
  virtual void OnStreamReply(StreamReply reply) = 0;
  // It did not get an answer: the stream broke (`unsupported` false: it may have run) or the
  // instance does not serve the stream (true: it did not run there).
  virtual void OnStreamFailed(bool unsupported) = 0;
};

class InstanceStream : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  using OnEnded = std::function<void(InstanceStream*, bool unsupported)>;

  // `on_ended` runs once the stream has ended, before its calls are failed.
  static std::shared_ptr<InstanceStream> Open(grpc::GenericStub* stub, size_t max_message_bytes, OnEnded on_ended) {
    std::shared_ptr<InstanceStream> stream(new InstanceStream(max_message_bytes, std::move(on_ended)));
    stream->self_ = stream;  // until OnDone
    stream->context_.AddMetadata(kMaxReplyHeader, std::to_string(max_message_bytes));
    stub->PrepareBidiStreamingCall(&stream->context_, kCallsMethod, grpc::StubOptions(), stream.get());
    stream->StartRead(&stream->read_buffer_);
    stream->StartCall();
    return stream;
  }

  // Queue a call; false when this stream takes no more (ended, or too much waiting).
  bool Post(StreamCaller* caller, const grpc::ByteBuffer& body, const std::string& headers, uint64_t timeout_us,
            uint64_t* id) {
    std::vector<grpc::Slice> body_slices;
    if (!body.Dump(&body_slices).ok()) return false;
    std::unique_lock<std::mutex> lock(mu_);
    if (ended_ || outbox_bytes_ > kOutboxBytes) return false;
    *id = next_id_++;
    pending_[*id] = caller;
    Frame frame;
    frame.size = AppendCallEntry(&frame.slices, *id, body_slices, headers, timeout_us);
    Queue(std::move(frame));
    WriteIfIdle(lock);
    return true;
  }

  // The caller went away: true when the call was still waiting (the caller completes it now;
  // the instance is told to stop it), false when its answer is already on its way.
  bool Cancel(uint64_t id) {
    std::unique_lock<std::mutex> lock(mu_);
    if (pending_.erase(id) == 0) return false;
    if (!ended_) {
      Frame frame;
      frame.size = AppendCancelEntry(&frame.slices, id);
      Queue(std::move(frame));
      WriteIfIdle(lock);
    }
    return true;
  }

  void Close() { context_.TryCancel(); }

 private:
  InstanceStream(size_t max_message_bytes, OnEnded on_ended)
      : max_batch_bytes_(max_message_bytes + kFrameMarginBytes), on_ended_(std::move(on_ended)) {}

  // Nothing is written before the runtime's answer to the open: a write racing an
  // UNIMPLEMENTED answer would turn it into an INTERNAL error.
  void OnReadInitialMetadataDone(bool ok) override {
    bool marked = false;
    if (ok) {
      for (const auto& [key, value] : context_.GetServerInitialMetadata()) marked |= key == kStreamMarker;
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (!marked) {
      unsupported_ = true;
      lock.unlock();
      context_.TryCancel();
      return;
    }
    opened_ = true;
    WriteIfIdle(lock);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (ok) WriteIfIdle(lock);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    grpc::Slice batch;
    std::vector<ReplyFrame> frames;
    if (!read_buffer_.DumpToSingleSlice(&batch).ok() || !ParseReplyBatch(batch.begin(), batch.size(), &frames)) {
      context_.TryCancel();
      return;
    }
    for (auto& frame : frames) {
      StreamCaller* caller = nullptr;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto found = pending_.find(frame.id);
        if (found == pending_.end()) continue;  // cancelled meanwhile
        caller = found->second;
        pending_.erase(found);
      }
      StreamReply reply;
      reply.status = frame.code == 0 ? grpc::Status::OK
                                     : grpc::Status(static_cast<grpc::StatusCode>(frame.code), frame.message);
      reply.body = batch.sub(frame.body_offset, frame.body_offset + frame.body_size);
      reply.trailing = std::move(frame.trailing);
      caller->OnStreamReply(std::move(reply));
    }
    StartRead(&read_buffer_);
  }

  void OnDone(const grpc::Status& status) override {
    std::unordered_map<uint64_t, StreamCaller*> failed;
    bool unsupported;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ended_ = true;
      unsupported = unsupported_ || status.error_code() == grpc::StatusCode::UNIMPLEMENTED;
      failed.swap(pending_);
    }
    on_ended_(this, unsupported);
    for (auto& [id, caller] : failed) caller->OnStreamFailed(unsupported);
    self_.reset();  // may delete this: last
  }

  struct Frame {
    std::vector<grpc::Slice> slices;  // one CallBatch entry
    size_t size = 0;
  };

  void Queue(Frame frame) {
    outbox_bytes_ += frame.size;
    outbox_.push_back(std::move(frame));
  }

  // With the lock held: start a write of what waits, unless one is in flight; unlocks.
  void WriteIfIdle(std::unique_lock<std::mutex>& lock) {
    if (!opened_ || writing_ || outbox_.empty() || ended_) return;
    // As many whole frames as fit one message, at least one.
    std::vector<grpc::Slice> batch;
    size_t total = 0;
    while (!outbox_.empty() && (batch.empty() || total + outbox_.front().size <= max_batch_bytes_)) {
      Frame& frame = outbox_.front();
      total += frame.size;
      batch.insert(batch.end(), frame.slices.begin(), frame.slices.end());
      outbox_.pop_front();
    }
    outbox_bytes_ -= total;
    write_buffer_ = grpc::ByteBuffer(batch.data(), batch.size());
    writing_ = true;
    lock.unlock();
    StartWrite(&write_buffer_);
  }

  const size_t max_batch_bytes_;
  OnEnded on_ended_;
  grpc::ClientContext context_;
  grpc::ByteBuffer read_buffer_;
  grpc::ByteBuffer write_buffer_;
  std::mutex mu_;
  bool opened_ = false, writing_ = false, ended_ = false, unsupported_ = false;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, StreamCaller*> pending_;
  std::deque<Frame> outbox_;
  size_t outbox_bytes_ = 0;
  std::shared_ptr<InstanceStream> self_;
};

}  // namespace meshserve

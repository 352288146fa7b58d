// The native front's route table: model id -> the instances holding a loaded copy, vmodel id ->
// its active model, as the Python router last sent them; and one Endpoint per instance address
// (its channel, its stream, the calls in flight to it from here).
#pragma once

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "instance_stream.h"

namespace meshserve {

class Endpoint : public std::enable_shared_from_this<Endpoint> {
 public:
  Endpoint(std::string address, std::shared_ptr<grpc::Channel> channel, size_t max_message_bytes, bool streams)
      : address(std::move(address)), stub(std::move(channel)), max_message_bytes_(max_message_bytes), streams_(streams) {}

  const std::string address;
  grpc::GenericStub stub;
  std::atomic<int> in_flight{0};

  // The stream to post a call on (opened when there is none), or nullptr: send it unary.
  std::shared_ptr<InstanceStream> Stream() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!streams_ || closed_ || std::chrono::steady_clock::now() < unary_until_) return nullptr;
    if (stream_ == nullptr) {
      std::weak_ptr<Endpoint> self = weak_from_this();
      stream_ = InstanceStream::Open(&stub, max_message_bytes_, [self](InstanceStream* ended, bool unsupported) {
        if (auto endpoint = self.lock()) endpoint->StreamEnded(ended, unsupported);
      });
    }
    return stream_;
  }

  // No route names this instance any more: its stream ends (calls on it fail over).
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    if (stream_ != nullptr) stream_->Close();
  }

 private:
  void StreamEnded(InstanceStream* ended, bool unsupported) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stream_.get() == ended) stream_.reset();
    if (unsupported) unary_until_ = std::chrono::steady_clock::now() + kReprobe;
  }

  const size_t max_message_bytes_;
  const bool streams_;
  std::mutex mu_;
  std::shared_ptr<InstanceStream> stream_;
  std::chrono::steady_clock::time_point unary_until_{};
  bool closed_ = false;
};

struct Routes {
  std::unordered_map<std::string, std::vector<std::shared_ptr<Endpoint>>> models;
  std::unordered_map<std::string, std::string> vmodels;
};

// Replaced whole on each commit: a call reads the snapshot it started with, without a lock.
class RouteTable {
 public:
  RouteTable(grpc::ChannelArguments channel_args, size_t max_message_bytes, bool streams)
      : channel_args_(std::move(channel_args)), max_message_bytes_(max_message_bytes), streams_(streams) {
    std::atomic_store(&current_, std::make_shared<const Routes>());
  }

  std::shared_ptr<const Routes> Snapshot() const { return std::atomic_load(&current_); }

  // Only the command reader calls these.
  void SetRoute(const std::string& model, const std::vector<std::string>& addresses) {
    if (addresses.empty()) {
      pending_.models.erase(model);
      return;
    }
    std::vector<std::shared_ptr<Endpoint>> endpoints;
    for (const auto& address : addresses) endpoints.push_back(EndpointFor(address));
    pending_.models[model] = std::move(endpoints);
  }

  void SetVmodel(const std::string& vmodel, const std::string& model) {
    if (model.empty()) {
      pending_.vmodels.erase(vmodel);
    } else {
      pending_.vmodels[vmodel] = model;
    }
  }

  void Commit() {
    std::atomic_store(&current_, std::make_shared<const Routes>(pending_));
    std::map<std::string, bool> used;
    for (const auto& [model, endpoints] : pending_.models) {
      for (const auto& endpoint : endpoints) used[endpoint->address] = true;
    }
    for (auto it = endpoints_.begin(); it != endpoints_.end();) {
      if (used.count(it->first)) {
        ++it;
      } else {
        it->second->Close();
        it = endpoints_.erase(it);
      }
    }
  }

 private:
  std::shared_ptr<Endpoint> EndpointFor(const std::string& address) {
    auto found = endpoints_.find(address);
    if (found != endpoints_.end()) return found->second;
    auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), channel_args_);
    auto endpoint = std::make_shared<Endpoint>(address, std::move(channel), max_message_bytes_, streams_);
    endpoints_[address] = endpoint;
    return endpoint;
  }

  const grpc::ChannelArguments channel_args_;
  const size_t max_message_bytes_;
  const bool streams_;
  std::shared_ptr<const Routes> current_;
  Routes pending_;
  std::map<std::string, std::shared_ptr<Endpoint>> endpoints_;
};

}  // namespace meshserve

// A bare native gRPC unary proxy: the floor of a hop that is not Python.
//
// The counterpart of bench/bare_proxy.py in C++ with gRPC's callback API (Debian's
// libgrpc++-dev): every method is answered by forwarding the request's bytes to one upstream
// address as a unary call (no decoding), with the caller's metadata (less HTTP/2 pseudo and
// grpc- headers) and deadline, and handing back the upstream's reply, status and trailing
// metadata. A caller that goes away cancels the upstream call. Nothing else: no routing, no
// metrics. bench/router_overhead.py --native builds it with `make -C bench/native_proxy` and
// starts it as its own process; it prints READY once the port is bound.
//
//     native_proxy --port PORT --upstream HOST:PORT [--threads N]

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

namespace {

constexpr int kMaxMessageBytes = 16 << 20;  // the router's default max_message_bytes

bool Forwardable(const grpc::string_ref& key) {
  return !(key.starts_with(":") || key.starts_with("grpc-") || key == "te" || key == "content-type" ||
           key == "user-agent");
}

// One forwarded call: read the request, call upstream, write the reply, finish.
class ForwardReactor : public grpc::ServerGenericBidiReactor {
 public:
  ForwardReactor(grpc::GenericCallbackServerContext* server_context, grpc::GenericStub* stub)
      : server_context_(server_context), stub_(stub) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INTERNAL, "no request message"));
      return;
    }
    for (const auto& [key, value] : server_context_->client_metadata()) {
      if (Forwardable(key)) {
        client_context_.AddMetadata(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
      }
    }
    client_context_.set_deadline(server_context_->deadline());
    stub_->UnaryCall(&client_context_, server_context_->method(), grpc::StubOptions(), &request_, &reply_,
                     [this](grpc::Status status) { OnUpstreamDone(std::move(status)); });
  }

  void OnUpstreamDone(grpc::Status status) {
    for (const auto& [key, value] : client_context_.GetServerTrailingMetadata()) {
      server_context_->AddTrailingMetadata(std::string(key.data(), key.size()),
                                           std::string(value.data(), value.size()));
    }
    status_ = std::move(status);
    if (status_.ok()) {
      StartWrite(&reply_);
    } else {
      Finish(status_);
    }
  }

  void OnWriteDone(bool ok) override { Finish(ok ? status_ : grpc::Status(grpc::StatusCode::CANCELLED, "")); }

  void OnCancel() override { client_context_.TryCancel(); }

  void OnDone() override { delete this; }

 private:
  grpc::GenericCallbackServerContext* server_context_;
  grpc::GenericStub* stub_;
  grpc::ClientContext client_context_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer reply_;
  grpc::Status status_;
};

class ForwardService : public grpc::CallbackGenericService {
 public:
  explicit ForwardService(std::shared_ptr<grpc::Channel> channel) : stub_(std::move(channel)) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    return new ForwardReactor(context, &stub_);
  }

 private:
  grpc::GenericStub stub_;
};

const char* Flag(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const char* port = Flag(argc, argv, "--port", nullptr);
  const char* upstream = Flag(argc, argv, "--upstream", nullptr);
  if (port == nullptr || upstream == nullptr) {
    std::fprintf(stderr, "usage: native_proxy --port PORT --upstream HOST:PORT\n");
    return 2;
  }
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  channel_args.SetMaxSendMessageSize(kMaxMessageBytes);
  channel_args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  auto channel = grpc::CreateCustomChannel(upstream, grpc::InsecureChannelCredentials(), channel_args);
  ForwardService service(channel);

  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort(std::string("127.0.0.1:") + port, grpc::InsecureServerCredentials(), &bound);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound == 0) {
    std::fprintf(stderr, "native_proxy: cannot listen on port %s\n", port);
    return 1;
  }
  std::printf("READY\n");
  std::fflush(stdout);
  server->Wait();
  return 0;
}

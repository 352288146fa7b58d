// meshserve-native-front: the router's hit path in C++ (`meshserve router --native-front`).
//
// Why: a Python grpc.aio hop costs ~500 us of CPU per call, most of it grpc.aio's own per-call
// work, not the router's code (issue #15); a call forwarded here costs a fraction of that. The
// Python router keeps every decision; this process only forwards what it was told it may:
//
// - It listens on the router's public gRPC port. A ModelInfer call whose model has loaded
//   copies in the route table (fed by the Python router on stdin, from its watched view of
//   etcd) goes, as bytes, to the copy with the fewest calls in flight from here, with the
//   caller's metadata and deadline (less the router's answer margin), as a frame on that
//   instance's meshserve.stream.v1 stream (instance_stream.h; unary to an instance without
//   it), and the instance's reply, status and metadata come back unchanged.
// - Everything else goes unchanged to the Python router's own gRPC server on a loopback port
//   (the fallback): other methods and streams (as a generic bidirectional proxy), a model
//   with no loaded copy (a cache miss), a name that needs re-pointing (a vmodel named in the
//   request itself), and a hit whose instance answered UNAVAILABLE or NOT_FOUND (it did not
//   serve it: the Python router retries elsewhere, as it does for its own calls).
// - Each call answered here is reported on stdout, batched, so the router's metrics and
//   dashboard count it as their own.
//
// stdin (one command per line, fields separated by tabs; ids never contain tabs or newlines,
// the router sends none that do):
//   route <model id> <address>[,<address>...]   loaded copies (no address: none)
//   vmodel <vmodel id> <model id>               a vmodel's active model (no model id: gone)
//   commit                                       publish what came before
// End of stdin: stop (grace period, then exit).
// stdout: `READY <port>` once bound; then per call answered here
//   o <status code> <microseconds> <request bytes> <response bytes> <model id> <vmodel id>
//   r <reason>                                   a hit handed to the Python router (unavailable|not_found),
//                                                with a meshserve-tried header saying which copy failed
//
//     meshserve-native-front --listen HOST:PORT --fallback HOST:PORT [--max-message-bytes N]
//         [--default-deadline-ms N] [--handover-token T] [--limit-setting TEXT] [--no-instance-streams]
//         [--reuse-port]

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "calls.h"

namespace {

using meshserve::Clock;

std::vector<std::string> Split(const std::string& line, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t end = line.find(separator, start);
    parts.push_back(line.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return parts;
    start = end + 1;
  }
}

// The Python router's commands; returns at the end of stdin.
void ReadCommands(meshserve::RouteTable* routes) {
  std::string line;
  while (std::getline(std::cin, line)) {
    auto fields = Split(line, '\t');
    if (fields[0] == "route" && fields.size() >= 2) {
      std::vector<std::string> addresses;
      if (fields.size() >= 3 && !fields[2].empty()) addresses = Split(fields[2], ',');
      routes->SetRoute(fields[1], addresses);
    } else if (fields[0] == "vmodel" && fields.size() >= 2) {
      routes->SetVmodel(fields[1], fields.size() >= 3 ? fields[2] : std::string());
    } else if (fields[0] == "commit") {
      routes->Commit();
    } else {
      std::fprintf(stderr, "meshserve-native-front: unknown command '%s'\n", fields[0].c_str());
    }
  }
}

bool HasFlag(int argc, char** argv, const char* name) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return true;
  }
  return false;
}

const char* Flag(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const char* listen = Flag(argc, argv, "--listen", nullptr);
  const char* fallback = Flag(argc, argv, "--fallback", nullptr);
  if (listen == nullptr || fallback == nullptr) {
    std::fprintf(stderr, "usage: meshserve-native-front --listen HOST:PORT --fallback HOST:PORT "
                         "[--max-message-bytes N] [--default-deadline-ms N]\n");
    return 2;
  }
  const int max_message_bytes = std::atoi(Flag(argc, argv, "--max-message-bytes", "16777216"));
  const auto default_deadline = std::chrono::milliseconds(std::atol(Flag(argc, argv, "--default-deadline-ms", "30000")));

  grpc::ChannelArguments channel_args;
  // As the Python router (router/server.py receive_limit): messages up to twice the limit are
  // taken, so that one over it is refused in the router's words, not grpc's.
  const int receive_limit = static_cast<int>(std::min<int64_t>(2 * static_cast<int64_t>(max_message_bytes), INT32_MAX));
  channel_args.SetMaxReceiveMessageSize(receive_limit);
  channel_args.SetMaxSendMessageSize(receive_limit);
  channel_args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  // Each instance (and the fallback) gets a channel of its own, not one shared subchannel.
  channel_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  bool instance_streams = !HasFlag(argc, argv, "--no-instance-streams");
  // A stream frame is a request plus its id and headers: the instance channels allow the margin.
  grpc::ChannelArguments instance_args = channel_args;
  instance_args.SetMaxReceiveMessageSize(max_message_bytes + static_cast<int>(meshserve::kFrameMarginBytes));
  instance_args.SetMaxSendMessageSize(max_message_bytes + static_cast<int>(meshserve::kFrameMarginBytes));
  meshserve::RouteTable routes(instance_args, max_message_bytes, instance_streams);
  meshserve::Reports reports;
  grpc::GenericStub fallback_stub(grpc::CreateCustomChannel(fallback, grpc::InsecureChannelCredentials(), channel_args));
  meshserve::Shared shared{&routes,
                          &reports,
                          &fallback_stub,
                          default_deadline,
                          Flag(argc, argv, "--handover-token", ""),
                          static_cast<size_t>(max_message_bytes),
                          Flag(argc, argv, "--limit-setting", "max_message_bytes")};
  meshserve::Front front(&shared);

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(receive_limit);
  builder.SetMaxSendMessageSize(max_message_bytes);
  // Several router workers share the port only when they ask to (`--reuse-port`).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, HasFlag(argc, argv, "--reuse-port") ? 1 : 0);
  builder.RegisterCallbackGenericService(&front);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "meshserve-native-front: cannot listen on %s\n", listen);
    return 1;
  }
  std::printf("READY %d\n", port);
  std::fflush(stdout);

  std::atomic<bool> stopping{false};
  std::thread reporter([&] { reports.Run(stopping); });
  ReadCommands(&routes);  // until the router closes stdin
  server->Shutdown(Clock::now() + std::chrono::seconds(5));
  stopping = true;
  reporter.join();
  return 0;
}

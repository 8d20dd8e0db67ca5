#include "broker/control/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "mesh/v1/control.grpc.pb.h"

namespace mesh::broker {
namespace {

constexpr auto kEventPoll = std::chrono::milliseconds(250);

// absl and gRPC number their status codes alike (both follow google.rpc.Code).
grpc::Status ToGrpc(const absl::Status& status) {
  return {static_cast<grpc::StatusCode>(status.code()), std::string(status.message())};
}

grpc::Status CheckToken(const ControlService& service, const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto header = metadata.find("authorization");
  const std::string_view authorization =
      header == metadata.end() ? std::string_view()
                               : std::string_view(header->second.data(), header->second.size());
  if (service.Authorized(authorization)) return grpc::Status::OK;
  return {grpc::StatusCode::UNAUTHENTICATED,
          "missing or wrong admin token: send 'authorization: Bearer <token>' (the token is in "
          "--admin-token-file, or admin.token in the data dir)"};
}

// The code names of mesh_grpc_requests_total, as gRPC's own libraries spell them.
const char* CodeName(grpc::StatusCode code) {
  static constexpr const char* kNames[] = {
      "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
      "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
      "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
      "DataLoss", "Unauthenticated"};
  const auto index = static_cast<size_t>(code);
  return index < std::size(kNames) ? kNames[index] : "Unknown";
}

// Created at zero for every method, so dashboards and rules see them from the start.
const std::vector<std::string> kDeclaredCodes = {
    "OK", "InvalidArgument", "NotFound", "Unauthenticated", "ResourceExhausted", "Unavailable"};

class ControlAdapter final : public mesh::v1::Control::Service {
 public:
  ControlAdapter(ControlService& service, monitoring::RequestMetrics& metrics)
      : service_(service), metrics_(metrics) {
    for (const char* method :
         {"GetStats", "ListPeers", "GetPeer", "DisconnectPeer", "SendMessage", "GetMailbox",
          "PurgeMailbox", "ListMembers", "Drain", "WatchEvents"}) {
      metrics_.DeclareGrpcMethod(method, kDeclaredCodes);
    }
  }

  void Stop() { stopping_ = true; }

  grpc::Status GetStats(grpc::ServerContext* context, const mesh::v1::GetStatsRequest* request,
                        mesh::v1::Stats* response) override {
    return Serve("GetStats", context, response, [&] { return service_.GetStats(*request); });
  }
  grpc::Status ListPeers(grpc::ServerContext* context, const mesh::v1::ListPeersRequest* request,
                         mesh::v1::ListPeersResponse* response) override {
    return Serve("ListPeers", context, response, [&] { return service_.ListPeers(*request); });
  }
  grpc::Status GetPeer(grpc::ServerContext* context, const mesh::v1::GetPeerRequest* request,
                       mesh::v1::Peer* response) override {
    return Serve("GetPeer", context, response, [&] { return service_.GetPeer(*request); });
  }
  grpc::Status DisconnectPeer(grpc::ServerContext* context,
                              const mesh::v1::DisconnectPeerRequest* request,
                              mesh::v1::DisconnectPeerResponse* response) override {
    return Serve("DisconnectPeer", context, response,
                 [&] { return service_.DisconnectPeer(*request); });
  }
  grpc::Status SendMessage(grpc::ServerContext* context,
                           const mesh::v1::SendMessageRequest* request,
                           mesh::v1::SendMessageResponse* response) override {
    return Serve("SendMessage", context, response, [&] { return service_.SendMessage(*request); });
  }
  grpc::Status GetMailbox(grpc::ServerContext* context, const mesh::v1::GetMailboxRequest* request,
                          mesh::v1::Mailbox* response) override {
    return Serve("GetMailbox", context, response, [&] { return service_.GetMailbox(*request); });
  }
  grpc::Status PurgeMailbox(grpc::ServerContext* context,
                            const mesh::v1::PurgeMailboxRequest* request,
                            mesh::v1::PurgeMailboxResponse* response) override {
    return Serve("PurgeMailbox", context, response,
                 [&] { return service_.PurgeMailbox(*request); });
  }
  grpc::Status ListMembers(grpc::ServerContext* context,
                           const mesh::v1::ListMembersRequest* request,
                           mesh::v1::ListMembersResponse* response) override {
    return Serve("ListMembers", context, response, [&] { return service_.ListMembers(*request); });
  }
  grpc::Status Drain(grpc::ServerContext* context, const mesh::v1::DrainRequest* request,
                     mesh::v1::DrainResponse* response) override {
    return Serve("Drain", context, response, [&] { return service_.Drain(*request); });
  }

  // Runs `call` once the caller is authorised, and counts the call; nothing else.
  template <typename Response, typename Call>
  grpc::Status Serve(const char* method, grpc::ServerContext* context, Response* response,
                     Call call) {
    grpc::Status status = CheckToken(service_, *context);
    if (status.ok()) {
      auto result = call();
      if (result.ok()) {
        *response = *std::move(result);
      } else {
        status = ToGrpc(result.status());
      }
    }
    metrics_.CountGrpc(method, CodeName(status.error_code()));
    return status;
  }

  // On a gRPC thread for as long as the stream lasts.
  grpc::Status WatchEvents(grpc::ServerContext* context,
                           const mesh::v1::WatchEventsRequest* request,
                           grpc::ServerWriter<mesh::v1::Event>* writer) override {
    if (grpc::Status status = CheckToken(service_, *context); !status.ok()) {
      metrics_.CountGrpc("WatchEvents", CodeName(status.error_code()));
      return status;
    }
    metrics_.CountGrpc("WatchEvents", "OK");
    auto watcher = service_.WatchEvents(*request);
    while (!context->IsCancelled() && !stopping_) {
      auto event = watcher->Next(kEventPoll);
      if (event && !writer->Write(*event)) break;
    }
    watcher->Cancel();
    return stopping_ ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "the broker is stopping")
                     : grpc::Status::OK;
  }

 private:
  ControlService& service_;
  monitoring::RequestMetrics& metrics_;
  std::atomic<bool> stopping_{false};
};

}  // namespace

struct GrpcServer::Impl {
  Impl(ControlService& service, monitoring::RequestMetrics& metrics) : adapter(service, metrics) {}
  ControlAdapter adapter;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

GrpcServer::GrpcServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

GrpcServer::~GrpcServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(ControlService& service,
                                                              monitoring::RequestMetrics& metrics,
                                                              const std::string& address,
                                                              const TlsFiles& tls) {
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (tls.enabled()) {
    auto cert = ReadWholeFile(tls.cert);
    if (!cert.ok()) return cert.status();
    auto key = ReadWholeFile(tls.key);
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions options;
    options.pem_key_cert_pairs.push_back({*key, *cert});
    credentials = grpc::SslServerCredentials(options);
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  auto impl = std::make_unique<Impl>(service, metrics);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, credentials, &impl->port);
  builder.RegisterService(&impl->adapter);
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve gRPC on ", address));
  }
  auto server = std::unique_ptr<GrpcServer>(new GrpcServer(std::move(impl)));
  server->SetServing(service.ready());
  return server;
}

int GrpcServer::port() const { return impl_->port; }

void GrpcServer::SetServing(bool serving) {
  if (!impl_->server) return;
  if (auto* health = impl_->server->GetHealthCheckService()) {
    health->SetServingStatus(serving);  // every service, "" included
  }
}

void GrpcServer::Shutdown() {
  if (!impl_ || !impl_->server) return;
  impl_->adapter.Stop();
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  impl_->server->Wait();
  impl_->server.reset();
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::UnavailableError(absl::StrCat("cannot read ", path));
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

}  // namespace mesh::broker

// The control service over gRPC (mesh.v1.Control, port 50051), with server reflection and
// grpc.health.v1 (which follows readiness and needs no token).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "broker/control/control_service.h"

namespace mesh::broker {

class GrpcServer {
 public:
  // Binds `address` (port 0 picks one) and starts serving on gRPC's own threads.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(ControlService& service,
                                                           monitoring::RequestMetrics& metrics,
                                                           const std::string& address,
                                                           const TlsFiles& tls);
  ~GrpcServer();

  int port() const;
  // Health follows readiness: SERVING or NOT_SERVING for "" and "mesh.v1.Control".
  void SetServing(bool serving);
  // Ends open streams and stops; waits at most a second for calls in progress.
  void Shutdown();

 private:
  struct Impl;
  explicit GrpcServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The contents of a file, for TLS keys and certificates.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

}  // namespace mesh::broker

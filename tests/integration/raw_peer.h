// A hand-driven peer for tests: a blocking TCP connection on which the test writes exactly the
// bytes it wants, and the initiator side of the Noise XX handshake run step by step so that any
// message can be tampered with. Uses the real crypto/ and peer/ record code, no mocks.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "crypto/crypto.h"
#include "mesh/v1/wire.pb.h"
#include "peer/record.h"

namespace mesh::testing {

inline constexpr std::chrono::milliseconds kTestDeadline{15'000};

class RawConnection {
 public:
  explicit RawConnection(uint16_t port);  // connects to 127.0.0.1:port
  // From another loopback address (127.0.0.2, say): another host, as the broker sees it.
  RawConnection(uint16_t port, const char* source_ip);
  ~RawConnection();
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  bool connected() const { return fd_ >= 0; }
  // False when the other side has closed.
  bool Write(crypto::ByteSpan bytes);
  bool Write(const std::string& bytes);
  // Exactly n bytes, or nullopt on close or deadline.
  std::optional<crypto::Bytes> Read(size_t n, std::chrono::milliseconds timeout = kTestDeadline);
  // True when the other side closes before the deadline (bytes before the close are dropped).
  bool WaitClosed(std::chrono::milliseconds timeout = kTestDeadline);
  void ShutdownWrite();
  // Both directions: wakes a Write blocked in another thread (it then returns false).
  void Shutdown();

 private:
  int fd_ = -1;
};

// Where to flip one byte of a handshake message (message 1 and 3 as sent, 2 as received).
struct Tamper {
  int message;  // 1, 2 or 3
  size_t byte;  // index into the message, without its length prefix
};

class RawNoiseClient {
 public:
  RawNoiseClient();
  explicit RawNoiseClient(crypto::KeyPair key);

  // Preamble, then XX as initiator. Fails at the first step that fails on this side.
  absl::Status Handshake(RawConnection& conn,
                         crypto::CipherSuite suite = crypto::CipherSuite::kAesGcm,
                         std::optional<Tamper> tamper = std::nullopt);
  // One length-prefixed transport message whose plaintext is `record` (flags + chunk).
  bool SendRecord(RawConnection& conn, crypto::ByteSpan record);
  bool SendFrame(RawConnection& conn, const mesh::v1::Frame& frame);
  // The next frame from the broker, skipping Pings (answered when `answer_pings`).
  std::optional<mesh::v1::Frame> ReadFrame(RawConnection& conn, bool answer_pings = true,
                                           std::chrono::milliseconds timeout = kTestDeadline);

  const mesh::v1::Hello& broker_hello() const { return broker_hello_; }
  const crypto::KeyPair& key() const { return key_; }

 private:
  crypto::KeyPair key_;
  crypto::TransportCiphers ciphers_;
  mesh::v1::Hello broker_hello_;
  crypto::Bytes scratch_;
};

}  // namespace mesh::testing

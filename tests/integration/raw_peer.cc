#include "tests/integration/raw_peer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "peer/wire.h"

namespace mesh::testing {
namespace {

bool WaitReadable(int fd, std::chrono::steady_clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  if (left.count() <= 0) return false;
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, static_cast<int>(left.count())) > 0;
}

}  // namespace

RawConnection::RawConnection(uint16_t port) : RawConnection(port, "127.0.0.1") {}

RawConnection::RawConnection(uint16_t port, const char* source_ip) {
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in source{};
  source.sin_family = AF_INET;
  if (inet_pton(AF_INET, source_ip, &source.sin_addr) != 1 ||
      bind(fd_, reinterpret_cast<sockaddr*>(&source), sizeof(source)) != 0) {
    close(fd_);
    fd_ = -1;
    return;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd_);
    fd_ = -1;
    return;
  }
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

RawConnection::~RawConnection() {
  if (fd_ >= 0) close(fd_);
}

bool RawConnection::Write(crypto::ByteSpan bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

bool RawConnection::Write(const std::string& bytes) {
  return Write({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
}

std::optional<crypto::Bytes> RawConnection::Read(size_t n, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  crypto::Bytes out(n);
  size_t done = 0;
  while (done < n) {
    if (!WaitReadable(fd_, deadline)) return std::nullopt;
    ssize_t got = recv(fd_, out.data() + done, n - done, 0);
    if (got <= 0) return std::nullopt;
    done += static_cast<size_t>(got);
  }
  return out;
}

bool RawConnection::WaitClosed(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  uint8_t sink[4096];
  while (WaitReadable(fd_, deadline)) {
    if (recv(fd_, sink, sizeof(sink), 0) <= 0) return true;
  }
  return false;
}

void RawConnection::ShutdownWrite() { shutdown(fd_, SHUT_WR); }

void RawConnection::Shutdown() { shutdown(fd_, SHUT_RDWR); }

RawNoiseClient::RawNoiseClient() : key_(crypto::KeyPair::Generate()) {}
RawNoiseClient::RawNoiseClient(crypto::KeyPair key) : key_(std::move(key)) {}

absl::Status RawNoiseClient::Handshake(RawConnection& conn, crypto::CipherSuite suite,
                                       std::optional<Tamper> tamper) {
  const peer::Preamble preamble = peer::EncodePreamble(suite, peer::LinkKind::kPeer);
  crypto::HandshakeConfig config;
  config.suite = suite;
  config.initiator = true;
  config.prologue.assign(preamble.begin(), preamble.end());
  config.static_key = &key_;
  auto hs = crypto::HandshakeState::Create(std::move(config));
  if (!hs.ok()) return hs.status();
  auto flip = [&](int message, crypto::Bytes& bytes) {
    if (tamper && tamper->message == message) bytes[tamper->byte % bytes.size()] ^= 0x01;
  };
  auto send = [&](crypto::Bytes message) {
    crypto::Bytes out = {static_cast<uint8_t>(message.size() >> 8),
                         static_cast<uint8_t>(message.size())};
    out.insert(out.end(), message.begin(), message.end());
    return conn.Write(out);
  };

  crypto::Bytes message, payload;
  if (!conn.Write(preamble)) return absl::UnavailableError("preamble not sent");
  if (auto st = hs->WriteMessage({}, message); !st.ok()) return st;
  flip(1, message);
  if (!send(message)) return absl::UnavailableError("message 1 not sent");

  auto prefix = conn.Read(2);
  if (!prefix) return absl::UnavailableError("connection closed before message 2");
  auto message2 = conn.Read((size_t{(*prefix)[0]} << 8) | (*prefix)[1]);
  if (!message2) return absl::UnavailableError("connection closed during message 2");
  flip(2, *message2);
  if (auto st = hs->ReadMessage(*message2, payload); !st.ok()) return st;
  if (!broker_hello_.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    return absl::DataLossError("message 2 payload is not a Hello");
  }

  mesh::v1::Hello hello;
  hello.set_protocol_version(peer::kProtocolVersion);
  hello.set_agent("raw-test-peer");
  const std::string hello_bytes = hello.SerializeAsString();
  message.clear();
  if (auto st = hs->WriteMessage(
          {reinterpret_cast<const uint8_t*>(hello_bytes.data()), hello_bytes.size()}, message);
      !st.ok()) {
    return st;
  }
  flip(3, message);
  if (!send(message)) return absl::UnavailableError("message 3 not sent");
  ciphers_ = hs->Split();
  return absl::OkStatus();
}

bool RawNoiseClient::SendRecord(RawConnection& conn, crypto::ByteSpan record) {
  const size_t size = record.size() + crypto::kTagSize;
  crypto::Bytes out(peer::kLengthPrefixSize + size);
  out[0] = static_cast<uint8_t>(size >> 8);
  out[1] = static_cast<uint8_t>(size);
  if (!ciphers_.send.EncryptWithAd({}, record, out.data() + peer::kLengthPrefixSize).ok())
    return false;
  return conn.Write(out);
}

bool RawNoiseClient::SendFrame(RawConnection& conn, const mesh::v1::Frame& frame) {
  crypto::Bytes out;
  if (!peer::AppendFrameRecords(frame, ciphers_.send, scratch_, out).ok()) return false;
  return conn.Write(out);
}

std::optional<mesh::v1::Frame> RawNoiseClient::ReadFrame(RawConnection& conn, bool answer_pings,
                                                         std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  peer::FrameAssembler assembler(size_t{64} << 20);
  while (std::chrono::steady_clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    auto prefix = conn.Read(2, left);
    if (!prefix) return std::nullopt;
    auto body = conn.Read((size_t{(*prefix)[0]} << 8) | (*prefix)[1], left);
    if (!body || body->size() < crypto::kTagSize) return std::nullopt;
    if (!ciphers_.receive.DecryptWithAd({}, *body, body->data()).ok()) return std::nullopt;
    auto bytes = assembler.Push({body->data(), body->size() - crypto::kTagSize});
    if (!bytes.ok()) return std::nullopt;
    if (!bytes->has_value()) continue;
    auto frame = peer::ParseFrame(**bytes);
    if (!frame.ok()) return std::nullopt;
    if (frame->has_ping()) {
      if (answer_pings) {
        mesh::v1::Frame pong;
        pong.mutable_pong()->set_nonce(frame->ping().nonce());
        SendFrame(conn, pong);
      }
      continue;
    }
    return *frame;
  }
  return std::nullopt;
}

}  // namespace mesh::testing

// Crypto microbenchmarks: Noise XX handshakes and record seal+open through our Noise objects,
// each next to the bare libsodium calls that bound it, so the overhead is read as a ratio.
#include <benchmark/benchmark.h>
#include <sodium.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "crypto/crypto.h"

namespace {

using mesh::crypto::Bytes;
using mesh::crypto::CipherState;
using mesh::crypto::CipherSuite;
using mesh::crypto::HandshakeConfig;
using mesh::crypto::HandshakeState;
using mesh::crypto::KeyPair;
using mesh::crypto::kTagSize;

constexpr size_t kNonceSize = 12;

// The link's prologue is its 8-byte preamble; any 8 bytes cost the same.
const Bytes kPrologue = {'M', 'E', 'S', 'H', 1, 1, 0, 0};

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, std::string(status.message()).c_str());
    std::abort();
  }
}

HandshakeState NewHandshake(const KeyPair& key, bool initiator, CipherSuite suite) {
  HandshakeConfig config;
  config.suite = suite;
  config.initiator = initiator;
  config.prologue = kPrologue;
  config.static_key = &key;
  auto hs = HandshakeState::Create(std::move(config));
  Check(hs.status(), "HandshakeState::Create");
  return *std::move(hs);
}

// One full XX handshake per iteration, both sides on this thread: 3 messages and two Splits.
void BM_HandshakeXX(benchmark::State& state, CipherSuite suite) {
  const KeyPair initiator_key = KeyPair::Generate();
  const KeyPair responder_key = KeyPair::Generate();
  Bytes m1, m2, m3, payload;
  m1.reserve(256);
  m2.reserve(256);
  m3.reserve(256);
  payload.reserve(256);
  for (auto _ : state) {
    HandshakeState initiator = NewHandshake(initiator_key, true, suite);
    HandshakeState responder = NewHandshake(responder_key, false, suite);
    m1.clear();
    m2.clear();
    m3.clear();
    payload.clear();
    Check(initiator.WriteMessage({}, m1), "write 1");
    Check(responder.ReadMessage(m1, payload), "read 1");
    Check(responder.WriteMessage({}, m2), "write 2");
    Check(initiator.ReadMessage(m2, payload), "read 2");
    Check(initiator.WriteMessage({}, m3), "write 3");
    Check(responder.ReadMessage(m3, payload), "read 3");
    auto a = initiator.Split();
    auto b = responder.Split();
    benchmark::DoNotOptimize(a.send.nonce());
    benchmark::DoNotOptimize(b.send.nonce());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK_CAPTURE(BM_HandshakeXX, AesGcm, CipherSuite::kAesGcm)->Name("BM_HandshakeXX");
BENCHMARK_CAPTURE(BM_HandshakeXX, ChaChaPoly, CipherSuite::kChaChaPoly)
    ->Name("BM_HandshakeXX_ChaChaPoly");

// The X25519 work of the same handshake and nothing else: per side one base-point
// multiplication (its ephemeral key) and three DHs (ee, es, se).
void BM_HandshakeLibsodiumBound(benchmark::State& state) {
  uint8_t secret[2][crypto_scalarmult_curve25519_SCALARBYTES];
  uint8_t peer_public[2][crypto_scalarmult_curve25519_BYTES];
  for (int side = 0; side < 2; ++side) {
    randombytes_buf(secret[side], sizeof(secret[side]));
    crypto_scalarmult_curve25519_base(peer_public[side], secret[side]);
  }
  uint8_t out[crypto_scalarmult_curve25519_BYTES];
  for (auto _ : state) {
    for (int side = 0; side < 2; ++side) {
      crypto_scalarmult_curve25519_base(out, secret[side]);
      benchmark::DoNotOptimize(out);
      for (int dh = 0; dh < 3; ++dh) {
        if (crypto_scalarmult_curve25519(out, secret[side], peer_public[1 - side]) != 0) {
          std::abort();
        }
        benchmark::DoNotOptimize(out);
      }
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HandshakeLibsodiumBound);

void SetRecordCounters(benchmark::State& state, size_t size) {
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(size));
}

// Seal then open one record of state.range(0) plaintext bytes through two CipherStates
// sharing a key: the per-record crypto of a link, one side each.
void BM_SealOpen_CipherState(benchmark::State& state, CipherSuite suite) {
  const size_t size = static_cast<size_t>(state.range(0));
  uint8_t key[mesh::crypto::kKeySize];
  randombytes_buf(key, sizeof(key));
  CipherState sender(suite), receiver(suite);
  sender.InitializeKey(key);
  receiver.InitializeKey(key);
  Bytes plaintext(size, 0xab), record(size + kTagSize), opened(size);
  for (auto _ : state) {
    Check(sender.EncryptWithAd({}, plaintext, record.data()), "seal");
    Check(receiver.DecryptWithAd({}, record, opened.data()), "open");
    benchmark::DoNotOptimize(opened.data());
    benchmark::ClobberMemory();
  }
  SetRecordCounters(state, size);
}
BENCHMARK_CAPTURE(BM_SealOpen_CipherState, AesGcm, CipherSuite::kAesGcm)
    ->Name("BM_SealOpen_CipherState")
    ->Arg(256)
    ->Arg(16384);
BENCHMARK_CAPTURE(BM_SealOpen_CipherState, ChaChaPoly, CipherSuite::kChaChaPoly)
    ->Name("BM_SealOpen_CipherState_ChaChaPoly")
    ->Arg(256)
    ->Arg(16384);

// Noise's AESGCM nonce (§12.3): 4 zero bytes, then the counter big-endian.
void AesGcmNonce(uint64_t n, uint8_t out[kNonceSize]) {
  for (int i = 0; i < 4; ++i) out[i] = 0;
  for (int i = 0; i < 8; ++i) out[kNonceSize - 1 - i] = static_cast<uint8_t>(n >> (8 * i));
}

// Noise's ChaChaPoly nonce (§12.4): 4 zero bytes, then the counter little-endian.
void ChaChaNonce(uint64_t n, uint8_t out[kNonceSize]) {
  for (int i = 0; i < 4; ++i) out[i] = 0;
  for (int i = 0; i < 8; ++i) out[4 + i] = static_cast<uint8_t>(n >> (8 * i));
}

// The same seal+open with bare libsodium calls: precomputed AES key schedule, empty AD.
void BM_SealOpen_RawLibsodium_AesGcm(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  uint8_t key[crypto_aead_aes256gcm_KEYBYTES];
  randombytes_buf(key, sizeof(key));
  // The state needs 16-byte alignment; libsodium's own allocator guarantees more.
  auto* aes =
      static_cast<crypto_aead_aes256gcm_state*>(sodium_malloc(sizeof(crypto_aead_aes256gcm_state)));
  crypto_aead_aes256gcm_beforenm(aes, key);
  Bytes plaintext(size, 0xab), record(size + kTagSize), opened(size);
  uint64_t send_n = 0, receive_n = 0;
  uint8_t nonce[kNonceSize];
  for (auto _ : state) {
    unsigned long long written = 0;
    AesGcmNonce(send_n++, nonce);
    crypto_aead_aes256gcm_encrypt_afternm(record.data(), &written, plaintext.data(), size, nullptr,
                                          0, nullptr, nonce, aes);
    AesGcmNonce(receive_n++, nonce);
    if (crypto_aead_aes256gcm_decrypt_afternm(opened.data(), &written, nullptr, record.data(),
                                              record.size(), nullptr, 0, nonce, aes) != 0) {
      std::abort();
    }
    benchmark::DoNotOptimize(opened.data());
    benchmark::ClobberMemory();
  }
  sodium_free(aes);
  SetRecordCounters(state, size);
}
BENCHMARK(BM_SealOpen_RawLibsodium_AesGcm)->Name("BM_SealOpen_RawLibsodium")->Arg(256)->Arg(16384);

void BM_SealOpen_RawLibsodium_ChaChaPoly(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  uint8_t key[crypto_aead_chacha20poly1305_ietf_KEYBYTES];
  randombytes_buf(key, sizeof(key));
  Bytes plaintext(size, 0xab), record(size + kTagSize), opened(size);
  uint64_t send_n = 0, receive_n = 0;
  uint8_t nonce[kNonceSize];
  for (auto _ : state) {
    unsigned long long written = 0;
    ChaChaNonce(send_n++, nonce);
    crypto_aead_chacha20poly1305_ietf_encrypt(record.data(), &written, plaintext.data(), size,
                                              nullptr, 0, nullptr, nonce, key);
    ChaChaNonce(receive_n++, nonce);
    if (crypto_aead_chacha20poly1305_ietf_decrypt(opened.data(), &written, nullptr, record.data(),
                                                  record.size(), nullptr, 0, nonce, key) != 0) {
      std::abort();
    }
    benchmark::DoNotOptimize(opened.data());
    benchmark::ClobberMemory();
  }
  SetRecordCounters(state, size);
}
BENCHMARK(BM_SealOpen_RawLibsodium_ChaChaPoly)->Arg(256)->Arg(16384);

}  // namespace

int main(int argc, char** argv) {
  Check(mesh::crypto::Init(), "mesh::crypto::Init");
  if (!mesh::crypto::SuiteAvailable(CipherSuite::kAesGcm)) {
    std::fprintf(stderr, "AES-256-GCM is not available on this CPU (needs AES-NI and PCLMUL)\n");
    return 1;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

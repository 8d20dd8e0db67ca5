// Noise Protocol Framework rev 34 (noiseprotocol.org/noise.html) on libsodium:
// CipherState (§5.1), SymmetricState (§5.2), HandshakeState (§5.3) for XX and XXpsk3 over
// 25519 + (AESGCM | ChaChaPoly) + SHA256.
#include <cstring>

#include "absl/strings/str_cat.h"
#include "crypto/crypto.h"

namespace mesh::crypto {
namespace {

constexpr size_t kNonceSize = 12;
constexpr uint64_t kMaxNonce = ~uint64_t{0};  // reserved by the spec (§5.1)

// HMAC-SHA256 over the concatenation of `parts` (§4.3 HMAC-HASH).
void Hmac(ByteSpan key, std::initializer_list<ByteSpan> parts, uint8_t out[kHashSize]) {
  crypto_auth_hmacsha256_state state;
  crypto_auth_hmacsha256_init(&state, key.data(), key.size());
  for (ByteSpan part : parts) crypto_auth_hmacsha256_update(&state, part.data(), part.size());
  crypto_auth_hmacsha256_final(&state, out);
  sodium_memzero(&state, sizeof(state));
}

// HKDF (§4.3) with two or three outputs.
void Hkdf(ByteSpan chaining_key, ByteSpan input_key_material, uint8_t* out1, uint8_t* out2,
          uint8_t* out3 = nullptr) {
  Secret<kHashSize> temp_key;
  Hmac(chaining_key, {input_key_material}, temp_key.data());
  static constexpr uint8_t kOne = 1, kTwo = 2, kThree = 3;
  Hmac(temp_key.span(), {{&kOne, 1}}, out1);
  Hmac(temp_key.span(), {{out1, kHashSize}, {&kTwo, 1}}, out2);
  if (out3 != nullptr) Hmac(temp_key.span(), {{out2, kHashSize}, {&kThree, 1}}, out3);
}

enum class Token { kE, kS, kEE, kES, kSE, kSS, kPsk };
using MessagePattern = std::vector<Token>;

// §7.5 XX and §9.4 XXpsk3: messages alternate, initiator first.
const std::vector<MessagePattern>& Messages(Pattern pattern) {
  using enum Token;
  static const std::vector<MessagePattern> kXX = {{kE}, {kE, kEE, kS, kES}, {kS, kSE}};
  static const std::vector<MessagePattern> kXXpsk3 = {{kE}, {kE, kEE, kS, kES}, {kS, kSE, kPsk}};
  return pattern == Pattern::kXX ? kXX : kXXpsk3;
}

std::string ProtocolNameOf(Pattern pattern, CipherSuite suite) {
  return absl::StrCat("Noise_", pattern == Pattern::kXX ? "XX" : "XXpsk3", "_25519_",
                      CipherName(suite), "_SHA256");
}

}  // namespace

const char* CipherName(CipherSuite suite) {
  return suite == CipherSuite::kAesGcm ? "AESGCM" : "ChaChaPoly";
}

bool SuiteAvailable(CipherSuite suite) {
  return suite == CipherSuite::kChaChaPoly || crypto_aead_aes256gcm_is_available() == 1;
}

CipherSuite PreferredSuite() {
  return SuiteAvailable(CipherSuite::kAesGcm) ? CipherSuite::kAesGcm : CipherSuite::kChaChaPoly;
}

// ---------------------------------------------------------------------------------------------
// CipherState

CipherState::CipherState(CipherSuite suite) : suite_(suite) { sodium_memzero(&aes_, sizeof(aes_)); }

CipherState::CipherState(CipherState&& other) noexcept { *this = std::move(other); }

CipherState& CipherState::operator=(CipherState&& other) noexcept {
  if (this != &other) {
    suite_ = other.suite_;
    has_key_ = other.has_key_;
    n_ = other.n_;
    std::memcpy(&aes_, &other.aes_, sizeof(aes_));
    key_ = other.key_;
    other.Wipe();
  }
  return *this;
}

CipherState::~CipherState() { Wipe(); }

CipherState CipherState::Clone() const {
  CipherState copy(suite_);
  copy.has_key_ = has_key_;
  copy.n_ = n_;
  std::memcpy(&copy.aes_, &aes_, sizeof(aes_));
  copy.key_ = key_;
  return copy;
}

void CipherState::Wipe() {
  sodium_memzero(&aes_, sizeof(aes_));
  key_.Assign({});
  has_key_ = false;
  n_ = 0;
}

void CipherState::InitializeKey(ByteSpan key) {
  Wipe();
  if (suite_ == CipherSuite::kAesGcm) {
    crypto_aead_aes256gcm_beforenm(&aes_, key.data());
  } else {
    key_.Assign(key);
  }
  has_key_ = true;
}

void CipherState::EncodeNonce(uint8_t out[kNonceSize]) const {
  std::memset(out, 0, kNonceSize);
  for (int i = 0; i < 8; ++i) {
    uint8_t byte = static_cast<uint8_t>(n_ >> (8 * i));
    // §12.3 AESGCM: 32 zero bits then n big-endian; §12.4 ChaChaPoly: n little-endian.
    if (suite_ == CipherSuite::kAesGcm) {
      out[kNonceSize - 1 - i] = byte;
    } else {
      out[4 + i] = byte;
    }
  }
}

absl::Status CipherState::EncryptWithAd(ByteSpan ad, ByteSpan plaintext, uint8_t* out) {
  if (!has_key_) {
    if (!plaintext.empty()) std::memmove(out, plaintext.data(), plaintext.size());
    return absl::OkStatus();
  }
  if (n_ == kMaxNonce) return absl::ResourceExhaustedError("cipher nonce exhausted");
  uint8_t nonce[kNonceSize];
  EncodeNonce(nonce);
  unsigned long long written = 0;
  if (suite_ == CipherSuite::kAesGcm) {
    crypto_aead_aes256gcm_encrypt_afternm(out, &written, plaintext.data(), plaintext.size(),
                                          ad.data(), ad.size(), nullptr, nonce, &aes_);
  } else {
    crypto_aead_chacha20poly1305_ietf_encrypt(out, &written, plaintext.data(), plaintext.size(),
                                              ad.data(), ad.size(), nullptr, nonce, key_.data());
  }
  ++n_;
  return absl::OkStatus();
}

absl::Status CipherState::DecryptWithAd(ByteSpan ad, ByteSpan ciphertext, uint8_t* out) {
  if (!has_key_) {
    if (!ciphertext.empty()) std::memmove(out, ciphertext.data(), ciphertext.size());
    return absl::OkStatus();
  }
  if (n_ == kMaxNonce) return absl::ResourceExhaustedError("cipher nonce exhausted");
  if (ciphertext.size() < kTagSize)
    return absl::UnauthenticatedError("ciphertext shorter than its tag");
  uint8_t nonce[kNonceSize];
  EncodeNonce(nonce);
  unsigned long long written = 0;
  int rc;
  if (suite_ == CipherSuite::kAesGcm) {
    rc = crypto_aead_aes256gcm_decrypt_afternm(out, &written, nullptr, ciphertext.data(),
                                               ciphertext.size(), ad.data(), ad.size(), nonce,
                                               &aes_);
  } else {
    rc = crypto_aead_chacha20poly1305_ietf_decrypt(out, &written, nullptr, ciphertext.data(),
                                                   ciphertext.size(), ad.data(), ad.size(), nonce,
                                                   key_.data());
  }
  if (rc != 0) return absl::UnauthenticatedError("authentication tag mismatch");
  ++n_;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// SymmetricState

SymmetricState::SymmetricState(std::string_view protocol_name, CipherSuite suite) : cipher_(suite) {
  if (protocol_name.size() <= kHashSize) {
    std::copy(protocol_name.begin(), protocol_name.end(), h_.begin());
  } else {
    crypto_hash_sha256(h_.data(), reinterpret_cast<const uint8_t*>(protocol_name.data()),
                       protocol_name.size());
  }
  ck_.Assign(h_);
}

void SymmetricState::MixKey(ByteSpan input_key_material) {
  Secret<kHashSize> temp_k;
  Hkdf(ck_.span(), input_key_material, ck_.data(), temp_k.data());
  cipher_.InitializeKey(temp_k.span());
}

void SymmetricState::MixHash(ByteSpan data) {
  crypto_hash_sha256_state state;
  crypto_hash_sha256_init(&state);
  crypto_hash_sha256_update(&state, h_.data(), h_.size());
  crypto_hash_sha256_update(&state, data.data(), data.size());
  crypto_hash_sha256_final(&state, h_.data());
}

void SymmetricState::MixKeyAndHash(ByteSpan input_key_material) {
  Secret<kHashSize> temp_h, temp_k;
  Hkdf(ck_.span(), input_key_material, ck_.data(), temp_h.data(), temp_k.data());
  MixHash(temp_h.span());
  cipher_.InitializeKey(temp_k.span());
}

absl::Status SymmetricState::EncryptAndHash(ByteSpan plaintext, Bytes& out) {
  size_t at = out.size();
  out.resize(at + plaintext.size() + (cipher_.HasKey() ? kTagSize : 0));
  if (auto status = cipher_.EncryptWithAd(h_, plaintext, out.data() + at); !status.ok()) {
    return status;
  }
  MixHash({out.data() + at, out.size() - at});
  return absl::OkStatus();
}

absl::Status SymmetricState::DecryptAndHash(ByteSpan ciphertext, Bytes& out) {
  size_t at = out.size();
  size_t plain_size = ciphertext.size() - (cipher_.HasKey() ? kTagSize : 0);
  out.resize(at + plain_size);
  if (auto status = cipher_.DecryptWithAd(h_, ciphertext, out.data() + at); !status.ok()) {
    out.resize(at);
    return status;
  }
  MixHash(ciphertext);
  return absl::OkStatus();
}

void SymmetricState::Split(CipherState& c1, CipherState& c2) {
  Secret<kHashSize> k1, k2;
  Hkdf(ck_.span(), {}, k1.data(), k2.data());
  c1.InitializeKey(k1.span());
  c2.InitializeKey(k2.span());
  ck_.Assign({});
}

// ---------------------------------------------------------------------------------------------
// HandshakeState

absl::StatusOr<HandshakeState> HandshakeState::Create(HandshakeConfig config) {
  if (config.static_key == nullptr) return absl::InvalidArgumentError("XX needs a static key");
  if ((config.pattern == Pattern::kXXpsk3) != config.psk.has_value()) {
    return absl::InvalidArgumentError("a PSK is required by XXpsk3 and only by it");
  }
  if (!SuiteAvailable(config.suite)) {
    return absl::FailedPreconditionError(
        absl::StrCat(CipherName(config.suite), " is not available on this CPU"));
  }
  return HandshakeState(std::move(config));
}

SymmetricState SymmetricState::Clone() const {
  SymmetricState copy(*this, cipher_.Clone());
  return copy;
}

HandshakeState HandshakeState::CloneWithPsk(const Secret<kKeySize>& psk) const {
  HandshakeConfig config = config_;
  config.psk = psk;
  HandshakeState copy(std::move(config), symmetric_.Clone());
  copy.e_ = e_;
  copy.re_ = re_;
  copy.rs_ = rs_;
  copy.next_message_ = next_message_;
  copy.failed_ = failed_;
  return copy;
}

HandshakeState::HandshakeState(HandshakeConfig config, SymmetricState symmetric)
    : config_(std::move(config)), symmetric_(std::move(symmetric)) {}

HandshakeState::HandshakeState(HandshakeConfig config)
    : config_(std::move(config)), symmetric_(ProtocolName(), config_.suite) {
  symmetric_.MixHash(config_.prologue);
}

std::string HandshakeState::ProtocolName() const {
  return ProtocolNameOf(config_.pattern, config_.suite);
}

bool HandshakeState::IsComplete() const {
  return !failed_ && next_message_ == Messages(config_.pattern).size();
}

bool HandshakeState::my_turn_to_write() const {
  return (next_message_ % 2 == 0) == config_.initiator;
}

absl::Status HandshakeState::Dh(const Secret<kKeySize>& priv, const PeerId& pub) {
  Secret<kKeySize> shared;
  // libsodium returns -1 when the result is all zeros (a low-order public key).
  if (crypto_scalarmult_curve25519(shared.data(), priv.data(), pub.bytes.data()) != 0) {
    return absl::PermissionDeniedError("DH with a low-order public key");
  }
  symmetric_.MixKey(shared.span());
  return absl::OkStatus();
}

absl::Status HandshakeState::WriteMessage(ByteSpan payload, Bytes& out) {
  if (failed_ || IsComplete() || !my_turn_to_write()) {
    return absl::FailedPreconditionError("not this side's turn to write a handshake message");
  }
  const bool psk_mode = config_.psk.has_value();
  const KeyPair& s = *config_.static_key;
  absl::Status status;
  for (Token token : Messages(config_.pattern)[next_message_]) {
    switch (token) {
      case Token::kE:
        e_ = config_.ephemeral_for_testing
                 ? KeyPair::FromPrivate(config_.ephemeral_for_testing->span())
                 : KeyPair::Generate();
        out.insert(out.end(), e_->public_key.bytes.begin(), e_->public_key.bytes.end());
        symmetric_.MixHash(e_->public_key.bytes);
        if (psk_mode) symmetric_.MixKey(e_->public_key.bytes);
        break;
      case Token::kS:
        status = symmetric_.EncryptAndHash(s.public_key.bytes, out);
        break;
      case Token::kEE:
        status = Dh(e_->private_key, *re_);
        break;
      case Token::kES:
        status = config_.initiator ? Dh(e_->private_key, *rs_) : Dh(s.private_key, *re_);
        break;
      case Token::kSE:
        status = config_.initiator ? Dh(s.private_key, *re_) : Dh(e_->private_key, *rs_);
        break;
      case Token::kSS:
        status = Dh(s.private_key, *rs_);
        break;
      case Token::kPsk:
        symmetric_.MixKeyAndHash(config_.psk->span());
        break;
    }
    if (!status.ok()) break;
  }
  if (status.ok()) status = symmetric_.EncryptAndHash(payload, out);
  if (!status.ok()) {
    failed_ = true;
    return status;
  }
  ++next_message_;
  return absl::OkStatus();
}

absl::Status HandshakeState::ReadMessage(ByteSpan message, Bytes& payload) {
  if (failed_ || IsComplete() || my_turn_to_write()) {
    return absl::FailedPreconditionError("not this side's turn to read a handshake message");
  }
  const bool psk_mode = config_.psk.has_value();
  const KeyPair& s = *config_.static_key;
  absl::Status status;
  // Reads a public key of `size` bytes (encrypted when the cipher has a key) into `into`.
  auto read_key = [&](std::optional<PeerId>& into, bool encrypted) -> absl::Status {
    size_t size = kKeySize + (encrypted ? kTagSize : 0);
    if (message.size() < size) return absl::InvalidArgumentError("handshake message too short");
    Bytes key;
    if (encrypted) {
      if (auto st = symmetric_.DecryptAndHash(message.first(size), key); !st.ok()) return st;
    } else {
      key.assign(message.begin(), message.begin() + size);
      symmetric_.MixHash(key);
    }
    message = message.subspan(size);
    if (!IsCanonicalPublicKey(key)) {
      return absl::PermissionDeniedError("remote key is not a canonical X25519 public key");
    }
    into = PeerId::FromBytes(key).value();
    return absl::OkStatus();
  };
  for (Token token : Messages(config_.pattern)[next_message_]) {
    switch (token) {
      case Token::kE:
        status = read_key(re_, false);
        if (status.ok() && psk_mode) symmetric_.MixKey(re_->bytes);
        break;
      case Token::kS:
        status = read_key(rs_, symmetric_.HasKey());
        break;
      case Token::kEE:
        status = Dh(e_->private_key, *re_);
        break;
      case Token::kES:
        status = config_.initiator ? Dh(e_->private_key, *rs_) : Dh(s.private_key, *re_);
        break;
      case Token::kSE:
        status = config_.initiator ? Dh(s.private_key, *re_) : Dh(e_->private_key, *rs_);
        break;
      case Token::kSS:
        status = Dh(s.private_key, *rs_);
        break;
      case Token::kPsk:
        symmetric_.MixKeyAndHash(config_.psk->span());
        break;
    }
    if (!status.ok()) break;
  }
  if (status.ok() && symmetric_.HasKey() && message.size() < kTagSize) {
    status = absl::InvalidArgumentError("handshake message too short");
  }
  if (status.ok()) status = symmetric_.DecryptAndHash(message, payload);
  if (!status.ok()) {
    failed_ = true;
    return status;
  }
  ++next_message_;
  return absl::OkStatus();
}

TransportCiphers HandshakeState::Split() {
  CipherState c1(config_.suite), c2(config_.suite);
  symmetric_.Split(c1, c2);
  if (config_.initiator) return {std::move(c1), std::move(c2)};
  return {std::move(c2), std::move(c1)};
}

}  // namespace mesh::crypto

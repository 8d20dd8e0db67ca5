// The crypto module's front door: X25519 static keys and peer IDs, and the Noise Protocol
// Framework objects (rev 34: CipherState, SymmetricState, HandshakeState) on libsodium.
// Knows nothing of sockets; everything here is synchronous and single-threaded per object.
#pragma once

#include <sodium.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mesh::crypto {

// Must run once before anything else here; safe to call again.
absl::Status Init();

using Bytes = std::vector<uint8_t>;
using ByteSpan = std::span<const uint8_t>;

// A fixed-size secret that is wiped when it is dropped or overwritten.
template <size_t N>
class Secret {
 public:
  Secret() { sodium_memzero(bytes_.data(), N); }
  explicit Secret(ByteSpan from) { Assign(from); }
  Secret(const Secret& other) : bytes_(other.bytes_) {}
  Secret& operator=(const Secret& other) {
    bytes_ = other.bytes_;
    return *this;
  }
  ~Secret() { sodium_memzero(bytes_.data(), N); }

  void Assign(ByteSpan from) {
    sodium_memzero(bytes_.data(), N);
    std::copy_n(from.begin(), std::min(from.size(), N), bytes_.begin());
  }
  uint8_t* data() { return bytes_.data(); }
  const uint8_t* data() const { return bytes_.data(); }
  static constexpr size_t size() { return N; }
  ByteSpan span() const { return {bytes_.data(), N}; }

 private:
  std::array<uint8_t, N> bytes_;
};

inline constexpr size_t kKeySize = 32;   // X25519 keys, DH outputs, cipher keys (DHLEN)
inline constexpr size_t kHashSize = 32;  // SHA-256 (HASHLEN)
inline constexpr size_t kTagSize = 16;   // AEAD tag

// ---------------------------------------------------------------------------------------------
// Small primitives for the modules above, so that none of them calls libsodium itself.

// `n` bytes from the operating system's CSPRNG.
std::string RandomBytes(size_t n);
// Unpadded base64url of any bytes (the text form of IDs, message ids and tokens).
std::string Base64Url(std::string_view bytes);
// Whether `a` equals `b`, in a time that depends on their lengths only (bearer tokens).
bool ConstantTimeEquals(std::string_view a, std::string_view b);
// Overwrites a string that held a secret with zeros (kept by the compiler, unlike memset).
void Wipe(std::string& secret);

// Keys and peer IDs

// A peer's ID is its static X25519 public key; as text, unpadded base64url (43 characters).
struct PeerId {
  std::array<uint8_t, kKeySize> bytes{};

  static absl::StatusOr<PeerId> FromBytes(ByteSpan raw);
  static absl::StatusOr<PeerId> Parse(std::string_view text);
  std::string ToString() const;
  // The 32 bytes as a string: how maps and protobuf `bytes` fields hold an ID.
  std::string Raw() const { return {reinterpret_cast<const char*>(bytes.data()), bytes.size()}; }
  auto operator<=>(const PeerId&) const = default;
};

// The text of an ID held as 32 raw bytes; empty when they are not 32.
std::string IdText(std::string_view raw);

// True for the canonical encoding of a point that is not of low order: top bit clear, below
// 2^255 - 19 and not one of the small-order points, so one private key has one ID.
bool IsCanonicalPublicKey(ByteSpan key);

struct KeyPair {
  PeerId public_key;
  Secret<kKeySize> private_key;

  static KeyPair Generate();
  static KeyPair FromPrivate(ByteSpan private_key);
};

// Key files hold the private key as one base64url line after a comment naming the peer ID.
// Writing creates the file with mode 0600 and never overwrites one that exists.
absl::Status WriteKeyFile(const std::string& path, const KeyPair& key);
// Refuses a file other users may read or write (group-readable is fine: Kubernetes Secrets).
absl::StatusOr<KeyPair> LoadKeyFile(const std::string& path);

// ---------------------------------------------------------------------------------------------
// Node certificates (DESIGN §5): how a client knows a broker belongs to the mesh

// The mesh authority's Ed25519 public key; as text, unpadded base64url like a peer ID.
struct AuthorityKey {
  std::array<uint8_t, crypto_sign_PUBLICKEYBYTES> bytes{};

  static absl::StatusOr<AuthorityKey> Parse(std::string_view text);
  std::string ToString() const;
  auto operator<=>(const AuthorityKey&) const = default;
};

struct AuthorityKeyPair {
  AuthorityKey public_key;
  Secret<crypto_sign_SEEDBYTES> seed;

  static AuthorityKeyPair Generate();
};

// Authority key files look like peer key files (the seed as one base64url line after a comment
// naming the public key), with the same modes.
absl::Status WriteAuthorityKeyFile(const std::string& path, const AuthorityKeyPair& key);
absl::StatusOr<AuthorityKeyPair> LoadAuthorityKeyFile(const std::string& path);

// A node certificate is the authority's signature over a broker's node ID and an expiry.
// Layout (140 bytes): "MNC1", node ID (32), expiry as big-endian Unix seconds (8), the
// authority's public key (32), Ed25519 signature over everything before it (64).
struct NodeCertificate {
  PeerId node;
  int64_t expires_unix_s = 0;
  AuthorityKey authority;
};
inline constexpr size_t kNodeCertificateSize = 4 + kKeySize + 8 + 32 + crypto_sign_BYTES;

Bytes IssueNodeCertificate(const AuthorityKeyPair& authority, const PeerId& node,
                           int64_t expires_unix_s);
// Decodes a certificate and checks its signature against the authority key it names.
absl::StatusOr<NodeCertificate> ParseNodeCertificate(ByteSpan bytes);
// Accepts only a certificate signed by `authority` for `node` that has not expired at `now`.
absl::Status VerifyNodeCertificate(ByteSpan bytes, const AuthorityKey& authority,
                                   const PeerId& node, int64_t now_unix_s);
// Certificate files: a comment saying what the certificate names, then one base64url line.
absl::Status WriteNodeCertificateFile(const std::string& path, ByteSpan certificate);
absl::StatusOr<Bytes> LoadNodeCertificateFile(const std::string& path);

// ---------------------------------------------------------------------------------------------
// Content fingerprints and end-to-end sealing

// 16-byte BLAKE2b of the parts in order: compares contents without keeping them.
using Fingerprint = std::array<uint8_t, 16>;
Fingerprint FingerprintOf(std::initializer_list<ByteSpan> parts);

// Seals a payload from `sender` to `recipient` with crypto_box (X25519, XSalsa20-Poly1305),
// binding it to the message id and both IDs: OpenSealed fails unless the Deliver that carried
// it names the same id, sender and recipient. Layout: version 1, 24-byte nonce, box.
inline constexpr size_t kSealOverhead = 1 + 24 + 16 + 16;
Bytes SealPayload(const KeyPair& sender, const PeerId& recipient, ByteSpan id, ByteSpan payload);
absl::StatusOr<Bytes> OpenSealed(const KeyPair& recipient, const PeerId& sender, ByteSpan id,
                                 ByteSpan sealed);

// ---------------------------------------------------------------------------------------------
// Noise

enum class CipherSuite : uint8_t { kAesGcm = 1, kChaChaPoly = 2 };

// "AESGCM" or "ChaChaPoly", as in protocol names.
const char* CipherName(CipherSuite suite);
// AES-256-GCM in libsodium 1.0.18 needs AES-NI and PCLMUL.
bool SuiteAvailable(CipherSuite suite);
// The suite a dialling side offers first: AES-GCM where the CPU has it, else ChaChaPoly.
CipherSuite PreferredSuite();

// Noise §5.1: a cipher key k and a 64-bit nonce n. The AES-GCM key schedule is computed once
// per key (libsodium's precomputed state). Both directions of a link each own one.
class CipherState {
 public:
  explicit CipherState(CipherSuite suite = CipherSuite::kAesGcm);
  CipherState(const CipherState&) = delete;
  CipherState& operator=(const CipherState&) = delete;
  CipherState(CipherState&& other) noexcept;
  CipherState& operator=(CipherState&& other) noexcept;
  ~CipherState();

  // An explicit copy (key material is not copied by accident): a handshake tried two ways.
  CipherState Clone() const;

  void InitializeKey(ByteSpan key);
  bool HasKey() const { return has_key_; }
  void SetNonce(uint64_t n) { n_ = n; }
  uint64_t nonce() const { return n_; }
  CipherSuite suite() const { return suite_; }

  // Writes plaintext.size() + kTagSize bytes to `out` (which may alias plaintext). Without a
  // key, copies the plaintext. Refuses once n reaches 2^64 - 1, the spec's reserved value.
  absl::Status EncryptWithAd(ByteSpan ad, ByteSpan plaintext, uint8_t* out);
  // Writes ciphertext.size() - kTagSize bytes to `out` (which may alias ciphertext). The nonce
  // advances only on success; the tag check is libsodium's constant-time one.
  absl::Status DecryptWithAd(ByteSpan ad, ByteSpan ciphertext, uint8_t* out);

 private:
  void Wipe();
  void EncodeNonce(uint8_t out[12]) const;

  CipherSuite suite_;
  bool has_key_ = false;
  uint64_t n_ = 0;
  crypto_aead_aes256gcm_state aes_;  // AES-GCM: the precomputed key schedule
  Secret<kKeySize> key_;             // ChaChaPoly: the raw key
};

// Noise §5.2: chaining key, handshake hash and the handshake's CipherState.
class SymmetricState {
 public:
  SymmetricState(std::string_view protocol_name, CipherSuite suite);

  void MixKey(ByteSpan input_key_material);
  void MixHash(ByteSpan data);
  void MixKeyAndHash(ByteSpan input_key_material);
  const std::array<uint8_t, kHashSize>& GetHandshakeHash() const { return h_; }
  // Appends the ciphertext of `plaintext` to `out`.
  absl::Status EncryptAndHash(ByteSpan plaintext, Bytes& out);
  // Appends the plaintext of `ciphertext` to `out`.
  absl::Status DecryptAndHash(ByteSpan ciphertext, Bytes& out);
  bool HasKey() const { return cipher_.HasKey(); }
  void Split(CipherState& c1, CipherState& c2);
  SymmetricState Clone() const;

 private:
  SymmetricState(const SymmetricState& from, CipherState cipher)
      : ck_(from.ck_), h_(from.h_), cipher_(std::move(cipher)) {}

  Secret<kHashSize> ck_;
  std::array<uint8_t, kHashSize> h_{};
  CipherState cipher_;
};

// Handshake patterns this implementation speaks, as token lists (Noise §7).
enum class Pattern { kXX, kXXpsk3 };

struct HandshakeConfig {
  Pattern pattern = Pattern::kXX;
  CipherSuite suite = CipherSuite::kAesGcm;
  bool initiator = false;
  Bytes prologue;
  const KeyPair* static_key = nullptr;                    // borrowed; must outlive the handshake
  std::optional<Secret<kKeySize>> psk;                    // required by kXXpsk3
  std::optional<Secret<kKeySize>> ephemeral_for_testing;  // fixed ephemeral (test vectors)
};

// The transport ciphers after Split(): one for each direction.
struct TransportCiphers {
  CipherState send;
  CipherState receive;
};

// Noise §5.3. WriteMessage/ReadMessage walk the pattern's next message token by token; any
// failure leaves the handshake unusable.
class HandshakeState {
 public:
  static absl::StatusOr<HandshakeState> Create(HandshakeConfig config);

  std::string ProtocolName() const;
  // Appends the next handshake message carrying `payload` to `out`.
  absl::Status WriteMessage(ByteSpan payload, Bytes& out);
  // Appends the payload of `message` to `payload`.
  absl::Status ReadMessage(ByteSpan message, Bytes& payload);
  bool IsComplete() const;
  // Only after IsComplete(); returns the initiator's c1/c2 as send/receive for this side.
  TransportCiphers Split();

  const std::array<uint8_t, kHashSize>& GetHandshakeHash() const {
    return symmetric_.GetHandshakeHash();
  }
  // The remote static key once its `s` token has been read.
  const std::optional<PeerId>& remote_static() const { return rs_; }
  bool my_turn_to_write() const;
  // A copy of this state with another PSK, for a responder that accepts two (a secret being
  // rotated): take it before reading the message that mixes the PSK in, try the other on failure.
  HandshakeState CloneWithPsk(const Secret<kKeySize>& psk) const;

 private:
  explicit HandshakeState(HandshakeConfig config);
  HandshakeState(HandshakeConfig config, SymmetricState symmetric);
  absl::Status Dh(const Secret<kKeySize>& priv, const PeerId& pub);

  HandshakeConfig config_;
  SymmetricState symmetric_;
  std::optional<KeyPair> e_;
  std::optional<PeerId> re_;
  std::optional<PeerId> rs_;
  size_t next_message_ = 0;
  bool failed_ = false;
};

}  // namespace mesh::crypto

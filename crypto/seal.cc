#include "crypto/crypto.h"

namespace mesh::crypto {
namespace {

constexpr uint8_t kSealVersion = 1;
constexpr size_t kNonceSize = crypto_box_NONCEBYTES;
constexpr size_t kBindingSize = sizeof(Fingerprint);

// What the sealed plaintext is bound to: the id and both ends of the message.
Fingerprint Binding(ByteSpan id, const PeerId& from, const PeerId& to) {
  return FingerprintOf({id, from.bytes, to.bytes});
}

}  // namespace

Fingerprint FingerprintOf(std::initializer_list<ByteSpan> parts) {
  crypto_generichash_state state;
  crypto_generichash_init(&state, nullptr, 0, sizeof(Fingerprint));
  for (ByteSpan part : parts) crypto_generichash_update(&state, part.data(), part.size());
  Fingerprint out;
  crypto_generichash_final(&state, out.data(), out.size());
  return out;
}

Bytes SealPayload(const KeyPair& sender, const PeerId& recipient, ByteSpan id, ByteSpan payload) {
  const Fingerprint binding = Binding(id, sender.public_key, recipient);
  Bytes plain(kBindingSize + payload.size());
  std::copy(binding.begin(), binding.end(), plain.begin());
  std::copy(payload.begin(), payload.end(), plain.begin() + kBindingSize);
  Bytes sealed(1 + kNonceSize + crypto_box_MACBYTES + plain.size());
  sealed[0] = kSealVersion;
  randombytes_buf(sealed.data() + 1, kNonceSize);
  const int sealed_ok =
      crypto_box_easy(sealed.data() + 1 + kNonceSize, plain.data(), plain.size(), sealed.data() + 1,
                      recipient.bytes.data(), sender.private_key.data());
  sodium_memzero(plain.data(), plain.size());
  // Fails only for a low-order recipient key, which PeerId parsing already refuses.
  if (sealed_ok != 0) sealed.clear();
  return sealed;
}

absl::StatusOr<Bytes> OpenSealed(const KeyPair& recipient, const PeerId& sender, ByteSpan id,
                                 ByteSpan sealed) {
  if (sealed.size() < kSealOverhead || sealed[0] != kSealVersion) {
    return absl::InvalidArgumentError("not a sealed payload");
  }
  const size_t box_size = sealed.size() - 1 - kNonceSize;
  Bytes plain(box_size - crypto_box_MACBYTES);
  if (crypto_box_open_easy(plain.data(), sealed.data() + 1 + kNonceSize, box_size,
                           sealed.data() + 1, sender.bytes.data(),
                           recipient.private_key.data()) != 0) {
    return absl::PermissionDeniedError("sealed payload fails authentication");
  }
  const Fingerprint binding = Binding(id, sender, recipient.public_key);
  if (sodium_memcmp(plain.data(), binding.data(), kBindingSize) != 0) {
    return absl::PermissionDeniedError("sealed payload names another message, sender or recipient");
  }
  plain.erase(plain.begin(), plain.begin() + kBindingSize);
  return plain;
}

}  // namespace mesh::crypto

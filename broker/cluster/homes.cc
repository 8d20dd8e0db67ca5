#include "broker/cluster/homes.h"

#include <sodium.h>

namespace mesh::broker {

uint64_t HomeScore(std::string_view node, std::string_view peer) {
  crypto_hash_sha256_state state;
  crypto_hash_sha256_init(&state);
  crypto_hash_sha256_update(&state, reinterpret_cast<const uint8_t*>(node.data()), node.size());
  crypto_hash_sha256_update(&state, reinterpret_cast<const uint8_t*>(peer.data()), peer.size());
  uint8_t digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256_final(&state, digest);
  uint64_t score = 0;
  for (int i = 0; i < 8; ++i) score = (score << 8) | digest[i];
  return score;
}

std::string HomeOf(std::string_view peer, const std::vector<std::string>& nodes) {
  std::string best;
  uint64_t best_score = 0;
  for (const auto& node : nodes) {
    const uint64_t score = HomeScore(node, peer);
    if (best.empty() || score > best_score || (score == best_score && node < best)) {
      best = node;
      best_score = score;
    }
  }
  return best;
}

}  // namespace mesh::broker

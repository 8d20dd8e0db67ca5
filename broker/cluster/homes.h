// Homes (DESIGN §5): a peer's mailbox lives on the member with the highest rendezvous score, so
// a join or a leave moves only about 1/N of the homes. Pure functions, no state.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mesh::broker {

// The first 8 bytes, big endian, of SHA-256(node ‖ peer).
uint64_t HomeScore(std::string_view node, std::string_view peer);
// The highest-scoring node (ties to the lower ID); empty when `nodes` is.
std::string HomeOf(std::string_view peer, const std::vector<std::string>& nodes);

}  // namespace mesh::broker

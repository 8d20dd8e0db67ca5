#include "broker/cluster/membership.h"

#include "crypto/crypto.h"

namespace mesh::broker {
namespace {

constexpr std::chrono::milliseconds kDialBackoffMin{100};
constexpr std::chrono::milliseconds kDialBackoffMax{5000};

}  // namespace

const char* MemberStateName(MemberState state, bool draining) {
  if (draining) return "draining";
  switch (state) {
    case MemberState::kJoining:
      return "joining";
    case MemberState::kLive:
      return "live";
    case MemberState::kSuspect:
      return "suspect";
  }
  return "unknown";
}

mesh::v1::Member::State MemberViewState(const Member& member) {
  if (member.draining) return mesh::v1::Member::DRAINING;
  switch (member.state) {
    case MemberState::kLive:
      return mesh::v1::Member::ALIVE;
    case MemberState::kSuspect:
      return mesh::v1::Member::SUSPECT;
    case MemberState::kJoining:
      break;
  }
  return mesh::v1::Member::STATE_UNSPECIFIED;
}

Membership::Membership(std::string self, std::set<std::string> seeds)
    : self_(std::move(self)), seeds_(std::move(seeds)) {}

std::vector<std::string> Membership::HomeSet(bool self_draining) const {
  std::vector<std::string> nodes;
  if (!self_draining) nodes.push_back(self_);
  for (const auto& [id, member] : members_) {
    if (member.draining || member.state == MemberState::kJoining) continue;
    nodes.push_back(id);
  }
  return nodes;
}

std::vector<std::shared_ptr<ClusterLink>> Membership::UpLinks() const {
  std::vector<std::shared_ptr<ClusterLink>> links;
  for (const auto& [id, member] : members_) {
    if (member.link && member.link->up) links.push_back(member.link);
  }
  return links;
}

void Membership::Gossip(google::protobuf::RepeatedPtrField<mesh::v1::ClusterMember>& out) const {
  for (const auto& [id, member] : members_) {
    if (member.address.empty() || member.state == MemberState::kJoining) continue;
    auto* m = out.Add();
    m->set_node_id(id);
    m->set_address(member.address);
    m->set_draining(member.draining);
  }
}

void Membership::Learn(const google::protobuf::RepeatedPtrField<mesh::v1::ClusterMember>& gossip) {
  for (const auto& m : gossip) {
    if (m.node_id() == self_ || m.node_id().size() != crypto::kKeySize || m.address().empty()) {
      continue;
    }
    auto [it, added] = members_.try_emplace(m.node_id());
    if (added) it->second.address = m.address();
  }
}

Membership::Admission Membership::Admit(const std::shared_ptr<ClusterLink>& link,
                                        const mesh::v1::ClusterHello& hello,
                                        const std::string& own_incarnation) {
  const std::string& node = link->node();
  if (node == self_) {
    // This process, through an address that turned out to be its own; or another process
    // with this node's key (a cloned volume), which must never be merged into "self".
    if (hello.incarnation() != own_incarnation) return {Admission::kCloned, nullptr};
    if (!link->dialed().empty()) self_addresses_.insert(link->dialed());
    return {Admission::kSelf, nullptr};
  }
  std::shared_ptr<ClusterLink> replaced;
  auto it = members_.find(node);
  if (it != members_.end() && it->second.link && it->second.link != link && it->second.link->up) {
    const Member& live = it->second;
    if (live.incarnation != hello.incarnation()) return {Admission::kCloned, nullptr};
    // Two links between one pair: the one dialled by the lower node ID stays.
    const std::string& dialer_new = link->initiator() ? self_ : node;
    const std::string& dialer_old = live.link->initiator() ? self_ : node;
    if (dialer_old <= dialer_new) return {Admission::kDuplicate, nullptr};
    replaced = live.link;
  }
  Member& member = members_[node];
  const bool first = member.state != MemberState::kLive;
  member.link = link;
  member.state = MemberState::kLive;
  member.since = Clock::now();
  member.address = hello.address();
  member.name = hello.node_name();
  member.incarnation = hello.incarnation();
  member.draining = hello.draining();
  link->up = true;
  Learn(hello.members());
  return {Admission::kJoined, std::move(replaced), first};
}

Membership::LinkDown Membership::OnLinkDown(const std::shared_ptr<ClusterLink>& link,
                                            bool stopping) {
  auto it = members_.find(link->node());
  if (it == members_.end() || it->second.link != link) return {};
  it->second.link.reset();
  if (it->second.draining || stopping) {
    members_.erase(it);
    return {true, true};
  }
  it->second.state = MemberState::kSuspect;
  it->second.since = Clock::now();
  return {true, false};
}

Membership::Due Membership::Tick(Clock::time_point now, const std::string& advertise,
                                 std::chrono::milliseconds suspect_timeout) {
  Due due;
  for (auto it = members_.begin(); it != members_.end();) {
    const Member& member = it->second;
    const bool dropped_by_dns = dns_resolved_ && !member.link &&
                                !dns_addresses_.contains(member.address) &&
                                !seeds_.contains(member.address);
    // A suspect past its timeout, or a member learned of but never reached in as long.
    const bool timed_out =
        member.state != MemberState::kLive && now - member.since >= suspect_timeout;
    if ((member.state != MemberState::kLive && dropped_by_dns) || timed_out) {
      due.gone.push_back(it->first);
      it = members_.erase(it);
      continue;
    }
    ++it;
  }
  std::set<std::string> linked;
  for (const auto& [id, member] : members_) {
    if (member.link) linked.insert(member.address);
  }
  std::set<std::string> wanted;
  auto want = [&](const std::string& address) {
    if (address.empty() || address == advertise || linked.contains(address) ||
        self_addresses_.contains(address)) {
      return;
    }
    wanted.insert(address);
    auto [it, added] = dials_.try_emplace(address);
    Dial& dial = it->second;
    if (added) dial.backoff = kDialBackoffMin;
    if (dial.in_progress || now < dial.next) return;
    dial.in_progress = true;
    due.dial.push_back(address);
  };
  for (const auto& [id, member] : members_) {
    if (!member.link) want(member.address);
  }
  for (const auto& seed : seeds_) want(seed);
  for (const auto& address : dns_addresses_) want(address);
  // Addresses nobody wants any more (a member gone, an old DNS answer) are forgotten.
  std::erase_if(dials_, [&](const auto& entry) {
    return !entry.second.in_progress && !wanted.contains(entry.first);
  });
  return due;
}

void Membership::DialEnded(const std::string& address, bool ok, Clock::time_point now) {
  auto it = dials_.find(address);
  if (it == dials_.end()) return;
  Dial& dial = it->second;
  dial.in_progress = false;
  if (ok) {
    dial.backoff = kDialBackoffMin;
  } else {
    dial.next = now + dial.backoff;
    dial.backoff = std::min(dial.backoff * 2, kDialBackoffMax);
  }
}

void Membership::SetDns(std::set<std::string> addresses) {
  dns_addresses_ = std::move(addresses);
  dns_resolved_ = true;
}

Member* Membership::Find(const std::string& node) {
  auto it = members_.find(node);
  return it == members_.end() ? nullptr : &it->second;
}

void Membership::Clear() { members_.clear(); }

}  // namespace mesh::broker

// Membership (DESIGN §5, "Membership"): the members this node knows, by the node ID proven in
// each link's handshake; where to dial (seeds, DNS answers, gossip) and with what backoff;
// joining -> live -> suspect -> gone. A plain class: the cluster holds it under its lock and
// runs the links, the dials and the timers.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "broker/cluster/cluster_link.h"
#include "mesh/v1/cluster.pb.h"
#include "mesh/v1/control.pb.h"

namespace mesh::broker {

enum class MemberState { kJoining, kLive, kSuspect };

struct Member {
  using Clock = std::chrono::steady_clock;
  std::string address;
  std::string name;
  std::string incarnation;  // the process behind the link (ClusterHello.incarnation)
  MemberState state = MemberState::kJoining;
  bool draining = false;
  std::shared_ptr<ClusterLink> link;
  Clock::time_point since = Clock::now();
  double rtt_ms = 0;
};

class Membership {
 public:
  using Clock = std::chrono::steady_clock;

  Membership(std::string self, std::set<std::string> seeds);

  // Live and suspect members that do not drain, and this node unless it drains: the nodes
  // homes are computed over.
  std::vector<std::string> HomeSet(bool self_draining) const;
  std::vector<std::shared_ptr<ClusterLink>> UpLinks() const;
  // Members proven by a link, for gossip: an address nobody reached is not passed on.
  void Gossip(google::protobuf::RepeatedPtrField<mesh::v1::ClusterMember>& out) const;
  // Members another node knows of: new ones join as "joining" until a link proves them.
  void Learn(const google::protobuf::RepeatedPtrField<mesh::v1::ClusterMember>& gossip);

  // The outcome of a member's hello on `link`.
  struct Admission {
    enum Kind {
      kJoined,     // a member's (new) link is up
      kSelf,       // this node dialled itself
      kDuplicate,  // a link to this member exists and stays
      kCloned,     // another process holds a node ID already live: refused
    } kind;
    std::shared_ptr<ClusterLink> replaced;  // kJoined: the older link to close
    bool first = false;                     // kJoined: the member was not live before
  };
  Admission Admit(const std::shared_ptr<ClusterLink>& link, const mesh::v1::ClusterHello& hello,
                  const std::string& own_incarnation);

  // The link ended. Whether it was a member's link, and whether the member is gone (it drained,
  // or this node stops) rather than suspect.
  struct LinkDown {
    bool member_link = false;
    bool gone = false;
  };
  LinkDown OnLinkDown(const std::shared_ptr<ClusterLink>& link, bool stopping);

  // Once per probe interval: members past the suspect timeout (or unlinked ones DNS no longer
  // lists) are dropped and returned in `gone`; `dial` lists addresses to dial now.
  struct Due {
    std::vector<std::string> gone;
    std::vector<std::string> dial;
  };
  Due Tick(Clock::time_point now, const std::string& advertise,
           std::chrono::milliseconds suspect_timeout);
  void DialEnded(const std::string& address, bool ok, Clock::time_point now);
  void SetDns(std::set<std::string> addresses);

  Member* Find(const std::string& node);
  const std::map<std::string, Member>& members() const { return members_; }
  void Clear();

 private:
  struct Dial {
    bool in_progress = false;
    Clock::time_point next{};
    std::chrono::milliseconds backoff;
  };

  const std::string self_;
  std::map<std::string, Member> members_;  // by node ID (raw), this node excluded
  std::set<std::string> seeds_;
  std::set<std::string> dns_addresses_;
  bool dns_resolved_ = false;
  std::set<std::string> self_addresses_;  // addresses that turned out to be this node
  std::map<std::string, Dial> dials_;     // addresses wanted now, and their backoff
};

const char* MemberStateName(MemberState state, bool draining);
mesh::v1::Member::State MemberViewState(const Member& member);

}  // namespace mesh::broker

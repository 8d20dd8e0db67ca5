// A cap on handshakes in progress (DESIGN §3), shared by the listeners of one process.
#pragma once

#include <algorithm>
#include <boost/asio/ip/address.hpp>
#include <mutex>
#include <string>
#include <unordered_map>

namespace mesh::peer {

// Caps handshakes in progress, in total and per source address, so a flood of first
// messages cannot starve established links. Thread-safe; held only around accept and finish.
class HandshakeGate {
 public:
  HandshakeGate(int total, int per_address)
      : total_limit_(total), per_address_limit_(per_address) {}

  // The source a connection is capped as: an IPv6 address's /64, since one subscriber or host
  // is usually given a whole /64 and picks addresses in it at will; an IPv4-mapped IPv6
  // address as the IPv4 address it maps, so a dual-stack listener caps it like one.
  static boost::asio::ip::address KeyOf(const boost::asio::ip::address& address) {
    if (!address.is_v6()) return address;
    const boost::asio::ip::address_v6 v6 = address.to_v6();
    if (v6.is_v4_mapped()) {
      return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, v6);
    }
    boost::asio::ip::address_v6::bytes_type prefix = v6.to_bytes();
    std::fill(prefix.begin() + 8, prefix.end(), 0);
    return boost::asio::ip::address_v6(prefix);  // scope id dropped: one interface's /64
  }

  bool TryEnter(const boost::asio::ip::address& address) {
    std::lock_guard lock(mu_);
    const auto key = KeyOf(address);
    int& mine = per_address_[key];
    if (total_ >= total_limit_ || mine >= per_address_limit_) {
      if (mine == 0) per_address_.erase(key);
      return false;
    }
    ++mine;
    ++total_;
    return true;
  }
  void Leave(const boost::asio::ip::address& address) {
    std::lock_guard lock(mu_);
    --total_;
    const auto key = KeyOf(address);
    if (--per_address_[key] == 0) per_address_.erase(key);
  }

  // Behind a proxy the source is known only once its header is read: until then a connection
  // holds a place in the total alone.
  bool TryEnterUnattributed() {
    std::lock_guard lock(mu_);
    if (total_ >= total_limit_) return false;
    ++total_;
    return true;
  }
  // Moves an unattributed place to `address` (then Leave(address) ends it); false when that
  // source is at its cap, and the place is still held.
  bool TryAttribute(const boost::asio::ip::address& address) {
    std::lock_guard lock(mu_);
    const auto key = KeyOf(address);
    int& mine = per_address_[key];
    if (mine >= per_address_limit_) {
      if (mine == 0) per_address_.erase(key);
      return false;
    }
    ++mine;
    return true;
  }
  void LeaveUnattributed() {
    std::lock_guard lock(mu_);
    --total_;
  }

 private:
  struct AddressHash {
    size_t operator()(const boost::asio::ip::address& a) const {
      return std::hash<std::string>()(a.to_string());
    }
  };
  std::mutex mu_;
  const int total_limit_;
  const int per_address_limit_;
  int total_ = 0;
  std::unordered_map<boost::asio::ip::address, int, AddressHash> per_address_;
};

}  // namespace mesh::peer

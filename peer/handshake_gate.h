// A cap on handshakes in progress (DESIGN §3), shared by the listeners of one process.
#pragma once

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
  bool TryEnter(const boost::asio::ip::address& address) {
    std::lock_guard lock(mu_);
    int& mine = per_address_[address];
    if (total_ >= total_limit_ || mine >= per_address_limit_) {
      if (mine == 0) per_address_.erase(address);
      return false;
    }
    ++mine;
    ++total_;
    return true;
  }
  void Leave(const boost::asio::ip::address& address) {
    std::lock_guard lock(mu_);
    --total_;
    if (--per_address_[address] == 0) per_address_.erase(address);
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

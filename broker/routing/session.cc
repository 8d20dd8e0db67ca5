#include "broker/routing/session.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

namespace mesh::broker {

Session::Session(std::shared_ptr<peer::Link> link, std::string remote_address)
    : kind_(PeerLink{link}),
      executor_(link->get_executor()),
      id_(link->remote_id()),
      peer_(id_.Raw()),
      remote_address_(std::move(remote_address)) {}

Session::Session(const crypto::PeerId& id, Sink sink)
    : kind_(Local{std::move(sink)}), id_(id), peer_(id_.Raw()), remote_address_("local") {}

Session::Session(const crypto::PeerId& recipient, std::string next_hop, Forward forward,
                 std::weak_ptr<void> carrier, std::shared_ptr<ForwardWindow> link_window,
                 peer::Link::Socket::executor_type executor, uint64_t window)
    : kind_(Forwarder{std::move(next_hop), std::move(forward), std::move(carrier),
                      std::move(link_window)}),
      executor_(std::move(executor)),
      id_(recipient),
      peer_(id_.Raw()),
      remote_address_("forward"),
      credit_(window) {}

void Session::Queue(mesh::v1::Frame frame) {
  if (const Local* local = std::get_if<Local>(&kind_)) return local->sink(std::move(frame));
  const PeerLink* peer = std::get_if<PeerLink>(&kind_);
  if (peer == nullptr) return;  // a forwarder takes no frames: a GoAway to it is moot
  bool post = false;
  {
    std::lock_guard lock(out_mu_);
    if (out_.empty() && !flush_scheduled_ && !close_requested_ && OnLinkThread()) {
      // Nothing is queued ahead and this is the link's thread: send now, skipping a post.
      // Held under out_mu_, so a frame queued meanwhile by another thread goes after it.
      peer->link->Send(frame);
      return;
    }
    out_.push_back(std::move(frame));
    post = !flush_scheduled_;
    flush_scheduled_ = true;
  }
  // One post per batch: frames queued meanwhile ride along with it.
  if (post) boost::asio::post(executor_, [self = shared_from_this()] { self->Flush(); });
}

bool Session::OnLinkThread() const {
  const auto* io = executor_.target<boost::asio::io_context::executor_type>();
  return io != nullptr && io->running_in_this_thread();
}

void Session::GoAwayAndClose(mesh::v1::GoAway::Reason reason) {
  mesh::v1::Frame frame;
  frame.mutable_go_away()->set_reason(reason);
  {
    std::lock_guard lock(out_mu_);
    close_requested_ = true;
  }
  Queue(std::move(frame));
}

void Session::Flush() {
  std::vector<mesh::v1::Frame> frames;
  bool close = false;
  {
    std::lock_guard lock(out_mu_);
    frames.swap(out_);
    flush_scheduled_ = false;
    close = close_requested_;
  }
  const auto& link = std::get<PeerLink>(kind_).link;  // only a peer link's frames are queued
  for (const auto& frame : frames) link->Send(frame);
  if (close) link->Close(absl::OkStatus());
}

}  // namespace mesh::broker

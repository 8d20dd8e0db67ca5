#include "broker/drain.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "base/files.h"
#include "broker/log.h"

namespace mesh::broker {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

constexpr std::chrono::milliseconds kPoll{50};

std::string DrainedPath(const std::string& data_dir) { return data_dir + "/DRAINED"; }

}  // namespace

absl::Status RemoveDrained(const std::string& data_dir) {
  return base::RemoveFileDurably(DrainedPath(data_dir));
}

Drain::Drain(DrainOptions options, asio::io_context& io, Router& router, Cluster* cluster,
             const ClusterStats& cluster_stats, const std::atomic<bool>& stopping)
    : options_(std::move(options)),
      io_(io),
      router_(router),
      cluster_(cluster),
      cluster_stats_(cluster_stats),
      stopping_(stopping) {}

// Live members other than this one that are not draining themselves: the ones homes move to.
size_t Drain::MembersToTakeOver() const {
  if (cluster_ == nullptr) return 0;
  size_t n = 0;
  for (const auto& member : cluster_->Members()) {
    n += member.node_id() != options_.node_id && member.state() == mesh::v1::Member::ALIVE;
  }
  return n;
}

mesh::v1::DrainResponse Drain::Start(std::function<void()> on_finished) {
  mesh::v1::DrainResponse response;
  if (started_.exchange(true)) {
    response.set_detail("a drain is already under way");
    return response;
  }
  response.set_started(true);
  const size_t peers = router_.GoAwayAll(mesh::v1::GoAway::DRAINING);
  const int64_t held = router_.QueuedMessages();
  const size_t members = MembersToTakeOver();
  Log(spdlog::level::info, "drain_started",
      {{"peers", peers}, {"messages", held}, {"members", members}});
  mesh::v1::Event event;
  event.mutable_drain_started();
  router_.events().Publish(std::move(event));

  std::string plan;
  if (held == 0) {
    plan = "nothing is held here";
  } else if (cluster_ == nullptr) {
    plan = absl::StrCat("this broker is not in a mesh, so its ", held,
                        " messages stay in the data dir for its next start");
  } else if (members == 0) {
    plan = absl::StrCat("no other member is live, so ", held,
                        " messages stay in the data dir until one is (or this broker restarts)");
  } else {
    plan = absl::StrCat("handing ", held, " messages to their homes among ", members,
                        " other members");
  }
  response.set_detail(absl::StrCat("draining: not ready, ", peers, " peers told to go; ", plan,
                                   "; DRAINED in the data dir says how it ended"));
  const uint64_t handed_before = cluster_stats_.handoff_messages.load();
  if (cluster_ != nullptr) cluster_->StartDrain();
  asio::co_spawn(io_, HandOff(std::move(on_finished), handed_before), asio::detached);
  return response;
}

// Waits until nothing is held here, the timeout passes, or no member is left to take what is.
asio::awaitable<void> Drain::HandOff(std::function<void()> on_finished, uint64_t handed_before) {
  asio::steady_timer timer(io_);
  const auto started = Clock::now();
  const auto deadline = started + options_.timeout;
  std::string why = "empty";
  bool refusing = false;
  while (!stopping_) {
    if (router_.QueuedMessages() == 0) {
      // Nothing held: from now on own nothing new (a member that has not yet seen the drain
      // may still forward here), then make sure nothing came in meanwhile.
      if (refusing) break;
      router_.RefuseNewMessages();
      refusing = true;
    } else if (cluster_ == nullptr) {
      why = "not_in_mesh";
      break;
    } else if (cluster_->LiveMembers() == 0) {
      why = "no_member";
      break;
    } else if (Clock::now() >= deadline) {
      why = "timeout";
      break;
    }
    timer.expires_after(kPoll);
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  const int64_t left = router_.QueuedMessages();
  const uint64_t handed = cluster_stats_.handoff_messages.load() - handed_before;
  const auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
  Log(left == 0 ? spdlog::level::info : spdlog::level::warn, "drain_finished",
      {{"empty", left == 0},
       {"messages_left", left},
       {"handed_off", handed},
       {"ms", took},
       {"why", left == 0 ? "empty" : why},
       {"detail", left == 0 ? "every message is owned elsewhere or delivered"
                            : "what is left stays in the data dir for this broker's next "
                              "start; do not delete the volume"}});
  WriteDrained(left, handed);
  mesh::v1::Event event;
  auto* finished = event.mutable_drain_finished();
  finished->set_empty(left == 0);
  finished->set_messages_left(static_cast<uint64_t>(std::max<int64_t>(left, 0)));
  finished->set_handed_off(handed);
  router_.events().Publish(std::move(event));
  if (on_finished) on_finished();
}

// Atomically (temp file, fsync, rename, directory fsync): an operator deletes a volume on its
// word, so it must never be half written or outlive a crash that followed it.
void Drain::WriteDrained(int64_t left, uint64_t handed) const {
  const nlohmann::json drained = {{"empty", left == 0},
                                  {"messages_left", left},
                                  {"handed_off", handed},
                                  {"node_id", options_.node_id},
                                  {"at_ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                                std::chrono::system_clock::now().time_since_epoch())
                                                .count()}};
  const std::string path = DrainedPath(options_.data_dir);
  if (auto status =
          base::WriteFileAtomically(path, drained.dump() + "\n", 0644, base::Replace::kYes);
      !status.ok()) {
    Log(spdlog::level::err, "drained_write_failed",
        {{"path", path}, {"error", std::string(status.message())}});
  }
}

}  // namespace mesh::broker

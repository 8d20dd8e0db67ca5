// kill -9 at random moments under load loses no acknowledged message (DESIGN §4). Senders on the
// real client library send to recipients that are online (their own sessions, riding out each
// crash) and offline (connecting only after the last restart). The broker is SIGKILLed several
// times and restarted on the same data dir and port; in the end every id that got a SendAck
// ACCEPTED or DUPLICATE must have reached its recipient's application, and none twice.
// MESH_CRASH_KILLS scales it up (scripts/crash-soak.sh).
#include <gtest/gtest.h>
#include <signal.h>

#include <random>
#include <thread>

#include "tests/integration/acked_load.h"
#include "tests/integration/broker_process.h"
#include "tests/integration/test_peers.h"

namespace mesh::testing {
namespace {

using namespace std::chrono_literals;

int EnvOr(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::atoi(value) : fallback;
}

TEST(CrashTest, SigkillUnderLoadLosesNoAcknowledgedMessage) {
  ASSERT_TRUE(crypto::Init().ok());
  const int kills = EnvOr("MESH_CRASH_KILLS", 3);
  // Each sender sends at about 4 messages per millisecond until the last restart.
  constexpr int kSenders = 6, kOnline = 3, kOffline = 3;

  auto first = std::make_unique<BrokerProcess>(std::vector<std::string>{"--send-rate", "0"});
  ASSERT_TRUE(first->started()) << first->Log();
  const std::string data_dir = first->data_dir();
  const std::string address = first->address();
  const std::vector<std::string> args = {"--send-rate", "0", "--listen-peer", address};
  std::vector<std::unique_ptr<BrokerProcess>> brokers;
  brokers.push_back(std::move(first));

  auto fast_retry = [](client::SessionOptions& options) {
    options.backoff_min = 20ms;
    options.backoff_max = 200ms;
  };
  std::vector<crypto::KeyPair> recipient_keys(kOnline + kOffline);
  for (auto& key : recipient_keys) key = crypto::KeyPair::Generate();
  std::vector<std::unique_ptr<LibraryPeer>> online;
  for (int i = 0; i < kOnline; ++i) {
    online.push_back(std::make_unique<LibraryPeer>(std::vector<std::string>{address},
                                                   recipient_keys[i], fast_retry));
  }

  std::vector<std::unique_ptr<LibraryPeer>> senders;
  for (int s = 0; s < kSenders; ++s) {
    senders.push_back(std::make_unique<LibraryPeer>(std::vector<std::string>{address},
                                                    crypto::KeyPair::Generate(), fast_retry));
  }
  std::vector<crypto::PeerId> recipients;
  for (const auto& key : recipient_keys) recipients.push_back(key.public_key);
  AcknowledgedLoad load(std::move(senders), recipients, /*burst=*/4);

  std::mt19937 random(std::random_device{}());
  for (int k = 0; k < kills; ++k) {
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::uniform_int_distribution<int>(50, 400)(random)));
    ASSERT_EQ(brokers.back()->Stop(SIGKILL), -1);  // died of the signal
    brokers.push_back(std::make_unique<BrokerProcess>(args, data_dir));
    ASSERT_TRUE(brokers.back()->started()) << brokers.back()->Log();
  }
  std::this_thread::sleep_for(100ms);  // load on the last broker too
  ASSERT_TRUE(load.StopAndWaitForAnswers()) << brokers.back()->Log();

  std::vector<std::unique_ptr<LibraryPeer>> offline;
  for (int i = kOnline; i < kOnline + kOffline; ++i) {
    offline.push_back(std::make_unique<LibraryPeer>(std::vector<std::string>{address},
                                                    recipient_keys[i], fast_retry));
  }
  size_t total_accepted = 0;
  for (size_t r = 0; r < recipient_keys.size(); ++r) {
    total_accepted += load.ExpectDelivered(r, r < kOnline ? *online[r] : *offline[r - kOnline]);
  }
  EXPECT_GT(total_accepted, 0u);
  std::cout << "crash test: " << kills << " kills, " << load.sent() << " sends, " << total_accepted
            << " acknowledged, all delivered\n";
}

}  // namespace
}  // namespace mesh::testing

// store/ on a real RocksDB in a temporary directory: layout, reads in order from a seq, dedup
// expiry, the group-commit writer under every sync policy, and reopening.
#include "store/store.h"

#include <gtest/gtest.h>
#include <sys/statvfs.h>

#include <filesystem>
#include <future>
#include <map>
#include <thread>

namespace mesh::store {
namespace {

std::string Recipient(char c) { return std::string(kIdSize, c); }

mesh::v1::StoredEnvelope Envelope(const std::string& to, const std::string& payload,
                                  uint64_t expire_at_ms = UINT64_MAX) {
  mesh::v1::StoredEnvelope envelope;
  envelope.set_version(kEnvelopeVersion);
  envelope.set_from(std::string(kIdSize, 'f'));
  envelope.set_to(to);
  envelope.set_id(std::string(kMessageIdSize, 'i'));
  envelope.set_payload(payload);
  envelope.set_expire_at_ms(expire_at_ms);
  return envelope;
}

class StoreTest : public ::testing::TestWithParam<SyncPolicy> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("mesh-store-test-" + std::to_string(getpid()) + "-" +
            std::to_string(reinterpret_cast<uintptr_t>(this)));
    Open();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Open() {
    StoreOptions options;
    options.path = dir_.string();
    options.sync = GetParam();
    auto store = Store::Open(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  absl::Status CommitAndWait(Batch batch,
                             Store::Durability durability = Store::Durability::kDurable) {
    std::promise<absl::Status> done;
    store_->Commit(std::move(batch), durability, [&](absl::Status s) { done.set_value(s); });
    return done.get_future().get();
  }

  std::filesystem::path dir_;
  std::unique_ptr<Store> store_;
};

TEST_P(StoreTest, ReadsAMailboxInSeqOrderFromAGivenSeq) {
  Batch batch;
  for (uint64_t seq : {5, 1, 3})
    batch.PutMessage(Recipient('a'), seq, Envelope(Recipient('a'), "m" + std::to_string(seq)));
  batch.PutMessage(Recipient('b'), 2, Envelope(Recipient('b'), "other mailbox"));
  ASSERT_TRUE(CommitAndWait(std::move(batch)).ok());

  auto all = store_->ReadMailbox(Recipient('a'), 0, 100, SIZE_MAX);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].seq, 1u);
  EXPECT_EQ((*all)[1].seq, 3u);
  EXPECT_EQ((*all)[2].envelope.payload(), "m5");
  auto from3 = store_->ReadMailbox(Recipient('a'), 3, 1, SIZE_MAX);
  ASSERT_TRUE(from3.ok());
  ASSERT_EQ(from3->size(), 1u);
  EXPECT_EQ((*from3)[0].seq, 3u);
  // A byte limit still returns one message.
  auto tiny = store_->ReadMailbox(Recipient('a'), 0, 100, 1);
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(tiny->size(), 1u);
}

TEST_P(StoreTest, DeletesAreAppliedInCommitOrder) {
  Batch put;
  put.PutMessage(Recipient('a'), 1, Envelope(Recipient('a'), "x"));
  Batch del;
  del.DeleteMessage(Recipient('a'), 1, MessageRef::Of(Envelope(Recipient('a'), "x")));
  // Queued back to back: the delete lands after the put, whatever the grouping.
  store_->Commit(std::move(put), Store::Durability::kDurable, [](absl::Status) {});
  ASSERT_TRUE(CommitAndWait(std::move(del), Store::Durability::kLazy).ok());
  auto read = store_->ReadMailbox(Recipient('a'), 0, 10, SIZE_MAX);
  ASSERT_TRUE(read.ok());
  EXPECT_TRUE(read->empty());
}

TEST_P(StoreTest, DedupEntriesExpire) {
  Batch batch;
  mesh::v1::DedupRecord live, stale;
  live.set_digest("d1");
  live.set_expire_at_ms(2000);
  stale.set_digest("d2");
  stale.set_expire_at_ms(500);
  batch.PutDedup(Recipient('f'), std::string(16, '1'), live);
  batch.PutDedup(Recipient('f'), std::string(16, '2'), stale);
  ASSERT_TRUE(CommitAndWait(std::move(batch)).ok());
  auto found = store_->GetDedup(Recipient('f'), std::string(16, '1'), 1000);
  ASSERT_TRUE(found.ok());
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->digest(), "d1");
  auto expired = store_->GetDedup(Recipient('f'), std::string(16, '2'), 1000);
  ASSERT_TRUE(expired.ok());
  EXPECT_FALSE(expired->has_value());
  auto absent = store_->GetDedup(Recipient('f'), std::string(16, '3'), 1000);
  ASSERT_TRUE(absent.ok());
  EXPECT_FALSE(absent->has_value());
}

TEST_P(StoreTest, ConcurrentCommitsAllCompleteAndSurviveReopen) {
  constexpr int kThreads = 4, kPerThread = 250;
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        Batch batch;
        batch.PutMessage(Recipient(static_cast<char>('a' + t)), i + 1,
                         Envelope(Recipient('a' + t), std::to_string(i)));
        store_->Commit(std::move(batch), Store::Durability::kDurable, [&](absl::Status s) {
          EXPECT_TRUE(s.ok());
          ++done;
        });
      }
    });
  }
  for (auto& thread : threads) thread.join();
  while (done < kThreads * kPerThread) std::this_thread::yield();
  // Group commit: fewer RocksDB writes than commits is the point, but never more.
  EXPECT_LE(store_->stats().writes.load(), store_->stats().commits.load());
  store_.reset();
  Open();
  int count = 0;
  std::string last_recipient;
  uint64_t last_seq = 0;
  ASSERT_TRUE(store_
                  ->ForEachMessage([&](std::string_view recipient, const StoredMessage& m) {
                    if (recipient == last_recipient) EXPECT_GT(m.seq, last_seq);
                    last_recipient = std::string(recipient);
                    last_seq = m.seq;
                    ++count;
                  })
                  .ok());
  EXPECT_EQ(count, kThreads * kPerThread);
}

// What Recover reads instead of the messages: counts per mailbox, per sender in a mailbox and
// per sender, changed by the batches that put and delete, exact across a reopen.
TEST_P(StoreTest, CountsFollowPutsAndDeletesWithoutReadingAMessage) {
  const std::string other_sender(kIdSize, 'g');
  auto from = [](mesh::v1::StoredEnvelope envelope, const std::string& sender) {
    envelope.set_from(sender);
    return envelope;
  };
  // Commits back to back land in one write group, their deltas added up there.
  for (uint64_t seq = 1; seq <= 4; ++seq) {
    Batch batch;
    batch.PutMessage(Recipient('a'), seq, Envelope(Recipient('a'), std::string(seq * 10, 'x')));
    store_->Commit(std::move(batch), Store::Durability::kDurable, [](absl::Status) {});
  }
  Batch more;
  more.PutMessage(Recipient('a'), 9, from(Envelope(Recipient('a'), "yy"), other_sender));
  more.PutMessage(Recipient('b'), 7, Envelope(Recipient('b'), "z"));
  ASSERT_TRUE(CommitAndWait(std::move(more)).ok());
  Batch del;
  del.DeleteMessage(Recipient('a'), 2,
                    MessageRef::Of(Envelope(Recipient('a'), std::string(20, 'x'))));
  ASSERT_TRUE(CommitAndWait(std::move(del), Store::Durability::kLazy).ok());

  store_.reset();
  Open();
  std::map<std::string, Counts> mailboxes, held, senders;
  Store::CountVisitors visit;
  visit.mailbox = [&](std::string_view r, const Counts& c) { mailboxes[std::string(r)] = c; };
  visit.held = [&](std::string_view r, std::string_view f, const Counts& c) {
    held[std::string(r) + std::string(f)] = c;
  };
  visit.sender = [&](std::string_view f, const Counts& c) { senders[std::string(f)] = c; };
  ASSERT_TRUE(store_->ForEachCount(visit).ok());
  const std::string sender(kIdSize, 'f');
  ASSERT_EQ(mailboxes.size(), 2u);
  EXPECT_EQ(mailboxes[Recipient('a')].messages, 4u);
  EXPECT_EQ(mailboxes[Recipient('a')].bytes,
            AccountedBytes(10) + AccountedBytes(30) + AccountedBytes(40) + AccountedBytes(2));
  EXPECT_EQ(mailboxes[Recipient('a')].last_seq, 9u);
  EXPECT_EQ(mailboxes[Recipient('b')].messages, 1u);
  EXPECT_EQ(held[Recipient('a') + sender].messages, 3u);
  EXPECT_EQ(held[Recipient('a') + other_sender].bytes, AccountedBytes(2));
  EXPECT_EQ(senders[sender].messages, 4u);
  EXPECT_EQ(senders[other_sender].messages, 1u);
  auto a = store_->MailboxCounts(Recipient('a'));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->messages, 4u);
  EXPECT_EQ(store_->stats().messages_read.load(), 0u);

  // Emptied: nothing left to visit.
  auto read = store_->ReadMailbox(Recipient('a'), 0, 100, SIZE_MAX);
  auto b = store_->ReadMailbox(Recipient('b'), 0, 100, SIZE_MAX);
  ASSERT_TRUE(read.ok() && b.ok());
  EXPECT_EQ(store_->stats().messages_read.load(), 5u);
  Batch empty;
  for (const auto& m : *read) {
    empty.DeleteMessage(Recipient('a'), m.seq, MessageRef::Of(m.envelope));
  }
  empty.DeleteMessage(Recipient('b'), 7, MessageRef::Of((*b)[0].envelope));
  ASSERT_TRUE(CommitAndWait(std::move(empty), Store::Durability::kLazy).ok());
  size_t visited = 0;
  Store::CountVisitors count_all;
  count_all.mailbox = [&](std::string_view, const Counts&) { ++visited; };
  count_all.held = [&](std::string_view, std::string_view, const Counts&) { ++visited; };
  count_all.sender = [&](std::string_view, const Counts&) { ++visited; };
  ASSERT_TRUE(store_->ForEachCount(count_all).ok());
  EXPECT_EQ(visited, 0u);
}

TEST_P(StoreTest, TheExpiryIndexYieldsWhatIsDueInExpiryOrderFromACursor) {
  Batch batch;
  batch.PutMessage(Recipient('b'), 1, Envelope(Recipient('b'), "late", 300));
  batch.PutMessage(Recipient('a'), 5, Envelope(Recipient('a'), "first", 100));
  batch.PutMessage(Recipient('a'), 6, Envelope(Recipient('a'), "deleted", 150));
  batch.PutMessage(Recipient('c'), 2, Envelope(Recipient('c'), "second", 200));
  batch.PutMessage(Recipient('a'), 7, Envelope(Recipient('a'), "never"));
  ASSERT_TRUE(CommitAndWait(std::move(batch)).ok());
  Batch del;
  del.DeleteMessage(Recipient('a'), 6, MessageRef::Of(Envelope(Recipient('a'), "deleted", 150)));
  ASSERT_TRUE(CommitAndWait(std::move(del), Store::Durability::kLazy).ok());

  Cursor cursor;
  auto first = store_->ReadExpired(250, cursor, 1);
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(first->size(), 1u);
  EXPECT_EQ((*first)[0].recipient, Recipient('a'));
  EXPECT_EQ((*first)[0].seq, 5u);
  EXPECT_EQ((*first)[0].expire_at_ms, 100u);
  EXPECT_EQ((*first)[0].from, std::string(kIdSize, 'f'));
  EXPECT_EQ((*first)[0].bytes, AccountedBytes(5));
  auto rest = store_->ReadExpired(250, cursor, 10);
  ASSERT_TRUE(rest.ok());
  ASSERT_EQ(rest->size(), 1u);
  EXPECT_EQ((*rest)[0].recipient, Recipient('c'));
  auto done = store_->ReadExpired(250, cursor, 10);
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(done->empty());
  EXPECT_EQ(store_->stats().messages_read.load(), 0u);
}

TEST_P(StoreTest, AMailboxHeadIsKeptUntilDeleted) {
  auto none = store_->MailboxHead(Recipient('a'));
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, 0u);
  Batch put;
  put.PutHead(Recipient('a'), 12345);
  ASSERT_TRUE(CommitAndWait(std::move(put), Store::Durability::kLazy).ok());
  store_.reset();
  Open();
  auto head = store_->MailboxHead(Recipient('a'));
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(*head, 12345u);
  Batch del;
  del.DeleteHead(Recipient('a'));
  ASSERT_TRUE(CommitAndWait(std::move(del), Store::Durability::kLazy).ok());
  auto gone = store_->MailboxHead(Recipient('a'));
  ASSERT_TRUE(gone.ok());
  EXPECT_EQ(*gone, 0u);
}

INSTANTIATE_TEST_SUITE_P(Policies, StoreTest,
                         ::testing::Values(SyncPolicy::kAlways, SyncPolicy::kBatch,
                                           SyncPolicy::kNone),
                         [](const auto& info) { return std::string(SyncPolicyName(info.param)); });

// The volume's high-water mark reads statfs: a mark above the free share of the temporary
// directory's volume makes the store full, one below it does not, and 0 turns it off.
TEST(StoreSpaceTest, FullWhenTheVolumeHasLessFreeThanTheMark) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("mesh-store-space-test-" + std::to_string(getpid()));
  struct statvfs volume {};
  ASSERT_EQ(statvfs(std::filesystem::temp_directory_path().c_str(), &volume), 0);
  const double free = static_cast<double>(volume.f_bavail) / static_cast<double>(volume.f_blocks);
  auto full_with_mark = [&](double mark) {
    StoreOptions options;
    options.path = dir.string();
    options.min_free_fraction = mark;
    auto store = Store::Open(options);
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return false;
    const bool full = (*store)->full();
    (*store)->CheckSpace();
    EXPECT_EQ((*store)->full(), full) << "a second look at the same volume changed the answer";
    return full;
  };
  EXPECT_TRUE(full_with_mark(std::min(1.0, free + 0.05)));
  if (free > 0.06) EXPECT_FALSE(full_with_mark(free - 0.05));
  EXPECT_FALSE(full_with_mark(0));
  std::filesystem::remove_all(dir);
}

TEST(SyncPolicyTest, ParsesTheThreeNamesAndRefusesOthers) {
  EXPECT_EQ(*ParseSyncPolicy("always"), SyncPolicy::kAlways);
  EXPECT_EQ(*ParseSyncPolicy("batch"), SyncPolicy::kBatch);
  EXPECT_EQ(*ParseSyncPolicy("none"), SyncPolicy::kNone);
  EXPECT_FALSE(ParseSyncPolicy("sometimes").ok());
}

}  // namespace
}  // namespace mesh::store

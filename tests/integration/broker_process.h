// Runs the real mesh-broker binary for a test: its own data dir, an ephemeral port read back
// from its "listening" log line, stderr captured to a file the test can search.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mesh::testing {

// What a finished (or killed) child process left: its exit code (-1 when killed or timed
// out) and its output.
struct ProcessResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `argv` (argv[0] a path) with its stdout and stderr captured; kills it after `timeout`.
ProcessResult RunProcess(const std::vector<std::string>& argv,
                         std::chrono::milliseconds timeout = std::chrono::seconds(15));

class BrokerProcess {
 public:
  // Starts mesh-broker with --data-dir, --listen-peer/-grpc/-http 127.0.0.1:0 plus `args`
  // (which may name other addresses), and waits
  // (15 s at most) until it listens. With an empty `data_dir` a fresh one is made and removed.
  explicit BrokerProcess(std::vector<std::string> args = {}, std::string data_dir = "");
  ~BrokerProcess();
  BrokerProcess(const BrokerProcess&) = delete;
  BrokerProcess& operator=(const BrokerProcess&) = delete;

  bool started() const { return port_ != 0; }
  // When the broker exited before it listened: its exit code.
  std::optional<int> early_exit_code() const { return early_exit_code_; }
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  const std::string& data_dir() const { return data_dir_; }
  pid_t pid() const { return pid_; }
  // The broker's resident memory now (VmRSS), in bytes; 0 once it has exited.
  uint64_t ResidentBytes() const;

  // Sends `signal` and waits (15 s at most, or `timeout`) for the exit; returns the exit code,
  // or -1 when it did not exit or died of a signal.
  int Stop(int signal, std::chrono::milliseconds timeout = std::chrono::seconds(15));
  std::string Log() const;
  // The port a listener ("cluster", "http", ...) logged; 0 when it did not.
  uint16_t ListenerPort(const std::string& listener) const;
  // Waits until the log holds a line containing every one of `needles`.
  bool WaitForLogLine(const std::vector<std::string>& needles,
                      std::chrono::milliseconds timeout = std::chrono::seconds(15)) const;
  // GET `path` from the control plane's REST listener with the admin token of the data dir;
  // the response body, or an empty string when the request failed.
  std::string ApiGet(const std::string& path) const { return ApiRequest("GET", path); }
  // Any method, with a JSON body; gives up after 15 s without an answer (returns "").
  std::string ApiRequest(const std::string& method, const std::string& path,
                         const std::string& body = "") const;
  // After Stop(): the link_failures count logged for `reason` (0 when none was logged).
  uint64_t FailureCount(const std::string& reason) const;
  // The value of one unlabelled series of /metrics (`mesh_frame_memory_bytes`); -1 if absent.
  double Metric(const std::string& series) const;

 private:
  std::string dir_;  // the test's scratch dir
  std::string data_dir_;
  std::string log_path_;
  bool owns_data_dir_ = false;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  std::optional<int> early_exit_code_;
};

}  // namespace mesh::testing

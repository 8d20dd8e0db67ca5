#include "tests/integration/broker_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

namespace mesh::testing {
namespace {

constexpr auto kDeadline = std::chrono::seconds(15);
constexpr auto kPoll = std::chrono::milliseconds(10);

}  // namespace

ProcessResult RunProcess(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  ProcessResult result;
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0) return result;
  if (pipe2(err, O_CLOEXEC) != 0) {
    close(out[0]), close(out[1]);
    return result;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    int null = open("/dev/null", O_RDONLY);
    dup2(null, STDIN_FILENO);
    std::vector<char*> raw;
    for (const auto& a : argv) raw.push_back(const_cast<char*>(a.c_str()));
    raw.push_back(nullptr);
    execv(raw[0], raw.data());
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  // Reads both pipes until the child closes them, or kills it at the deadline.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_pipes = 2;
  bool killed = false;
  while (open_pipes > 0 && pid > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      kill(pid, SIGKILL);
      killed = true;
      break;
    }
    if (poll(fds, 2, static_cast<int>(left.count())) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      char buffer[4096];
      const ssize_t n = read(fds[i].fd, buffer, sizeof buffer);
      if (n > 0) {
        sinks[i]->append(buffer, static_cast<size_t>(n));
      } else {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_pipes;
      }
    }
  }
  for (const auto& fd : fds) {
    if (fd.fd >= 0) close(fd.fd);
  }
  int status = 0;
  if (pid > 0 && waitpid(pid, &status, 0) == pid && !killed && WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  }
  return result;
}

BrokerProcess::BrokerProcess(std::vector<std::string> args, std::string data_dir) {
  char tmpl[] = "/tmp/mesh-test-XXXXXX";
  dir_ = mkdtemp(tmpl);
  owns_data_dir_ = data_dir.empty();
  data_dir_ = owns_data_dir_ ? dir_ + "/data" : data_dir;
  log_path_ = dir_ + "/broker.log";

  std::vector<std::string> argv = {std::string(MESH_BINARY_DIR) + "/broker/mesh-broker",
                                   "--data-dir", data_dir_, "--log-level", "debug"};
  // An ephemeral port unless the test names one (to come back on the same port after a crash).
  if (std::find(args.begin(), args.end(), "--listen-peer") == args.end()) {
    argv.insert(argv.end(), {"--listen-peer", "127.0.0.1:0"});
  }
  for (const char* listener : {"--listen-grpc", "--listen-http", "--listen-ws"}) {
    if (std::find(args.begin(), args.end(), listener) == args.end()) {
      argv.insert(argv.end(), {listener, "127.0.0.1:0"});
    }
  }
  argv.insert(argv.end(), args.begin(), args.end());
  pid_ = fork();
  if (pid_ == 0) {
    // The broker dies with the test, and never holds the test runner's output pipe open.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    FILE* log = std::fopen(log_path_.c_str(), "w");
    dup2(fileno(log), STDERR_FILENO);
    int null = open("/dev/null", O_RDWR);
    dup2(null, STDOUT_FILENO);
    dup2(null, STDIN_FILENO);
    std::vector<char*> raw;
    for (auto& a : argv) raw.push_back(a.data());
    raw.push_back(nullptr);
    execv(raw[0], raw.data());
    _exit(127);
  }
  const std::regex port_re(R"("event":"listening","listener":"peer".*"port":(\d+))");
  const auto deadline = std::chrono::steady_clock::now() + kDeadline;
  while (std::chrono::steady_clock::now() < deadline) {
    std::smatch m;
    std::string log = Log();
    if (std::regex_search(log, m, port_re)) {
      port_ = static_cast<uint16_t>(std::stoi(m[1]));
      return;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      early_exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      return;
    }
    std::this_thread::sleep_for(kPoll);
  }
}

uint16_t BrokerProcess::ListenerPort(const std::string& listener) const {
  const std::regex re("\"event\":\"listening\",\"listener\":\"" + listener +
                      "\".*?\"port\":(\\d+)");
  std::smatch m;
  const std::string log = Log();
  return std::regex_search(log, m, re) ? static_cast<uint16_t>(std::stoi(m[1])) : 0;
}

BrokerProcess::~BrokerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  std::error_code ec;
  if (owns_data_dir_)
    std::filesystem::remove_all(dir_, ec);
  else
    std::filesystem::remove(log_path_, ec), std::filesystem::remove(dir_, ec);
}

int BrokerProcess::Stop(int signal, std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  kill(pid_, signal);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(kPoll);
  }
  return -1;
}

std::string BrokerProcess::Log() const {
  std::ifstream in(log_path_);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

bool BrokerProcess::WaitForLogLine(const std::vector<std::string>& needles,
                                   std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    std::istringstream lines(Log());
    for (std::string line; std::getline(lines, line);) {
      bool all = true;
      for (const auto& needle : needles) all = all && line.find(needle) != std::string::npos;
      if (all) return true;
    }
    std::this_thread::sleep_for(kPoll);
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

std::string BrokerProcess::ApiRequest(const std::string& method, const std::string& path,
                                      const std::string& body) const {
  std::ifstream token_file(data_dir_ + "/admin.token");
  std::string token;
  std::getline(token_file, token);
  const uint16_t port = ListenerPort("http");
  if (token.empty() || port == 0) return "";
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  const timeval timeout{std::chrono::seconds(kDeadline).count(), 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0) {
    const std::string request =
        method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "Authorization: Bearer " +
        token +
        "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
        "\r\nConnection: close\r\n\r\n" + body;
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      for (ssize_t n; (n = read(fd, buffer, sizeof buffer)) > 0;) response.append(buffer, n);
    }
  }
  close(fd);
  const auto end_of_headers = response.find("\r\n\r\n");
  return end_of_headers == std::string::npos ? "" : response.substr(end_of_headers + 4);
}

uint64_t BrokerProcess::FailureCount(const std::string& reason) const {
  const std::regex re("\"event\":\"link_failures\",\"reason\":\"" + reason + "\",\"count\":(\\d+)");
  std::smatch m;
  std::string log = Log();
  return std::regex_search(log, m, re) ? std::stoull(m[1]) : 0;
}

double BrokerProcess::Metric(const std::string& series) const {
  std::istringstream metrics(ApiGet("/metrics"));
  for (std::string line; std::getline(metrics, line);) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return -1;
}

uint64_t BrokerProcess::ResidentBytes() const {
  std::ifstream status("/proc/" + std::to_string(pid_) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;  // in kB
  }
  return 0;
}

}  // namespace mesh::testing

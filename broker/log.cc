#include "broker/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <cstdio>

namespace mesh::broker {
namespace {

// RFC 8259 string escaping.
void AppendJsonString(std::string& out, std::string_view text) {
  out.push_back('"');
  for (unsigned char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
}

}  // namespace

void InitLogging(std::string_view level) {
  auto logger = spdlog::stderr_logger_mt("mesh");
  logger->set_formatter(std::make_unique<spdlog::pattern_formatter>(
      R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l",%v})", spdlog::pattern_time_type::utc));
  logger->set_level(spdlog::level::from_str(std::string(level)));
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

void Log(spdlog::level::level_enum level, std::string_view event,
         std::initializer_list<LogField> fields) {
  if (!spdlog::should_log(level)) return;
  std::string line = "\"event\":";
  AppendJsonString(line, event);
  for (const LogField& field : fields) {
    line.push_back(',');
    AppendJsonString(line, field.key);
    line.push_back(':');
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::string_view> || std::is_same_v<T, std::string>) {
            AppendJsonString(line, v);
          } else if constexpr (std::is_same_v<T, bool>) {
            line += v ? "true" : "false";
          } else {
            line += std::to_string(v);
          }
        },
        field.value);
  }
  spdlog::log(level, "{}", line);
}

}  // namespace mesh::broker

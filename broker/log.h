// Logs: one JSON object per line on stderr, written through spdlog.
#pragma once

#include <spdlog/spdlog.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <variant>

namespace mesh::broker {

struct LogField {
  using Value = std::variant<std::string_view, std::string, int64_t, uint64_t, double, bool>;
  std::string_view key;
  Value value;
  LogField(std::string_view k, std::string_view v) : key(k), value(v) {}
  LogField(std::string_view k, const std::string& v) : key(k), value(std::string_view(v)) {}
  LogField(std::string_view k, const char* v) : key(k), value(std::string_view(v)) {}
  LogField(std::string_view k, bool v) : key(k), value(v) {}
  LogField(std::string_view k, double v) : key(k), value(v) {}
  template <typename T>
  requires std::is_integral_v<T> LogField(std::string_view k, T v)
      : key(k), value(std::is_signed_v<T> ? Value(int64_t(v)) : Value(uint64_t(v))) {}
};

// Sets the level ("debug", "info", "warn", "error") and the JSON line pattern.
void InitLogging(std::string_view level);
// {"ts":...,"level":...,"event":event, fields...}
void Log(spdlog::level::level_enum level, std::string_view event,
         std::initializer_list<LogField> fields = {});

}  // namespace mesh::broker

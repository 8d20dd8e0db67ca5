# Every dependency comes from Debian 12's packages (scripts/deps.sh installs them).

find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(sodium REQUIRED IMPORTED_TARGET libsodium)
find_package(Protobuf REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(Boost 1.74 REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
if(MESH_BUILD_TESTING)
  find_package(GTest CONFIG REQUIRED)
  find_package(benchmark CONFIG REQUIRED)
endif()
find_package(RocksDB CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(prometheus-cpp CONFIG REQUIRED)
find_package(OpenSSL REQUIRED)

# jemalloc for the binaries (not the libraries, not sanitizer builds, which bring their own
# allocator): the data path allocates many small protobuf strings on one thread and frees them
# on another, where glibc's malloc measured 30% slower (docs/BENCHMARKS.md).
find_library(MESH_JEMALLOC NAMES jemalloc)
function(mesh_use_fast_malloc target)
  if(MESH_JEMALLOC AND NOT MESH_SANITIZE)
    target_link_libraries(${target} PRIVATE ${MESH_JEMALLOC})
  endif()
endfunction()

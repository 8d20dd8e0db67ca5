# Compiler flags shared by every target: warnings as errors, sanitizers, Boost.Asio fixes.

add_compile_options(-Wall -Wextra -Werror -Wno-unused-parameter)

# Boost 1.74's asio/awaitable.hpp forgets <utility> (std::exchange) and clang 14 needs the
# coroutine support flag spelled out; both must precede every Boost.Asio include.
add_compile_options(-include utility)
add_compile_definitions(BOOST_ASIO_HAS_CO_AWAIT=1 BOOST_ASIO_NO_DEPRECATED)

# clang 14's -fsanitize=function (part of "undefined") emits prologue data that its assembler
# cannot place for split coroutine functions ("Cannot represent a difference across sections");
# every other UBSan check stays on.
set(MESH_UBSAN -fsanitize=undefined -fno-sanitize-recover=undefined)
if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  list(APPEND MESH_UBSAN -fno-sanitize=function)
endif()

if(MESH_SANITIZE STREQUAL "address")
  add_compile_options(-fsanitize=address ${MESH_UBSAN} -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
elseif(MESH_SANITIZE STREQUAL "thread")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
elseif(NOT MESH_SANITIZE STREQUAL "")
  message(FATAL_ERROR "MESH_SANITIZE must be empty, 'address' or 'thread', not '${MESH_SANITIZE}'")
endif()

if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND MESH_SANITIZE)
  add_compile_options(-Wno-maybe-uninitialized -Wno-tsan)
endif()

find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
endif()

set(MESH_CAN_FUZZ OFF)
if(MESH_FUZZ AND CMAKE_CXX_COMPILER_ID STREQUAL "Clang" AND NOT MESH_SANITIZE STREQUAL "thread")
  set(MESH_CAN_FUZZ ON)
endif()

# mesh_protobuf_library(NAME ROOT DIR PROTOS a.proto ...): generates C++ once for .proto files
# (import paths relative to ROOT) and wraps it in a library whose headers are SYSTEM includes:
# generated code is not ours to warn about.
function(mesh_protobuf_library name)
  cmake_parse_arguments(ARG "" "ROOT" "PROTOS" ${ARGN})
  set(gen_dir ${CMAKE_BINARY_DIR}/gen)
  set(srcs)
  foreach(proto ${ARG_PROTOS})
    get_filename_component(abs ${proto} ABSOLUTE)
    file(RELATIVE_PATH rel ${ARG_ROOT} ${abs})
    string(REGEX REPLACE "\\.proto$" "" stem ${rel})
    list(APPEND srcs ${gen_dir}/${stem}.pb.cc)
    add_custom_command(
      OUTPUT ${gen_dir}/${stem}.pb.cc ${gen_dir}/${stem}.pb.h
      COMMAND ${CMAKE_COMMAND} -E make_directory ${gen_dir}
      COMMAND protobuf::protoc --cpp_out=${gen_dir} -I ${ARG_ROOT} ${abs}
      DEPENDS ${abs} protobuf::protoc
      COMMENT "protoc ${rel}")
  endforeach()
  add_library(${name} STATIC ${srcs})
  target_include_directories(${name} SYSTEM PUBLIC ${gen_dir})
  target_link_libraries(${name} PUBLIC protobuf::libprotobuf)
  target_compile_options(${name} PRIVATE -w)
endfunction()

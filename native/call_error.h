// The Error every addon throws when a library or system call fails: the
// call, what it was called for, and errno, as "call(what): message (ENAME)",
// with `code`, `errno` and `syscall` set as on Node's own errors.
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace xenmesh {

inline Napi::Error CallError(Napi::Env env, const std::string& call, const std::string& what, int err) {
  const char* name = strerrorname_np(err);
  std::string message = call + "(" + what + "): " + std::strerror(err) + " (" + (name ? name : "EIO") + ")";
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, name ? name : "EIO"));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", Napi::String::New(env, call));
  return error;
}

}  // namespace xenmesh

// System calls Node does not offer. For the block backend's I/O workers:
// punching holes in image files (fallocate), discarding on block devices
// (BLKDISCARD, BLKSECDISCARD), and asking a block device its size and
// sector sizes (BLKGETSIZE64, BLKSSZGET, BLKPBSZGET); each is synchronous
// and runs on an I/O worker, where blocking is the point. For the backend
// and the service: locking an image as QEMU does (open file description
// locks, which never wait), and telling systemd of readiness (sd_notify(3)
// is one datagram on a Unix socket, which Node cannot send).
#include <napi.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace {

// An Error carrying the errno name in `code`, as Node's own fs errors do.
Napi::Error ErrnoError(Napi::Env env, int err, const char* what) {
  Napi::Error error = Napi::Error::New(env, std::string(what) + ": " + std::strerror(err));
  const char* name = nullptr;
  switch (err) {
    case EBADF: name = "EBADF"; break;
    case EINVAL: name = "EINVAL"; break;
    case EIO: name = "EIO"; break;
    case ENOSPC: name = "ENOSPC"; break;
    case ENODEV: name = "ENODEV"; break;
    case ENOTTY: name = "ENOTTY"; break;
    case EOPNOTSUPP: name = "EOPNOTSUPP"; break;
    case EPERM: name = "EPERM"; break;
    case EACCES: name = "EACCES"; break;
    case EROFS: name = "EROFS"; break;
    case EINTR: name = "EINTR"; break;
    case EAGAIN: name = "EAGAIN"; break;
    case EBUSY: name = "EBUSY"; break;
    case ENOMEM: name = "ENOMEM"; break;
    case ENOENT: name = "ENOENT"; break;
    case ECONNREFUSED: name = "ECONNREFUSED"; break;
    case ENAMETOOLONG: name = "ENAMETOOLONG"; break;
    default: name = "EIO"; break;
  }
  error.Set("code", Napi::String::New(env, name));
  error.Set("errno", Napi::Number::New(env, err));
  return error;
}

int64_t Int64Arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  }
  return info[i].As<Napi::Number>().Int64Value();
}

// punchHole(fd, offset, length): deallocates a range of a file, which
// then reads as zeros; the file keeps its size.
Napi::Value PunchHole(const Napi::CallbackInfo& info) {
  const int fd = static_cast<int>(Int64Arg(info, 0, "fd"));
  const off_t offset = Int64Arg(info, 1, "offset");
  const off_t length = Int64Arg(info, 2, "length");
  if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0) {
    throw ErrnoError(info.Env(), errno, "fallocate");
  }
  return info.Env().Undefined();
}

// discardBlocks(fd, offset, length, secure): BLKDISCARD (or BLKSECDISCARD)
// on a block device.
Napi::Value DiscardBlocks(const Napi::CallbackInfo& info) {
  const int fd = static_cast<int>(Int64Arg(info, 0, "fd"));
  uint64_t range[2] = {static_cast<uint64_t>(Int64Arg(info, 1, "offset")), static_cast<uint64_t>(Int64Arg(info, 2, "length"))};
  const bool secure = info.Length() > 3 && info[3].ToBoolean().Value();
  if (ioctl(fd, secure ? BLKSECDISCARD : BLKDISCARD, range) != 0) {
    throw ErrnoError(info.Env(), errno, secure ? "BLKSECDISCARD" : "BLKDISCARD");
  }
  return info.Env().Undefined();
}

// blockDeviceInfo(fd): { size, logicalSectorSize, physicalSectorSize } of a
// block device, from the kernel.
Napi::Value BlockDeviceInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = static_cast<int>(Int64Arg(info, 0, "fd"));
  uint64_t size = 0;
  int logical = 0;
  unsigned int physical = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) != 0) throw ErrnoError(env, errno, "BLKGETSIZE64");
  if (ioctl(fd, BLKSSZGET, &logical) != 0) throw ErrnoError(env, errno, "BLKSSZGET");
  if (ioctl(fd, BLKPBSZGET, &physical) != 0) throw ErrnoError(env, errno, "BLKPBSZGET");
  Napi::Object out = Napi::Object::New(env);
  out.Set("size", Napi::Number::New(env, static_cast<double>(size)));
  out.Set("logicalSectorSize", Napi::Number::New(env, logical));
  out.Set("physicalSectorSize", Napi::Number::New(env, physical));
  return out;
}

// addressOf(view): where a typed array's bytes are in memory, so that a
// caller can align what it lays out in a buffer to pages (O_DIRECT wants
// its buffers aligned to the device's logical block).
Napi::Value AddressOf(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsTypedArray()) {
    throw Napi::TypeError::New(info.Env(), "addressOf takes a typed array");
  }
  Napi::TypedArray view = info[0].As<Napi::TypedArray>();
  void* data = nullptr;
  size_t length = 0;
  napi_typedarray_type type;
  napi_value buffer;
  size_t offset = 0;
  if (napi_get_typedarray_info(info.Env(), view, &type, &length, &data, &buffer, &offset) != napi_ok) {
    throw Napi::Error::New(info.Env(), "cannot read the typed array");
  }
  return Napi::Number::New(info.Env(), static_cast<double>(reinterpret_cast<uintptr_t>(data)));
}

// lockFile(fd, exclusive): takes an open file description lock on the
// whole file (F_OFD_SETLK), a write lock if exclusive, else a read lock, as
// QEMU locks its images; true if taken, false if another open file
// description holds a conflicting lock. It never waits. The lock goes with
// the last descriptor of the open file description, so closing the image
// releases it, and a process that dies releases it with its descriptors.
// A write lock needs the file open for writing, a read lock for reading.
Napi::Value LockFile(const Napi::CallbackInfo& info) {
  const int fd = static_cast<int>(Int64Arg(info, 0, "fd"));
  const bool exclusive = info.Length() > 1 && info[1].ToBoolean().Value();
  struct flock lock;
  std::memset(&lock, 0, sizeof lock);
  lock.l_type = exclusive ? F_WRLCK : F_RDLCK;
  lock.l_whence = SEEK_SET;
  lock.l_start = 0;
  lock.l_len = 0;  // to the end of the file, however long it grows
  if (fcntl(fd, F_OFD_SETLK, &lock) == 0) return Napi::Boolean::New(info.Env(), true);
  if (errno == EAGAIN || errno == EACCES) return Napi::Boolean::New(info.Env(), false);
  throw ErrnoError(info.Env(), errno, "fcntl(F_OFD_SETLK)");
}

// sdNotify(socketPath, message): sends one datagram to systemd's notify
// socket, as sd_notify(3) does; a path starting with '@' is in the
// abstract namespace.
Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    throw Napi::TypeError::New(env, "sdNotify takes a socket path and a message");
  }
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  const std::string message = info[1].As<Napi::String>().Utf8Value();
  struct sockaddr_un address;
  std::memset(&address, 0, sizeof address);
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof address.sun_path) throw ErrnoError(env, ENAMETOOLONG, "NOTIFY_SOCKET");
  std::memcpy(address.sun_path, path.data(), path.size());
  if (path[0] == '@') address.sun_path[0] = '\0';
  const socklen_t length = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + path.size());
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw ErrnoError(env, errno, "socket");
  const ssize_t sent = sendto(fd, message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<struct sockaddr*>(&address), length);
  const int err = errno;
  close(fd);
  if (sent < 0) throw ErrnoError(env, err, "sendto(NOTIFY_SOCKET)");
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("addressOf", Napi::Function::New(env, AddressOf));
  exports.Set("punchHole", Napi::Function::New(env, PunchHole));
  exports.Set("discardBlocks", Napi::Function::New(env, DiscardBlocks));
  exports.Set("blockDeviceInfo", Napi::Function::New(env, BlockDeviceInfo));
  exports.Set("lockFile", Napi::Function::New(env, LockFile));
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify));
  return exports;
}

}  // namespace

NODE_API_MODULE(xenmesh_native, Init)

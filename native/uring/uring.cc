// io_uring for the block backend (liburing): the worker that owns a ring
// queues its disk reads, writes, flushes and discards, hands them to the
// kernel in one io_uring_enter, and learns of their completion on its own
// event loop, never blocking.
//
// A ring belongs to the worker (Node environment) that opened it. The kernel
// writes into and reads from the callers' buffers until each operation
// completes, so every operation holds a reference to the buffers its iovecs
// point into until its CQE is reaped; a ring that is closed, or whose
// worker exits, first waits (bounded) for what is still in flight.
// Completions are signalled on an eventfd (io_uring_register_eventfd)
// watched with uv_poll on the worker's loop; the poll keeps the loop alive
// only while operations are in flight, so that an idle worker can exit.
#include <napi.h>
#include <uv.h>

#include "../call_error.h"

#include <liburing.h>

#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

using xenmesh::CallError;

// IOV_MAX (limits.h; the kernel's UIO_MAXIOV): the most iovecs one readv or
// writev takes; the kernel fails more with EINVAL.
constexpr uint32_t kMaxViews = IOV_MAX;
// IORING_MAX_ENTRIES (io_uring/io_uring.c, io_uring_setup(2)): the largest
// submission queue io_uring_setup accepts.
constexpr uint32_t kMaxEntries = 32768;
// Tags travel through JavaScript as small integers (Smis).
constexpr double kMaxTag = 2147483647.0;
// Number.MAX_SAFE_INTEGER: the largest offset a JavaScript number carries exactly.
constexpr double kMaxOffset = 9007199254740991.0;
// How long closing a ring waits for operations still in flight. Disk I/O
// cannot be cancelled once the kernel has started it; a device that has not
// answered in this long is failing (the SCSI layer's own command timeout is
// 30 s, spread over retries), and a worker that is going away should not
// hang on it for ever.
constexpr int64_t kCloseWaitMs = 10000;

// The operations the block backend issues; a kernel without one of them
// (before Linux 5.6) cannot serve it.
struct Opcode {
  uint8_t op;
  const char* name;
};
constexpr Opcode kNeededOpcodes[] = {
    {IORING_OP_READV, "IORING_OP_READV"},
    {IORING_OP_WRITEV, "IORING_OP_WRITEV"},
    {IORING_OP_FSYNC, "IORING_OP_FSYNC"},
    {IORING_OP_FALLOCATE, "IORING_OP_FALLOCATE"},
};

double IntegerArg(const Napi::CallbackInfo& info, size_t i, const char* name, double max) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  const double value = info[i].As<Napi::Number>().DoubleValue();
  if (!(value >= 0 && value <= max) || value != static_cast<double>(static_cast<int64_t>(value))) {
    throw Napi::RangeError::New(info.Env(), std::string(name) + " must be an integer in 0.." + std::to_string(static_cast<int64_t>(max)));
  }
  return value;
}

class Ring;

// The uv_poll on a ring's eventfd. It is freed in uv_close's callback, never
// before; a worker that exits closes it through an asynchronous cleanup
// hook, so that its loop closes with no handle left open.
struct EventfdWatch {
  uv_poll_t poll;
  // The ring it reports to, cleared when the ring stops watching.
  Ring* ring = nullptr;
  napi_async_cleanup_hook_handle cleanup = nullptr;
  bool closing = false;
};

void WatchClosed(uv_handle_t* handle) {
  auto* watch = static_cast<EventfdWatch*>(handle->data);
  if (watch->cleanup) napi_remove_async_cleanup_hook(watch->cleanup);
  delete watch;
}

void CloseWatch(EventfdWatch* watch) {
  if (!watch || watch->closing) return;
  watch->closing = true;
  watch->ring = nullptr;
  uv_poll_stop(&watch->poll);
  uv_close(reinterpret_cast<uv_handle_t*>(&watch->poll), WatchClosed);
}

void WatchCleanup(napi_async_cleanup_hook_handle, void* arg) { CloseWatch(static_cast<EventfdWatch*>(arg)); }

void OnEventfd(uv_poll_t* handle, int status, int events);

// One operation the kernel has: the caller's tag, the iovecs the SQE points
// at, and the buffers they point into, held until the CQE is reaped.
struct Operation {
  uint32_t tag = 0;
  bool busy = false;
  std::vector<iovec> iovecs;
  std::vector<Napi::Reference<Napi::Value>> buffers;

  void Release() {
    busy = false;
    iovecs.clear();
    buffers.clear();
  }
};

class Ring : public Napi::ObjectWrap<Ring> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Ring",
                       {InstanceAccessor("sqEntries", &Ring::SqEntries, nullptr),
                        InstanceAccessor("cqEntries", &Ring::CqEntries, nullptr),
                        InstanceMethod("readv", &Ring::Readv),
                        InstanceMethod("writev", &Ring::Writev),
                        InstanceMethod("fdatasync", &Ring::Fdatasync),
                        InstanceMethod("fallocate", &Ring::Fallocate),
                        InstanceMethod("submit", &Ring::Submit),
                        InstanceMethod("close", &Ring::Close)});
  }

  // new Ring(entries, onCompletions: (tags: number[], results: number[]) => void)
  explicit Ring(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Ring>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    const uint32_t entries = static_cast<uint32_t>(IntegerArg(info, 0, "entries", kMaxEntries));
    if (entries == 0) throw Napi::RangeError::New(env, "entries must be at least 1");
    if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "onCompletions must be a function");

    const int rc = io_uring_queue_init(entries, &ring_, 0);
    if (rc < 0) throw CallError(env, "io_uring_queue_init", std::to_string(entries) + " entries", -rc);
    try {
      CheckOpcodes(env);
      eventfd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (eventfd_ < 0) throw CallError(env, "eventfd", "completions", errno);
      const int reg = io_uring_register_eventfd(&ring_, eventfd_);
      if (reg < 0) throw CallError(env, "io_uring_register_eventfd", "fd " + std::to_string(eventfd_), -reg);
      StartWatch(env);
    } catch (...) {
      if (eventfd_ >= 0) ::close(eventfd_);
      eventfd_ = -1;
      io_uring_queue_exit(&ring_);
      throw;
    }
    sqEntries_ = ring_.sq.ring_entries;
    cqEntries_ = ring_.cq.ring_entries;
    open_ = true;
    listener_ = Napi::Persistent(info[1].As<Napi::Function>());
    context_ = std::make_unique<Napi::AsyncContext>(env, "xenmesh:uring");
    napi_add_env_cleanup_hook(env, EnvCleanup, this);
    cleanupHooked_ = true;
  }

  ~Ring() override {
    if (cleanupHooked_) napi_remove_env_cleanup_hook(env_, EnvCleanup, this);
    Shut();
  }

  // Called by the eventfd's poll: every CQE there is, reported in one batch.
  void Reap() {
    if (!open_) return;
    uint64_t count;
    // Only resets the counter; the CQ itself says what finished.
    while (::read(eventfd_, &count, sizeof count) < 0 && errno == EINTR) {
    }
    std::vector<uint32_t> tags;
    std::vector<int32_t> results;
    Drain(&tags, &results);
    if (tags.empty()) return;
    // The ring stays pinned while the listener runs (it may close the ring
    // and drop the last reference to it); whether it still needs to be is
    // decided after.
    reaping_ = true;
    Report(tags, results);
    reaping_ = false;
    UnpinIfIdle();
  }

 private:
  // Calls the listener with one batch. A worker that is exiting runs its
  // loop once more with JavaScript disallowed, to close its handles: what
  // completes then has nobody to tell.
  void Report(const std::vector<uint32_t>& tags, const std::vector<int32_t>& results) {
    Napi::Array tagList;
    Napi::Array resultList;
    try {
      Napi::HandleScope scope(env_);
      tagList = Napi::Array::New(env_, tags.size());
      resultList = Napi::Array::New(env_, results.size());
      for (uint32_t i = 0; i < tags.size(); i++) {
        tagList.Set(i, Napi::Number::New(env_, tags[i]));
        resultList.Set(i, Napi::Number::New(env_, results[i]));
      }
      try {
        listener_.MakeCallback(env_.Global(), {tagList, resultList}, *context_);
      } catch (const Napi::Error& err) {
        napi_fatal_exception(env_, err.Value());
      }
    } catch (const Napi::Error&) {
      // JavaScript cannot run: the worker is exiting.
    }
  }

  static void EnvCleanup(void* arg) {
    auto* ring = static_cast<Ring*>(arg);
    ring->cleanupHooked_ = false;
    ring->Shut();
  }

  void CheckOpcodes(Napi::Env env) {
    io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
    if (!probe) {
      Napi::Error error = Napi::Error::New(env, "io_uring_get_probe_ring: the kernel cannot say which operations it has (IORING_REGISTER_PROBE needs Linux 5.6)");
      error.Set("code", Napi::String::New(env, "EOPNOTSUPP"));
      throw error;
    }
    std::string missing;
    for (const auto& opcode : kNeededOpcodes) {
      if (!io_uring_opcode_supported(probe, opcode.op)) missing += std::string(missing.empty() ? "" : ", ") + opcode.name;
    }
    io_uring_free_probe(probe);
    if (!missing.empty()) {
      Napi::Error error = Napi::Error::New(env, "io_uring_get_probe_ring: the kernel lacks " + missing);
      error.Set("code", Napi::String::New(env, "EOPNOTSUPP"));
      throw error;
    }
  }

  void StartWatch(Napi::Env env) {
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) throw Napi::Error::New(env, "napi_get_uv_event_loop: no event loop");
    auto* watch = new EventfdWatch();
    watch->poll.data = watch;
    int rc = uv_poll_init(loop, &watch->poll, eventfd_);
    if (rc != 0) {
      delete watch;
      throw Napi::Error::New(env, std::string("uv_poll_init(io_uring eventfd): ") + uv_strerror(rc));
    }
    rc = uv_poll_start(&watch->poll, UV_READABLE, OnEventfd);
    if (rc == 0 && napi_add_async_cleanup_hook(env, WatchCleanup, watch, &watch->cleanup) != napi_ok) rc = UV_ENOMEM;
    if (rc != 0) {
      CloseWatch(watch);
      throw Napi::Error::New(env, std::string("uv_poll_start(io_uring eventfd): ") + uv_strerror(rc));
    }
    // Nothing is in flight yet: an idle ring does not keep its worker alive.
    uv_unref(reinterpret_cast<uv_handle_t*>(&watch->poll));
    watch->ring = this;
    watch_ = watch;
  }

  io_uring& Open(Napi::Env env) {
    if (!open_) {
      Napi::Error error = Napi::Error::New(env, "the io_uring is closed");
      error.Set("code", Napi::String::New(env, "ERR_URING_CLOSED"));
      throw error;
    }
    return ring_;
  }

  Napi::Value SqEntries(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), sqEntries_); }
  Napi::Value CqEntries(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), cqEntries_); }

  // A free operation slot; its index is the SQE's user_data.
  uint32_t TakeSlot() {
    if (!freeSlots_.empty()) {
      const uint32_t slot = freeSlots_.back();
      freeSlots_.pop_back();
      return slot;
    }
    operations_.emplace_back();
    return static_cast<uint32_t>(operations_.size() - 1);
  }

  // Fills the operation's iovecs from views (Uint8Arrays) and references
  // the buffers they are views of.
  static void TakeViews(Napi::Env env, Napi::Value list, Operation& op) {
    if (!list.IsArray()) throw Napi::TypeError::New(env, "views must be an array of Uint8Arrays");
    Napi::Array views = list.As<Napi::Array>();
    const uint32_t count = views.Length();
    if (count == 0) throw Napi::RangeError::New(env, "views must not be empty");
    if (count > kMaxViews) throw Napi::RangeError::New(env, "views holds " + std::to_string(count) + " views, more than IOV_MAX (" + std::to_string(kMaxViews) + ")");
    op.iovecs.resize(count);
    napi_value previous = nullptr;
    for (uint32_t i = 0; i < count; i++) {
      Napi::Value view = views.Get(i);
      napi_typedarray_type type;
      size_t length = 0;
      void* data = nullptr;
      napi_value buffer = nullptr;
      size_t byteOffset = 0;
      if (!view.IsTypedArray() ||
          napi_get_typedarray_info(env, view, &type, &length, &data, &buffer, &byteOffset) != napi_ok ||
          type != napi_uint8_array) {
        throw Napi::TypeError::New(env, "views[" + std::to_string(i) + "] must be a Uint8Array");
      }
      // A view of a detached buffer has no bytes: it reads or writes nothing.
      op.iovecs[i].iov_base = length > 0 ? data : nullptr;
      op.iovecs[i].iov_len = length;
      bool same = false;
      if (previous) napi_strict_equals(env, previous, buffer, &same);
      if (!same) op.buffers.push_back(Napi::Persistent(Napi::Value(env, buffer)));
      previous = buffer;
    }
  }

  // An SQE for a new operation; the caller fills it in.
  io_uring_sqe* NextSqe(Napi::Env env, io_uring& ring) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (!sqe) throw Napi::RangeError::New(env, "the submission queue is full: submit() first");
    return sqe;
  }

  void Queued(io_uring_sqe* sqe, uint32_t slot, uint32_t tag) {
    Operation& op = operations_[slot];
    op.tag = tag;
    op.busy = true;
    io_uring_sqe_set_data64(sqe, slot);
    if (inFlight_++ == 0) {
      uv_ref(reinterpret_cast<uv_handle_t*>(&watch_->poll));
      if (!pinned_) {
        Ref();
        pinned_ = true;
      }
    }
  }

  Napi::Value Vectored(const Napi::CallbackInfo& info, bool write) {
    Napi::Env env = info.Env();
    io_uring& ring = Open(env);
    const int fd = static_cast<int>(IntegerArg(info, 0, "fd", INT_MAX));
    const double offset = IntegerArg(info, 2, "offset", kMaxOffset);
    const uint32_t tag = static_cast<uint32_t>(IntegerArg(info, 3, "tag", kMaxTag));
    Operation op;
    TakeViews(env, info.Length() > 1 ? info[1] : env.Undefined(), op);
    io_uring_sqe* sqe = NextSqe(env, ring);
    const uint32_t slot = TakeSlot();
    operations_[slot] = std::move(op);
    Operation& held = operations_[slot];
    const auto nr = static_cast<unsigned>(held.iovecs.size());
    if (write) io_uring_prep_writev(sqe, fd, held.iovecs.data(), nr, static_cast<uint64_t>(offset));
    else io_uring_prep_readv(sqe, fd, held.iovecs.data(), nr, static_cast<uint64_t>(offset));
    Queued(sqe, slot, tag);
    return env.Undefined();
  }

  // readv(fd, views, offset, tag): IORING_OP_READV.
  Napi::Value Readv(const Napi::CallbackInfo& info) { return Vectored(info, false); }
  // writev(fd, views, offset, tag): IORING_OP_WRITEV.
  Napi::Value Writev(const Napi::CallbackInfo& info) { return Vectored(info, true); }

  // fdatasync(fd, tag): IORING_OP_FSYNC with IORING_FSYNC_DATASYNC.
  Napi::Value Fdatasync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    io_uring& ring = Open(env);
    const int fd = static_cast<int>(IntegerArg(info, 0, "fd", INT_MAX));
    const uint32_t tag = static_cast<uint32_t>(IntegerArg(info, 1, "tag", kMaxTag));
    io_uring_sqe* sqe = NextSqe(env, ring);
    io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
    Queued(sqe, TakeSlot(), tag);
    return env.Undefined();
  }

  // fallocate(fd, mode, offset, length, tag): IORING_OP_FALLOCATE.
  Napi::Value Fallocate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    io_uring& ring = Open(env);
    const int fd = static_cast<int>(IntegerArg(info, 0, "fd", INT_MAX));
    const int mode = static_cast<int>(IntegerArg(info, 1, "mode", INT_MAX));
    const double offset = IntegerArg(info, 2, "offset", kMaxOffset);
    const double length = IntegerArg(info, 3, "length", kMaxOffset);
    const uint32_t tag = static_cast<uint32_t>(IntegerArg(info, 4, "tag", kMaxTag));
    io_uring_sqe* sqe = NextSqe(env, ring);
    io_uring_prep_fallocate(sqe, fd, mode, static_cast<off_t>(offset), static_cast<off_t>(length));
    Queued(sqe, TakeSlot(), tag);
    return env.Undefined();
  }

  // submit(): the SQEs the kernel took. The kernel stops at an SQE it
  // fails to prepare (its CQE says why) and leaves the rest queued, so it
  // is entered again for them; SQEs it cannot take now (EAGAIN, EBUSY) stay
  // queued and go with the next submit.
  Napi::Value Submit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    io_uring& ring = Open(env);
    uint32_t taken = 0;
    while (io_uring_sq_ready(&ring) > 0) {
      const int rc = io_uring_submit(&ring);
      if (rc > 0) {
        taken += static_cast<uint32_t>(rc);
        continue;
      }
      if (rc == 0 || rc == -EAGAIN || rc == -EBUSY) break;
      if (rc == -EINTR) continue;
      throw CallError(env, "io_uring_submit", std::to_string(io_uring_sq_ready(&ring)) + " SQEs", -rc);
    }
    return Napi::Number::New(env, taken);
  }

  // close(): waits (bounded) for what is in flight, then tears the ring
  // down. Throws, with the ring closed, if operations were still in flight
  // when the wait ended: their buffers stay referenced, as the kernel may
  // still use them.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint32_t abandoned = Shut();
    if (abandoned > 0) {
      Napi::Error error = Napi::Error::New(env, "io_uring close: " + std::to_string(abandoned) + (abandoned == 1 ? " operation" : " operations") +
                                                    " still in flight after " + std::to_string(kCloseWaitMs) + " ms; their buffers are kept");
      error.Set("code", Napi::String::New(env, "ETIMEDOUT"));
      throw error;
    }
    return env.Undefined();
  }

  // Every CQE there is now: its operation's tag and result, and the
  // operation's slot and buffers released.
  void Drain(std::vector<uint32_t>* tags, std::vector<int32_t>* results) {
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      seen++;
      const uint64_t slot = io_uring_cqe_get_data64(cqe);
      if (slot >= operations_.size() || !operations_[slot].busy) continue;  // liburing's own (LIBURING_UDATA_TIMEOUT)
      Operation& op = operations_[slot];
      if (tags) tags->push_back(op.tag);
      if (results) results->push_back(cqe->res);
      op.Release();
      freeSlots_.push_back(static_cast<uint32_t>(slot));
      inFlight_--;
    }
    io_uring_cq_advance(&ring_, seen);
    if (inFlight_ == 0 && watch_) uv_unref(reinterpret_cast<uv_handle_t*>(&watch_->poll));
  }

  void UnpinIfIdle() {
    if (pinned_ && inFlight_ == 0 && !reaping_) {
      pinned_ = false;
      // Not Unref(), which throws if the reference is gone: a worker that
      // exits tears references down around its cleanup hooks.
      uint32_t count;
      napi_reference_unref(env_, static_cast<napi_ref>(*this), &count);
    }
  }

  // Waits up to kCloseWaitMs for the operations in flight; how many are left.
  uint32_t AwaitInFlight() {
    // Queued SQEs the kernel has not seen would never complete: hand them over.
    if (io_uring_sq_ready(&ring_) > 0) io_uring_submit(&ring_);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kCloseWaitMs);
    while (inFlight_ > 0) {
      Drain(nullptr, nullptr);
      if (inFlight_ == 0) break;
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - std::chrono::steady_clock::now()).count();
      if (left <= 0) break;
      __kernel_timespec timeout = {left / 1000000000, left % 1000000000};
      io_uring_cqe* cqe;
      const int rc = io_uring_wait_cqe_timeout(&ring_, &cqe, &timeout);
      if (rc < 0 && rc != -EINTR && rc != -ETIME) break;
    }
    return inFlight_;
  }

  // Closes the ring, once; how many operations were abandoned in flight.
  uint32_t Shut() {
    if (!open_) return 0;
    open_ = false;
    const uint32_t abandoned = AwaitInFlight();
    CloseWatch(watch_);
    watch_ = nullptr;
    io_uring_queue_exit(&ring_);
    ::close(eventfd_);
    eventfd_ = -1;
    if (abandoned > 0) {
      // The kernel may still write into these buffers: they are never let go.
      auto* kept = new std::vector<Operation>(std::move(operations_));
      (void)kept;
    }
    operations_.clear();
    freeSlots_.clear();
    inFlight_ = 0;
    UnpinIfIdle();
    return abandoned;
  }

  Napi::Env env_;
  io_uring ring_{};
  bool open_ = false;
  bool cleanupHooked_ = false;
  bool pinned_ = false;
  bool reaping_ = false;
  int eventfd_ = -1;
  EventfdWatch* watch_ = nullptr;
  uint32_t sqEntries_ = 0;
  uint32_t cqEntries_ = 0;
  Napi::FunctionReference listener_;
  std::unique_ptr<Napi::AsyncContext> context_;
  std::vector<Operation> operations_;
  std::vector<uint32_t> freeSlots_;
  uint32_t inFlight_ = 0;
};

void OnEventfd(uv_poll_t* handle, int, int) {
  auto* watch = static_cast<EventfdWatch*>(handle->data);
  if (watch->closing || !watch->ring) return;
  watch->ring->Reap();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Ring", Ring::Define(env));
  exports.Set("MAX_VIEWS", Napi::Number::New(env, kMaxViews));
  exports.Set("MAX_ENTRIES", Napi::Number::New(env, kMaxEntries));
  return exports;
}

}  // namespace

NODE_API_MODULE(xenmesh_uring, Init)

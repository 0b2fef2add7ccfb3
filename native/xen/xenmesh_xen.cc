// The Xen platform for a process in a real domain: grant mapping and grant
// copy (libxengnttab over /dev/xen/gntdev), sharing pages (the gntshr half,
// over /dev/xen/gntalloc), event channels (libxenevtchn over
// /dev/xen/evtchn), and a non-blocking device file watched from libuv (for
// /dev/xen/xenbus). The same stable libraries QEMU's Xen disk backend uses.
//
// Every handle belongs to the worker (Node environment) that opened it, as a
// file descriptor belongs to a process: mapped memory reaches JavaScript as
// external ArrayBuffers, is unmapped when released, when the worker exits
// (an environment cleanup hook) and, by the kernel, when the process dies.
// Descriptors are watched with uv_poll on the worker's own loop, so a worker
// waiting for an event sleeps in its event loop, never in a blocking read.
#include <napi.h>
#include <uv.h>

#include "../call_error.h"
#include "quiet_logger.h"

// Xen 4.17's headers have no extern "C" guards of their own.
extern "C" {
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xentoollog.h>
}

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace {

using xenmesh::CallError;
using xenmesh::quietLogger;

constexpr size_t kPageSize = 4096;  // XEN_PAGE_SIZE

uint32_t U32Arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  const double value = info[i].As<Napi::Number>().DoubleValue();
  if (value < 0 || value > 0xffffffffu || value != static_cast<double>(static_cast<uint32_t>(value))) {
    throw Napi::RangeError::New(info.Env(), std::string(name) + " must be an integer in 0..2^32-1");
  }
  return static_cast<uint32_t>(value);
}

uint32_t U32Of(Napi::Env env, Napi::Value value, const char* name) {
  if (!value.IsNumber()) throw Napi::TypeError::New(env, std::string(name) + " must be a number");
  const double v = value.As<Napi::Number>().DoubleValue();
  if (v < 0 || v > 0xffffffffu || v != static_cast<double>(static_cast<uint32_t>(v))) {
    throw Napi::RangeError::New(env, std::string(name) + " must be an integer in 0..2^32-1");
  }
  return static_cast<uint32_t>(v);
}

std::string JoinRefs(const std::vector<uint32_t>& refs) {
  std::string out;
  for (size_t i = 0; i < refs.size(); i++) {
    if (i > 0) out += ",";
    out += std::to_string(refs[i]);
  }
  return out;
}

// ---- memory handed to JavaScript ---------------------------------------------

// Pages mapped from another domain (gnttab) or shared with one (gntshr). The
// region is released exactly once: by an explicit unmap, by the ArrayBuffer's
// finalizer, or by the worker's exit, whichever comes first.
class Region {
 public:
  virtual ~Region() = default;
  void Release() {
    if (!live_) return;
    live_ = false;
    Free();
  }
  bool live() const { return live_; }
  void* address() const { return address_; }
  uint32_t pages() const { return pages_; }
  // The error of the last release, 0 if it went well.
  int lastError() const { return lastError_; }

 protected:
  Region(void* address, uint32_t pages) : address_(address), pages_(pages) {}
  virtual void Free() = 0;
  void* address_;
  uint32_t pages_;
  int lastError_ = 0;

 private:
  bool live_ = true;
};

// What one worker has open: released when the worker exits.
struct Registry {
  std::set<std::shared_ptr<Region>> regions;
  bool closed = false;

  void ReleaseAll() {
    closed = true;
    for (const auto& region : regions) region->Release();
    regions.clear();
  }
};

std::shared_ptr<Registry> RegistryOf(Napi::Env env) {
  auto* slot = env.GetInstanceData<std::shared_ptr<Registry>>();
  if (!slot) {
    slot = new std::shared_ptr<Registry>(std::make_shared<Registry>());
    env.SetInstanceData(slot);
    std::shared_ptr<Registry> registry = *slot;
    env.AddCleanupHook([registry]() { registry->ReleaseAll(); });
  }
  return *slot;
}

// Carried by an external ArrayBuffer's finalizer: the region and the
// registry that lists it while it is live.
struct RegionHint {
  std::shared_ptr<Region> region;
  std::shared_ptr<Registry> registry;
};

void FinalizeRegion(Napi::Env, void*, RegionHint* hint) {
  hint->region->Release();
  hint->registry->regions.erase(hint->region);
  delete hint;
}

Napi::ArrayBuffer Expose(Napi::Env env, const std::shared_ptr<Region>& region) {
  auto registry = RegistryOf(env);
  registry->regions.insert(region);
  auto* hint = new RegionHint{region, registry};
  return Napi::ArrayBuffer::New(env, region->address(), region->pages() * kPageSize, FinalizeRegion, hint);
}

// Releases the region an ArrayBuffer from Expose() covers, and detaches the
// buffer so that no view of it can reach the memory afterwards.
void ReleaseExposed(Napi::Env env, Napi::ArrayBuffer buffer, const char* call) {
  auto registry = RegistryOf(env);
  std::shared_ptr<Region> found;
  for (const auto& region : registry->regions) {
    if (region->address() == buffer.Data()) {
      found = region;
      break;
    }
  }
  if (!found) throw Napi::Error::New(env, std::string(call) + ": this buffer is not a live mapping");
  buffer.Detach();
  found->Release();
  registry->regions.erase(found);
  if (found->lastError() != 0) throw CallError(env, call, std::to_string(found->pages()) + " pages", found->lastError());
}

// ---- grant tables: mapping and copying (xengnttab) ----------------------------

// An open gntdev: closed when the last of the table and its mappings lets go.
struct GnttabHandle {
  explicit GnttabHandle(xengnttab_handle* handle) : xgt(handle) {}
  GnttabHandle(const GnttabHandle&) = delete;
  GnttabHandle& operator=(const GnttabHandle&) = delete;
  ~GnttabHandle() { xengnttab_close(xgt); }
  xengnttab_handle* const xgt;
};

class GrantMappingRegion : public Region {
 public:
  GrantMappingRegion(std::shared_ptr<GnttabHandle> handle, void* address, uint32_t pages)
      : Region(address, pages), handle_(std::move(handle)) {}

 protected:
  void Free() override {
    if (xengnttab_unmap(handle_->xgt, address_, pages_) != 0) lastError_ = errno;
    handle_.reset();
  }

 private:
  std::shared_ptr<GnttabHandle> handle_;
};

class GrantTable : public Napi::ObjectWrap<GrantTable> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "GrantTable",
                       {InstanceMethod("setMaxGrants", &GrantTable::SetMaxGrants),
                        InstanceMethod("map", &GrantTable::Map),
                        InstanceMethod("unmap", &GrantTable::Unmap),
                        InstanceMethod("copy", &GrantTable::Copy),
                        InstanceMethod("close", &GrantTable::Close)});
  }

  explicit GrantTable(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GrantTable>(info) {
    xengnttab_handle* xgt = xengnttab_open(&quietLogger, 0);
    if (!xgt) throw CallError(info.Env(), "xengnttab_open", "/dev/xen/gntdev", errno);
    handle_ = std::make_shared<GnttabHandle>(xgt);
  }

 private:
  GnttabHandle& Open(Napi::Env env) {
    if (!handle_) throw Napi::Error::New(env, "the grant table handle is closed");
    return *handle_;
  }

  // setMaxGrants(count): the most grants this handle may have mapped at once.
  Napi::Value SetMaxGrants(const Napi::CallbackInfo& info) {
    const uint32_t count = U32Arg(info, 0, "count");
    if (xengnttab_set_max_grants(Open(info.Env()).xgt, count) != 0) {
      throw CallError(info.Env(), "xengnttab_set_max_grants", std::to_string(count), errno);
    }
    return info.Env().Undefined();
  }

  // map(domid, refs, writable): the pages, contiguous, all or none.
  Napi::Value Map(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint32_t domid = U32Arg(info, 0, "domid");
    if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "refs must be an array");
    Napi::Array list = info[1].As<Napi::Array>();
    std::vector<uint32_t> refs(list.Length());
    if (refs.empty()) throw Napi::RangeError::New(env, "no grant references to map");
    for (uint32_t i = 0; i < refs.size(); i++) refs[i] = U32Of(env, list.Get(i), "grant reference");
    const bool writable = info.Length() > 2 && info[2].ToBoolean().Value();
    void* address = xengnttab_map_domain_grant_refs(Open(env).xgt, refs.size(), domid, refs.data(),
                                                    writable ? PROT_READ | PROT_WRITE : PROT_READ);
    if (!address) {
      throw CallError(env, "xengnttab_map_domain_grant_refs",
                     "domain " + std::to_string(domid) + ", refs " + JoinRefs(refs) + (writable ? ", writable" : ", read-only"), errno);
    }
    return Expose(env, std::make_shared<GrantMappingRegion>(handle_, address, refs.size()));
  }

  // unmap(buffer): the mapping map() returned; the buffer is detached.
  Napi::Value Unmap(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsArrayBuffer()) throw Napi::TypeError::New(info.Env(), "unmap takes the ArrayBuffer map() returned");
    ReleaseExposed(info.Env(), info[0].As<Napi::ArrayBuffer>(), "xengnttab_unmap");
    return info.Env().Undefined();
  }

  // One end of a copy: {domid, gref, offset} of a granted page, or
  // {bytes: Uint8Array, offset} of our own memory.
  static void CopyEnd(Napi::Env env, Napi::Object end, uint16_t length, bool isSource,
                      xengnttab_grant_copy_segment_t& seg) {
    auto& ptr = isSource ? seg.source : seg.dest;
    const uint32_t offset = U32Of(env, end.Get("offset"), "copy offset");
    if (end.Has("bytes")) {
      Napi::Value bytes = end.Get("bytes");
      if (!bytes.IsTypedArray()) throw Napi::TypeError::New(env, "copy bytes must be a Uint8Array");
      Napi::Uint8Array view = bytes.As<Napi::Uint8Array>();
      if (static_cast<size_t>(offset) + length > view.ByteLength()) throw Napi::RangeError::New(env, "copy runs past the end of the local buffer");
      ptr.virt = view.Data() + offset;
      return;
    }
    if (static_cast<size_t>(offset) + length > kPageSize) throw Napi::RangeError::New(env, "copy runs past the end of a granted page");
    const uint32_t domid = U32Of(env, end.Get("domid"), "copy domid");
    if (domid > 0xffff) throw Napi::RangeError::New(env, "copy domid must fit in 16 bits");
    ptr.foreign.ref = U32Of(env, end.Get("gref"), "copy gref");
    ptr.foreign.offset = static_cast<uint16_t>(offset);
    ptr.foreign.domid = static_cast<uint16_t>(domid);
    seg.flags |= isSource ? GNTCOPY_source_gref : GNTCOPY_dest_gref;
  }

  // copy(ops): GNTTABOP_copy of each {source, dest, length}; returns each
  // operation's GNTST status (0 when it was copied).
  Napi::Value Copy(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "copy takes an array of operations");
    Napi::Array ops = info[0].As<Napi::Array>();
    std::vector<xengnttab_grant_copy_segment_t> segs(ops.Length());
    for (uint32_t i = 0; i < segs.size(); i++) {
      Napi::Value op = ops.Get(i);
      if (!op.IsObject()) throw Napi::TypeError::New(env, "a copy operation must be an object");
      Napi::Object o = op.As<Napi::Object>();
      const uint32_t length = U32Of(env, o.Get("length"), "copy length");
      if (length > kPageSize) throw Napi::RangeError::New(env, "a copy operation moves at most a page");
      auto& seg = segs[i];
      std::memset(&seg, 0, sizeof seg);
      seg.len = static_cast<uint16_t>(length);
      CopyEnd(env, o.Get("source").As<Napi::Object>(), seg.len, true, seg);
      CopyEnd(env, o.Get("dest").As<Napi::Object>(), seg.len, false, seg);
    }
    if (!segs.empty() && xengnttab_grant_copy(Open(env).xgt, segs.size(), segs.data()) != 0) {
      throw CallError(env, "xengnttab_grant_copy", std::to_string(segs.size()) + " segments", errno);
    }
    Napi::Array statuses = Napi::Array::New(env, segs.size());
    for (uint32_t i = 0; i < segs.size(); i++) statuses.Set(i, Napi::Number::New(env, segs[i].status));
    return statuses;
  }

  // close(): mappings already made stay until unmapped (they hold the handle).
  Napi::Value Close(const Napi::CallbackInfo& info) {
    handle_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<GnttabHandle> handle_;
};

// ---- sharing our pages (xengntshr) -----------------------------------------

// An open gntalloc: closed when the last of the sharer and its pages lets go.
struct GntshrHandle {
  explicit GntshrHandle(xengntshr_handle* handle) : xgs(handle) {}
  GntshrHandle(const GntshrHandle&) = delete;
  GntshrHandle& operator=(const GntshrHandle&) = delete;
  ~GntshrHandle() { xengntshr_close(xgs); }
  xengntshr_handle* const xgs;
};

class SharedRegion : public Region {
 public:
  SharedRegion(std::shared_ptr<GntshrHandle> handle, void* address, uint32_t pages)
      : Region(address, pages), handle_(std::move(handle)) {}

 protected:
  // The kernel ends each grant once the other domain no longer maps it.
  void Free() override {
    if (xengntshr_unshare(handle_->xgs, address_, pages_) != 0) lastError_ = errno;
    handle_.reset();
  }

 private:
  std::shared_ptr<GntshrHandle> handle_;
};

class GrantShare : public Napi::ObjectWrap<GrantShare> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "GrantShare",
                       {InstanceMethod("share", &GrantShare::Share),
                        InstanceMethod("unshare", &GrantShare::Unshare),
                        InstanceMethod("close", &GrantShare::Close)});
  }

  explicit GrantShare(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GrantShare>(info) {
    xengntshr_handle* xgs = xengntshr_open(&quietLogger, 0);
    if (!xgs) throw CallError(info.Env(), "xengntshr_open", "/dev/xen/gntalloc", errno);
    handle_ = std::make_shared<GntshrHandle>(xgs);
  }

 private:
  // share(domid, count, writable): {refs, buffer}, new zeroed pages granted to domid.
  Napi::Value Share(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!handle_) throw Napi::Error::New(env, "the grant share handle is closed");
    const uint32_t domid = U32Arg(info, 0, "domid");
    const uint32_t count = U32Arg(info, 1, "count");
    if (count == 0) throw Napi::RangeError::New(env, "no pages to share");
    const bool writable = info.Length() > 2 && info[2].ToBoolean().Value();
    std::vector<uint32_t> refs(count);
    void* address = xengntshr_share_pages(handle_->xgs, domid, static_cast<int>(count), refs.data(), writable ? 1 : 0);
    if (!address) {
      throw CallError(env, "xengntshr_share_pages",
                     "domain " + std::to_string(domid) + ", " + std::to_string(count) + " pages" + (writable ? ", writable" : ", read-only"), errno);
    }
    Napi::Object out = Napi::Object::New(env);
    Napi::Array list = Napi::Array::New(env, count);
    for (uint32_t i = 0; i < count; i++) list.Set(i, Napi::Number::New(env, refs[i]));
    out.Set("refs", list);
    out.Set("buffer", Expose(env, std::make_shared<SharedRegion>(handle_, address, count)));
    return out;
  }

  Napi::Value Unshare(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsArrayBuffer()) throw Napi::TypeError::New(info.Env(), "unshare takes the buffer share() returned");
    ReleaseExposed(info.Env(), info[0].As<Napi::ArrayBuffer>(), "xengntshr_unshare");
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    handle_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<GntshrHandle> handle_;
};

// ---- descriptors watched from the worker's event loop -----------------------

// A uv_poll on a descriptor, calling back into JavaScript when it is
// readable. It is freed in uv_close's callback, never before; a worker that
// exits closes it through an asynchronous cleanup hook, so that its loop
// closes with no handle left open.
struct Poller {
  uv_poll_t poll;
  Napi::Env env;
  Napi::FunctionReference callback;
  std::unique_ptr<Napi::AsyncContext> context;
  std::function<void(Poller&)> onReadable;
  napi_async_cleanup_hook_handle cleanup = nullptr;
  // The owner's pointer to this poller, cleared once it is gone.
  Poller** owner = nullptr;
  bool closing = false;
  bool referenced = true;

  explicit Poller(Napi::Env e) : env(e) {}
};

void PollerClosed(uv_handle_t* handle) {
  auto* poller = static_cast<Poller*>(handle->data);
  if (poller->owner) *poller->owner = nullptr;
  if (poller->cleanup) napi_remove_async_cleanup_hook(poller->cleanup);
  delete poller;
}

void ClosePoller(Poller* poller) {
  if (!poller || poller->closing) return;
  poller->closing = true;
  uv_poll_stop(&poller->poll);
  uv_close(reinterpret_cast<uv_handle_t*>(&poller->poll), PollerClosed);
}

void PollerCleanup(napi_async_cleanup_hook_handle, void* arg) { ClosePoller(static_cast<Poller*>(arg)); }

void OnPoll(uv_poll_t* handle, int, int) {
  auto* poller = static_cast<Poller*>(handle->data);
  if (poller->closing) return;
  Napi::HandleScope scope(poller->env);
  // An error on the descriptor shows up as a failed read in the callback.
  try {
    poller->onReadable(*poller);
  } catch (const Napi::Error& err) {
    napi_fatal_exception(poller->env, err.Value());
  }
}

// Starts watching fd; `*owner` is set to the poller and cleared when it is freed.
void StartPoller(Napi::Env env, int fd, Napi::Function callback, const char* name,
                 std::function<void(Poller&)> onReadable, Poller** owner) {
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) throw Napi::Error::New(env, "no event loop");
  auto* poller = new Poller(env);
  poller->callback = Napi::Persistent(callback);
  poller->context = std::make_unique<Napi::AsyncContext>(env, name);
  poller->onReadable = std::move(onReadable);
  poller->poll.data = poller;
  int rc = uv_poll_init(loop, &poller->poll, fd);
  if (rc != 0) {
    delete poller;
    throw Napi::Error::New(env, std::string("uv_poll_init on ") + name + ": " + uv_strerror(rc));
  }
  rc = uv_poll_start(&poller->poll, UV_READABLE, OnPoll);
  if (rc == 0 && napi_add_async_cleanup_hook(env, PollerCleanup, poller, &poller->cleanup) != napi_ok) rc = UV_ENOMEM;
  if (rc != 0) {
    ClosePoller(poller);
    throw Napi::Error::New(env, std::string("uv_poll_start on ") + name + ": " + uv_strerror(rc));
  }
  poller->owner = owner;
  *owner = poller;
}

// Closes the poller `*owner` points at, if it is still there.
void StopPoller(Poller** owner) {
  Poller* poller = *owner;
  if (!poller) return;
  poller->owner = nullptr;
  *owner = nullptr;
  ClosePoller(poller);
}

void SetReferenced(Poller* poller, bool referenced) {
  if (!poller || poller->closing || poller->referenced == referenced) return;
  poller->referenced = referenced;
  if (referenced) uv_ref(reinterpret_cast<uv_handle_t*>(&poller->poll));
  else uv_unref(reinterpret_cast<uv_handle_t*>(&poller->poll));
}

// ---- event channels (xenevtchn) ----------------------------------------------

// An open /dev/xen/evtchn. The kernel masks a port when it reports it; it is
// unmasked before the callback runs, so that an event raised while
// JavaScript handles the last one is reported again, not lost.
class EventChannels : public Napi::ObjectWrap<EventChannels> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "EventChannels",
                       {InstanceMethod("bindInterdomain", &EventChannels::BindInterdomain),
                        InstanceMethod("bindUnbound", &EventChannels::BindUnbound),
                        InstanceMethod("bindVirq", &EventChannels::BindVirq),
                        InstanceMethod("notify", &EventChannels::Notify),
                        InstanceMethod("unmask", &EventChannels::Unmask),
                        InstanceMethod("unbind", &EventChannels::Unbind),
                        InstanceMethod("close", &EventChannels::Close)});
  }

  // new EventChannels(onPending: (ports: number[]) => void)
  explicit EventChannels(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EventChannels>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsFunction()) throw Napi::TypeError::New(env, "EventChannels takes a callback");
    xce_ = xenevtchn_open(&quietLogger, 0);
    if (!xce_) throw CallError(env, "xenevtchn_open", "/dev/xen/evtchn", errno);
    const int fd = xenevtchn_fd(xce_);
    // Several reports are read per wake-up; the last read must not block.
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
      const int err = errno;
      xenevtchn_close(xce_);
      throw CallError(env, "fcntl", "O_NONBLOCK on /dev/xen/evtchn", err);
    }
    xenevtchn_handle* xce = xce_;
    StartPoller(env, fd, info[0].As<Napi::Function>(), "xenmesh:evtchn", [xce](Poller& p) {
      std::vector<uint32_t> ports;
      for (;;) {
        const xenevtchn_port_or_error_t port = xenevtchn_pending(xce);
        if (port < 0) break;  // EAGAIN: nothing more pending
        xenevtchn_unmask(xce, port);
        ports.push_back(static_cast<uint32_t>(port));
      }
      if (ports.empty()) return;
      Napi::Array list = Napi::Array::New(p.env, ports.size());
      for (uint32_t i = 0; i < ports.size(); i++) list.Set(i, Napi::Number::New(p.env, ports[i]));
      p.callback.MakeCallback(p.env.Global(), {list}, *p.context);
    }, &poller_);
    SetReferenced(poller_, false);
  }

  ~EventChannels() override { Shut(); }

 private:
  xenevtchn_handle* Open(Napi::Env env) {
    if (!xce_) throw Napi::Error::New(env, "the event channel handle is closed");
    return xce_;
  }

  Napi::Value Bound(Napi::Env env, xenevtchn_port_or_error_t port, const char* call, const std::string& what) {
    if (port < 0) throw CallError(env, call, what, errno);
    bound_.insert(static_cast<uint32_t>(port));
    SetReferenced(poller_, true);
    return Napi::Number::New(env, port);
  }

  // bindInterdomain(domid, remotePort): the local port.
  Napi::Value BindInterdomain(const Napi::CallbackInfo& info) {
    const uint32_t domid = U32Arg(info, 0, "domid");
    const uint32_t remote = U32Arg(info, 1, "remote port");
    return Bound(info.Env(), xenevtchn_bind_interdomain(Open(info.Env()), domid, remote), "xenevtchn_bind_interdomain",
                 "domain " + std::to_string(domid) + ", port " + std::to_string(remote));
  }

  // bindUnbound(domid): a new port that domid may bind to.
  Napi::Value BindUnbound(const Napi::CallbackInfo& info) {
    const uint32_t domid = U32Arg(info, 0, "domid");
    return Bound(info.Env(), xenevtchn_bind_unbound_port(Open(info.Env()), domid), "xenevtchn_bind_unbound_port",
                 "domain " + std::to_string(domid));
  }

  Napi::Value BindVirq(const Napi::CallbackInfo& info) {
    const uint32_t virq = U32Arg(info, 0, "virq");
    return Bound(info.Env(), xenevtchn_bind_virq(Open(info.Env()), virq), "xenevtchn_bind_virq", "virq " + std::to_string(virq));
  }

  Napi::Value Notify(const Napi::CallbackInfo& info) {
    const uint32_t port = U32Arg(info, 0, "port");
    if (xenevtchn_notify(Open(info.Env()), port) != 0) throw CallError(info.Env(), "xenevtchn_notify", "port " + std::to_string(port), errno);
    return info.Env().Undefined();
  }

  Napi::Value Unmask(const Napi::CallbackInfo& info) {
    const uint32_t port = U32Arg(info, 0, "port");
    if (xenevtchn_unmask(Open(info.Env()), port) != 0) throw CallError(info.Env(), "xenevtchn_unmask", "port " + std::to_string(port), errno);
    return info.Env().Undefined();
  }

  Napi::Value Unbind(const Napi::CallbackInfo& info) {
    const uint32_t port = U32Arg(info, 0, "port");
    if (xenevtchn_unbind(Open(info.Env()), port) != 0) throw CallError(info.Env(), "xenevtchn_unbind", "port " + std::to_string(port), errno);
    bound_.erase(port);
    // A handle with nothing bound does not keep its worker alive.
    if (bound_.empty()) SetReferenced(poller_, false);
    return info.Env().Undefined();
  }

  // close(): every port of the handle is unbound (the kernel does it on close).
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shut();
    return info.Env().Undefined();
  }

  void Shut() {
    StopPoller(&poller_);
    if (xce_) xenevtchn_close(xce_);
    xce_ = nullptr;
    bound_.clear();
  }

  xenevtchn_handle* xce_ = nullptr;
  Poller* poller_ = nullptr;
  std::set<uint32_t> bound_;
};

// ---- a device file read as it becomes readable (/dev/xen/xenbus) -------------

class DeviceFile : public Napi::ObjectWrap<DeviceFile> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DeviceFile",
                       {InstanceMethod("read", &DeviceFile::Read),
                        InstanceMethod("write", &DeviceFile::Write),
                        InstanceMethod("close", &DeviceFile::Close)});
  }

  // new DeviceFile(path, onReadable: () => void): opened read-write, non-blocking.
  explicit DeviceFile(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceFile>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsFunction()) {
      throw Napi::TypeError::New(env, "DeviceFile takes a path and a callback");
    }
    path_ = info[0].As<Napi::String>().Utf8Value();
    fd_ = open(path_.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd_ < 0) throw CallError(env, "open", path_, errno);
    try {
      StartPoller(env, fd_, info[1].As<Napi::Function>(), "xenmesh:device", [](Poller& p) {
        p.callback.MakeCallback(p.env.Global(), {}, *p.context);
      }, &poller_);
    } catch (...) {
      ::close(fd_);
      fd_ = -1;
      throw;
    }
  }

  ~DeviceFile() override { Shut(); }

 private:
  int Fd(Napi::Env env) {
    if (fd_ < 0) throw Napi::Error::New(env, path_ + " is closed");
    return fd_;
  }

  // read(into: Uint8Array): bytes read; -1 when nothing is there yet; 0 at end of file.
  Napi::Value Read(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(env, "read takes a Uint8Array");
    Napi::Uint8Array into = info[0].As<Napi::Uint8Array>();
    for (;;) {
      const ssize_t got = ::read(Fd(env), into.Data(), into.ByteLength());
      if (got >= 0) return Napi::Number::New(env, static_cast<double>(got));
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
      throw CallError(env, "read", path_, errno);
    }
  }

  // write(from: Uint8Array): bytes written.
  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(env, "write takes a Uint8Array");
    Napi::Uint8Array from = info[0].As<Napi::Uint8Array>();
    for (;;) {
      const ssize_t put = ::write(Fd(env), from.Data(), from.ByteLength());
      if (put >= 0) return Napi::Number::New(env, static_cast<double>(put));
      if (errno == EINTR) continue;
      throw CallError(env, "write", path_, errno);
    }
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shut();
    return info.Env().Undefined();
  }

  void Shut() {
    StopPoller(&poller_);
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  std::string path_;
  int fd_ = -1;
  Poller* poller_ = nullptr;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("GrantTable", GrantTable::Define(env));
  exports.Set("GrantShare", GrantShare::Define(env));
  exports.Set("EventChannels", EventChannels::Define(env));
  exports.Set("DeviceFile", DeviceFile::Define(env));
  exports.Set("PAGE_SIZE", Napi::Number::New(env, kPageSize));
  return exports;
}

}  // namespace

NODE_API_MODULE(xenmesh_xen, Init)

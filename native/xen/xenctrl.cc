// What xenstored needs of a real Xen host beyond grants and event channels:
// the domains' states, read through libxenctrl (xc_domain_getinfo, over
// /dev/xen/privcmd) as C xenstored reads them to learn which domains are
// dying or gone, and the page the initial domain's kernel shares with a
// local xenstored (/proc/xen/xsd_kva), mapped as C xenstored maps it.
//
// A separate addon from xenmesh_xen: only xenstored, in the domain that
// runs it, needs libxenctrl and the privilege behind it; a backend in a
// driver domain never loads it.
#include <napi.h>

#include "../call_error.h"
#include "quiet_logger.h"

// Xen 4.17's headers have no extern "C" guards of their own.
extern "C" {
#include <xenctrl.h>
#include <xentoollog.h>
}

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

namespace {

using xenmesh::CallError;
using xenmesh::quietLogger;

constexpr size_t kPageSize = 4096;  // XEN_PAGE_SIZE
// Domains asked for in one hypercall when listing them all; DOMID_FIRST_RESERVED bounds the total.
constexpr unsigned kListBatch = 64;

uint32_t DomidArg(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "domid must be a number");
  const double value = info[0].As<Napi::Number>().DoubleValue();
  if (value < 0 || value >= DOMID_FIRST_RESERVED || value != static_cast<double>(static_cast<uint32_t>(value))) {
    throw Napi::RangeError::New(info.Env(), "domid must be an integer below DOMID_FIRST_RESERVED (0x7ff0)");
  }
  return static_cast<uint32_t>(value);
}

// The first 6 bytes of the domain handle (its UUID) as a number: with the
// domid it tells a domain from a later one that reuses the domid, which is
// all Xen 4.17 offers for that (it has no unique domain id).
double HandleNumber(const xen_domain_handle_t handle) {
  double value = 0;
  for (int i = 0; i < 6; i++) value = value * 256 + handle[i];
  return value;
}

Napi::Object DomainObject(Napi::Env env, const xc_dominfo_t& d) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("domid", Napi::Number::New(env, d.domid));
  out.Set("dying", Napi::Boolean::New(env, d.dying));
  out.Set("crashed", Napi::Boolean::New(env, d.crashed));
  out.Set("shutdown", Napi::Boolean::New(env, d.shutdown));
  out.Set("shutdownReason", Napi::Number::New(env, d.shutdown_reason));
  out.Set("paused", Napi::Boolean::New(env, d.paused));
  out.Set("pages", Napi::Number::New(env, static_cast<double>(d.nr_pages)));
  out.Set("handle", Napi::Number::New(env, HandleNumber(d.handle)));
  return out;
}

// An open libxenctrl interface (/dev/xen/privcmd).
class DomainControl : public Napi::ObjectWrap<DomainControl> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DomainControl",
                       {InstanceMethod("info", &DomainControl::Info),
                        InstanceMethod("list", &DomainControl::List),
                        InstanceMethod("close", &DomainControl::Close)});
  }

  explicit DomainControl(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DomainControl>(info) {
    xch_ = xc_interface_open(&quietLogger, &quietLogger, 0);
    if (!xch_) throw CallError(info.Env(), "xc_interface_open", "/dev/xen/privcmd", errno);
  }

  ~DomainControl() override { Shut(); }

 private:
  xc_interface* Handle(Napi::Env env) {
    if (!xch_) throw Napi::Error::New(env, "the domain control interface is closed");
    return xch_;
  }

  // The domain's state, or undefined when it does not exist.
  Napi::Value Info(const Napi::CallbackInfo& info) {
    const uint32_t domid = DomidArg(info);
    xc_dominfo_t d;
    // xc_domain_getinfo answers with the next domain from domid on: it is
    // this one only if the domids match (xenctrl.h).
    const int n = xc_domain_getinfo(Handle(info.Env()), domid, 1, &d);
    if (n < 0) throw CallError(info.Env(), "xc_domain_getinfo", "domain " + std::to_string(domid), errno);
    if (n == 0 || d.domid != domid) return info.Env().Undefined();
    return DomainObject(info.Env(), d);
  }

  Napi::Value List(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array out = Napi::Array::New(env);
    std::vector<xc_dominfo_t> batch(kListBatch);
    uint32_t next = 0;
    uint32_t count = 0;
    while (next < DOMID_FIRST_RESERVED) {
      const int n = xc_domain_getinfo(Handle(env), next, kListBatch, batch.data());
      if (n < 0) throw CallError(env, "xc_domain_getinfo", "from domain " + std::to_string(next), errno);
      for (int i = 0; i < n; i++) out.Set(count++, DomainObject(env, batch[i]));
      if (n < static_cast<int>(kListBatch)) break;
      next = batch[n - 1].domid + 1;
    }
    return out;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shut();
    return info.Env().Undefined();
  }

  void Shut() {
    if (xch_) xc_interface_close(xch_);
    xch_ = nullptr;
  }

  xc_interface* xch_ = nullptr;
};

// Maps one page of a file shared (/proc/xen/xsd_kva: the initial domain's
// xenstore ring, which its kernel set up for a local xenstored) as an
// external buffer, unmapped when the buffer is collected.
Napi::Value MapSharedPage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) throw CallError(env, "open", path, errno);
  void* page = ::mmap(nullptr, kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int mapErrno = errno;
  ::close(fd);
  if (page == MAP_FAILED) throw CallError(env, "mmap", path, mapErrno);
  return Napi::ArrayBuffer::New(env, page, kPageSize, [](Napi::Env, void* data) { ::munmap(data, kPageSize); });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("DomainControl", DomainControl::Define(env));
  exports.Set("mapSharedPage", Napi::Function::New(env, MapSharedPage, "mapSharedPage"));
  return exports;
}

}  // namespace

NODE_API_MODULE(xenmesh_xenctrl, Init)

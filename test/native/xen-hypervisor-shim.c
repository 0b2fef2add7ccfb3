/*
 * A stand-in for the hypervisor interfaces Xen's C xenstored uses, loaded
 * with LD_PRELOAD so that Debian's /usr/lib/xen-4.17/bin/xenstored runs
 * without Xen underneath. The tests run it side by side with our daemon and
 * compare what unmodified xenstore clients print against each.
 *
 * Every domain exists and is running; event channels never fire; a mapped
 * xenstore page is an empty ring, so introduced domains never speak.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#define PAGE_BYTES 4096
#define FAKE_VIRQ_PORT 1000

struct xenevtchn_handle { int pipe[2]; int next_port; };
struct xengntdev_handle { int unused; };
struct xc_interface_core { int unused; };

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned flags)
{
    xenevtchn_handle *h = calloc(1, sizeof(*h));
    (void)logger; (void)flags;
    if (!h || pipe(h->pipe)) return NULL;
    h->next_port = 1;
    return h;
}

xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd, unsigned open_flags)
{
    (void)fd;
    return xenevtchn_open(logger, open_flags);
}

int xenevtchn_fd(xenevtchn_handle *h) { return h->pipe[0]; }
xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *h, unsigned int virq) { (void)h; (void)virq; return FAKE_VIRQ_PORT; }
xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *h, uint32_t domid, evtchn_port_t port)
{
    (void)domid; (void)port;
    return h->next_port++;
}
int xenevtchn_notify(xenevtchn_handle *h, evtchn_port_t port) { (void)h; (void)port; return 0; }
int xenevtchn_unbind(xenevtchn_handle *h, evtchn_port_t port) { (void)h; (void)port; return 0; }
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *h) { (void)h; return -1; }
int xenevtchn_unmask(xenevtchn_handle *h, evtchn_port_t port) { (void)h; (void)port; return 0; }

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger; (void)open_flags;
    return calloc(1, sizeof(xengnttab_handle));
}
int xengnttab_close(xengnttab_handle *h) { free(h); return 0; }
int xengnttab_set_max_grants(xengnttab_handle *h, uint32_t nr) { (void)h; (void)nr; return 0; }
void *xengnttab_map_grant_ref(xengnttab_handle *h, uint32_t domid, uint32_t ref, int prot)
{
    (void)h; (void)domid; (void)ref; (void)prot;
    void *page = mmap(NULL, PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return page == MAP_FAILED ? NULL : page;
}
int xengnttab_unmap(xengnttab_handle *h, void *start, uint32_t count) { (void)h; return munmap(start, count * PAGE_BYTES); }

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger, unsigned open_flags)
{
    (void)logger; (void)dombuild_logger; (void)open_flags;
    return calloc(1, sizeof(struct xc_interface_core));
}
int xc_interface_close(xc_interface *xch) { free(xch); return 0; }
int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms, xc_dominfo_t *info)
{
    (void)xch;
    if (max_doms < 1 || first_domid >= DOMID_FIRST_RESERVED) return 0;
    memset(info, 0, sizeof(*info));
    info->domid = first_domid;
    info->running = 1;
    return 1;
}

/* dom0's own xenstore page and port, which xenstored opens in /proc/xen. */
static int fake_file(const char *contents, size_t size)
{
    int fd = memfd_create("xenstore-shim", 0);
    if (fd < 0) return -1;
    if (ftruncate(fd, size) || (contents && write(fd, contents, strlen(contents)) < 0)) { close(fd); return -1; }
    lseek(fd, 0, SEEK_SET);
    return fd;
}

static int redirect(const char *path)
{
    if (!strcmp(path, "/proc/xen/xsd_kva")) return fake_file(NULL, PAGE_BYTES);
    if (!strcmp(path, "/proc/xen/xsd_port")) return fake_file("1", 1);
    return -2;
}

/* Opens the fake /proc/xen files, or forwards to the C library's `name`. */
static int open_or_forward(const char *name, const char *path, int flags, va_list ap)
{
    int (*real)(const char *, int, ...) = dlsym(RTLD_NEXT, name);
    int fd = redirect(path);
    mode_t mode = (flags & O_CREAT) ? va_arg(ap, int) : 0;
    return fd != -2 ? fd : real(path, flags, mode);
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    int fd;
    va_start(ap, flags);
    fd = open_or_forward("open", path, flags, ap);
    va_end(ap);
    return fd;
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    int fd;
    va_start(ap, flags);
    fd = open_or_forward("open64", path, flags, ap);
    va_end(ap);
    return fd;
}

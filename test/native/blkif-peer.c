/*
 * A block frontend or backend built from nothing but Xen's own headers,
 * <xen/io/ring.h> and <xen/io/blkif.h>, for test/blkif-conformance.test.ts
 * to check shared/blkif.ts and shared/ring.ts against: built natively it
 * is an x86_64 peer, built with -m32 an x86_32 one.
 *
 * The ring lives in a file of PAGES pages that this program maps and the
 * test reads and writes between turns; the two take turns through the
 * commands the test writes on stdin. Every command's reply is zero or more
 * JSON lines followed by a line "ok" or "error <why>". 64-bit values are
 * printed as decimal strings, since JSON numbers cannot hold them.
 *
 *   blkif-peer layout
 *       sizeof and offsetof of every blkif struct and field, the
 *       constants, and __CONST_RING_SIZE for 1 to 16 pages.
 *   blkif-peer front RINGFILE PAGES START
 *       initialises the shared ring with every index at START (events at
 *       START + 1) and attaches a front ring there. Commands:
 *         rw OP NR HANDLE ID SECTOR NSEG [GREF FIRST LAST]...
 *         discard OP FLAG HANDLE ID SECTOR NR_SECTORS
 *         indirect OP INDIRECT_OP NR HANDLE ID SECTOR G0 ... G7
 *             write one request at req_prod_pvt with RING_GET_REQUEST;
 *             print it as read back and the slot's bytes
 *         push        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY
 *         responses [ID:OP:STATUS]...
 *             take every response (RING_GET_RESPONSE, then
 *             RING_FINAL_CHECK_FOR_RESPONSES); print them and check them
 *             against the list
 *         check       RING_RESPONSE_PROD_OVERFLOW and the unconsumed count
 *   blkif-peer back RINGFILE PAGES START
 *       attaches a back ring at START to a ring the test initialised.
 *       Commands:
 *         requests    take every request (RING_COPY_REQUEST, then
 *                     RING_FINAL_CHECK_FOR_REQUESTS); print them
 *         respond ID OP STATUS   write one response with RING_GET_RESPONSE
 *         push        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY
 *         check       RING_REQUEST_PROD_OVERFLOW and the unconsumed count
 *   and for both:
 *         state       the private and shared indexes
 *         set A B     sets the private indexes (req_prod_pvt rsp_cons, or
 *                     rsp_prod_pvt req_cons)
 *         quit        exit status 1 if any check failed
 *   blkif-peer segments-write FILE COUNT
 *       fills FILE's first page with COUNT struct blkif_request_segment
 *       entries and prints them
 *   blkif-peer segments-read FILE COUNT
 *       prints the first COUNT entries of FILE's first page
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The barriers ring.h's legacy interface expects the OS to provide. */
#define mb() __sync_synchronize()
#define rmb() __sync_synchronize()
#define wmb() __sync_synchronize()

#include <xen/io/ring.h>
#include <xen/io/blkif.h>

#define PAGE_BYTES 4096
/* Room for a `responses` command listing a whole 16-page ring. */
#define MAX_ARGS 1024
#define LINE_BYTES 65536

/* One slot seen as each struct it can hold. */
union request_view {
    struct blkif_request rw;
    struct blkif_request_discard discard;
    struct blkif_request_indirect indirect;
};

static int failures;

static void *map_file(const char *path, size_t bytes)
{
    int fd = open(path, O_RDWR);
    void *at;
    if (fd < 0) { perror(path); exit(2); }
    at = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (at == MAP_FAILED) { perror("mmap"); exit(2); }
    close(fd);
    return at;
}

static void print_hex(const void *bytes, size_t length)
{
    const uint8_t *p = bytes;
    size_t i;
    for (i = 0; i < length; i++) printf("%02x", p[i]);
}

static void print_request(const union request_view *u)
{
    unsigned i, count;
    switch (u->rw.operation) {
    case BLKIF_OP_DISCARD:
        printf("{\"kind\":\"discard\",\"operation\":%u,\"flag\":%u,\"handle\":%u,"
               "\"id\":\"%" PRIu64 "\",\"sectorNumber\":\"%" PRIu64 "\",\"nrSectors\":\"%" PRIu64 "\"}",
               u->discard.operation, u->discard.flag, u->discard.handle,
               u->discard.id, u->discard.sector_number, u->discard.nr_sectors);
        break;
    case BLKIF_OP_INDIRECT:
        printf("{\"kind\":\"indirect\",\"operation\":%u,\"indirectOp\":%u,\"nrSegments\":%u,\"handle\":%u,"
               "\"id\":\"%" PRIu64 "\",\"sectorNumber\":\"%" PRIu64 "\",\"indirectGrefs\":[",
               u->indirect.operation, u->indirect.indirect_op, u->indirect.nr_segments, u->indirect.handle,
               u->indirect.id, u->indirect.sector_number);
        for (i = 0; i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; i++)
            printf("%s%u", i ? "," : "", u->indirect.indirect_grefs[i]);
        printf("]}");
        break;
    default:
        /* A backend never reads past seg[BLKIF_MAX_SEGMENTS_PER_REQUEST - 1], whatever nr_segments says. */
        count = u->rw.nr_segments < BLKIF_MAX_SEGMENTS_PER_REQUEST ? u->rw.nr_segments : BLKIF_MAX_SEGMENTS_PER_REQUEST;
        printf("{\"kind\":\"rw\",\"operation\":%u,\"nrSegments\":%u,\"handle\":%u,"
               "\"id\":\"%" PRIu64 "\",\"sectorNumber\":\"%" PRIu64 "\",\"segments\":[",
               u->rw.operation, u->rw.nr_segments, u->rw.handle, u->rw.id, u->rw.sector_number);
        for (i = 0; i < count; i++)
            printf("%s{\"gref\":%u,\"firstSect\":%u,\"lastSect\":%u}", i ? "," : "",
                   u->rw.seg[i].gref, u->rw.seg[i].first_sect, u->rw.seg[i].last_sect);
        printf("]}");
        break;
    }
}

static void print_response(const struct blkif_response *rsp)
{
    printf("{\"id\":\"%" PRIu64 "\",\"operation\":%u,\"status\":%d}", rsp->id, rsp->operation, rsp->status);
}

static void print_state(RING_IDX a, RING_IDX b, unsigned nr_ents, const struct blkif_sring *s, int front)
{
    printf("{\"%s\":%u,\"%s\":%u,\"nr_ents\":%u,\"req_prod\":%u,\"req_event\":%u,\"rsp_prod\":%u,\"rsp_event\":%u}\n",
           front ? "req_prod_pvt" : "rsp_prod_pvt", a, front ? "rsp_cons" : "req_cons", b, nr_ents,
           s->req_prod, s->req_event, s->rsp_prod, s->rsp_event);
}

static uint64_t num(const char *text)
{
    return strtoull(text, NULL, 10);
}

static void reply(const char *error)
{
    if (error) printf("error %s\n", error);
    else printf("ok\n");
    fflush(stdout);
}

/* Splits a command line into words; returns how many. */
static int split(char *line, char **argv)
{
    int argc = 0;
    char *word = strtok(line, " \t\r\n");
    while (word && argc < MAX_ARGS) {
        argv[argc++] = word;
        word = strtok(NULL, " \t\r\n");
    }
    return argc;
}

/* Fills a request slot from the command's words; NULL or why not. */
static const char *fill_request(union request_view *u, int argc, char **argv)
{
    int i;
    memset(u, 0, sizeof(union blkif_sring_entry));
    if (!strcmp(argv[0], "rw")) {
        unsigned nseg;
        if (argc < 7) return "rw needs OP NR HANDLE ID SECTOR NSEG";
        nseg = num(argv[6]);
        if (nseg > BLKIF_MAX_SEGMENTS_PER_REQUEST || argc != 7 + 3 * (int)nseg) return "bad segment list";
        u->rw.operation = num(argv[1]);
        u->rw.nr_segments = num(argv[2]);
        u->rw.handle = num(argv[3]);
        u->rw.id = num(argv[4]);
        u->rw.sector_number = num(argv[5]);
        for (i = 0; i < (int)nseg; i++) {
            u->rw.seg[i].gref = num(argv[7 + 3 * i]);
            u->rw.seg[i].first_sect = num(argv[8 + 3 * i]);
            u->rw.seg[i].last_sect = num(argv[9 + 3 * i]);
        }
        return NULL;
    }
    if (!strcmp(argv[0], "discard")) {
        if (argc != 7) return "discard needs OP FLAG HANDLE ID SECTOR NR_SECTORS";
        u->discard.operation = num(argv[1]);
        u->discard.flag = num(argv[2]);
        u->discard.handle = num(argv[3]);
        u->discard.id = num(argv[4]);
        u->discard.sector_number = num(argv[5]);
        u->discard.nr_sectors = num(argv[6]);
        return NULL;
    }
    if (!strcmp(argv[0], "indirect")) {
        if (argc != 7 + BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST) return "indirect needs OP INDIRECT_OP NR HANDLE ID SECTOR G0..G7";
        u->indirect.operation = num(argv[1]);
        u->indirect.indirect_op = num(argv[2]);
        u->indirect.nr_segments = num(argv[3]);
        u->indirect.handle = num(argv[4]);
        u->indirect.id = num(argv[5]);
        u->indirect.sector_number = num(argv[6]);
        for (i = 0; i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; i++)
            u->indirect.indirect_grefs[i] = num(argv[7 + i]);
        return NULL;
    }
    return "unknown command";
}

static int front(const char *path, unsigned pages, RING_IDX start)
{
    struct blkif_sring *s = map_file(path, (size_t)pages * PAGE_BYTES);
    struct blkif_front_ring f;
    static char line[LINE_BYTES], *argv[MAX_ARGS];
    int argc, notify, more;

    SHARED_RING_INIT(s);
    s->req_prod = s->rsp_prod = start;
    s->req_event = s->rsp_event = start + 1;
    FRONT_RING_ATTACH(&f, s, start, (size_t)pages * PAGE_BYTES);
    printf("{\"ring_size\":%u,\"const_ring_size\":%u}\n", RING_SIZE(&f),
           (unsigned)__CONST_RING_SIZE(blkif, (size_t)pages * PAGE_BYTES));
    reply(NULL);

    while (fgets(line, sizeof(line), stdin)) {
        argc = split(line, argv);
        if (argc == 0) continue;
        if (!strcmp(argv[0], "rw") || !strcmp(argv[0], "discard") || !strcmp(argv[0], "indirect")) {
            union request_view *u;
            const char *why;
            if (RING_FULL(&f)) { reply("ring full"); continue; }
            u = (union request_view *)RING_GET_REQUEST(&f, f.req_prod_pvt);
            why = fill_request(u, argc, argv);
            if (why) { reply(why); continue; }
            printf("{\"req\":");
            print_request(u);
            printf(",\"hex\":\"");
            print_hex(u, sizeof(union blkif_sring_entry));
            printf("\"}\n");
            f.req_prod_pvt++;
            reply(NULL);
        } else if (!strcmp(argv[0], "push")) {
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f, notify);
            printf("{\"notify\":%d}\n", notify ? 1 : 0);
            reply(NULL);
        } else if (!strcmp(argv[0], "responses")) {
            int next = 1, bad = 0;
            char why[128] = "";
            do {
                RING_IDX prod = f.sring->rsp_prod;
                if (RING_RESPONSE_PROD_OVERFLOW(&f, prod)) { snprintf(why, sizeof(why), "response producer %u overflows", prod); bad++; break; }
                rmb();
                while (f.rsp_cons != prod) {
                    const struct blkif_response *rsp = RING_GET_RESPONSE(&f, f.rsp_cons);
                    printf("{\"rsp\":");
                    print_response(rsp);
                    printf(",\"hex\":\"");
                    print_hex(rsp, sizeof(*rsp));
                    printf("\"}\n");
                    if (next >= argc) {
                        snprintf(why, sizeof(why), "unexpected response %u", f.rsp_cons);
                        bad++;
                    } else {
                        uint64_t id; unsigned op; int status;
                        if (sscanf(argv[next], "%" SCNu64 ":%u:%d", &id, &op, &status) != 3 ||
                            id != rsp->id || op != rsp->operation || status != rsp->status) {
                            snprintf(why, sizeof(why), "response %u is not %s", f.rsp_cons, argv[next]);
                            bad++;
                        }
                    }
                    next++;
                    f.rsp_cons++;
                }
                RING_FINAL_CHECK_FOR_RESPONSES(&f, more);
            } while (more);
            if (!bad && next != argc) { snprintf(why, sizeof(why), "%d responses missing", argc - next); bad++; }
            failures += bad;
            reply(bad ? why : NULL);
        } else if (!strcmp(argv[0], "check")) {
            printf("{\"overflow\":%d,\"unconsumed\":%u}\n", RING_RESPONSE_PROD_OVERFLOW(&f, f.sring->rsp_prod) ? 1 : 0,
                   (unsigned)RING_HAS_UNCONSUMED_RESPONSES(&f));
            reply(NULL);
        } else if (!strcmp(argv[0], "state")) {
            print_state(f.req_prod_pvt, f.rsp_cons, RING_SIZE(&f), s, 1);
            reply(NULL);
        } else if (!strcmp(argv[0], "set") && argc == 3) {
            f.req_prod_pvt = num(argv[1]);
            f.rsp_cons = num(argv[2]);
            reply(NULL);
        } else if (!strcmp(argv[0], "quit")) {
            break;
        } else {
            reply("unknown command");
        }
    }
    return failures ? 1 : 0;
}

static int back(const char *path, unsigned pages, RING_IDX start)
{
    struct blkif_sring *s = map_file(path, (size_t)pages * PAGE_BYTES);
    struct blkif_back_ring b;
    static char line[LINE_BYTES], *argv[MAX_ARGS];
    int argc, notify, more;

    BACK_RING_ATTACH(&b, s, start, (size_t)pages * PAGE_BYTES);
    printf("{\"ring_size\":%u,\"const_ring_size\":%u}\n", RING_SIZE(&b),
           (unsigned)__CONST_RING_SIZE(blkif, (size_t)pages * PAGE_BYTES));
    reply(NULL);

    while (fgets(line, sizeof(line), stdin)) {
        argc = split(line, argv);
        if (argc == 0) continue;
        if (!strcmp(argv[0], "requests")) {
            const char *why = NULL;
            do {
                RING_IDX prod = b.sring->req_prod;
                if (RING_REQUEST_PROD_OVERFLOW(&b, prod)) { why = "request producer overflows"; failures++; break; }
                rmb();
                while (b.req_cons != prod && !RING_REQUEST_CONS_OVERFLOW(&b, b.req_cons)) {
                    union request_view u;
                    RING_COPY_REQUEST(&b, b.req_cons, &u.rw);
                    printf("{\"req\":");
                    print_request(&u);
                    printf(",\"hex\":\"");
                    print_hex(RING_GET_REQUEST(&b, b.req_cons), sizeof(union blkif_sring_entry));
                    printf("\"}\n");
                    b.req_cons++;
                }
                RING_FINAL_CHECK_FOR_REQUESTS(&b, more);
            } while (more);
            reply(why);
        } else if (!strcmp(argv[0], "respond") && argc == 4) {
            struct blkif_response *rsp = RING_GET_RESPONSE(&b, b.rsp_prod_pvt);
            memset(rsp, 0, sizeof(union blkif_sring_entry));
            rsp->id = num(argv[1]);
            rsp->operation = num(argv[2]);
            rsp->status = strtol(argv[3], NULL, 10);
            printf("{\"rsp\":");
            print_response(rsp);
            printf(",\"hex\":\"");
            print_hex(rsp, sizeof(*rsp));
            printf("\"}\n");
            b.rsp_prod_pvt++;
            reply(NULL);
        } else if (!strcmp(argv[0], "push")) {
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&b, notify);
            printf("{\"notify\":%d}\n", notify ? 1 : 0);
            reply(NULL);
        } else if (!strcmp(argv[0], "check")) {
            printf("{\"overflow\":%d,\"unconsumed\":%u}\n", RING_REQUEST_PROD_OVERFLOW(&b, b.sring->req_prod) ? 1 : 0,
                   (unsigned)RING_HAS_UNCONSUMED_REQUESTS(&b));
            reply(NULL);
        } else if (!strcmp(argv[0], "state")) {
            print_state(b.rsp_prod_pvt, b.req_cons, RING_SIZE(&b), s, 0);
            reply(NULL);
        } else if (!strcmp(argv[0], "set") && argc == 3) {
            b.rsp_prod_pvt = num(argv[1]);
            b.req_cons = num(argv[2]);
            reply(NULL);
        } else if (!strcmp(argv[0], "quit")) {
            break;
        } else {
            reply("unknown command");
        }
    }
    return failures ? 1 : 0;
}

static void print_segments(const struct blkif_request_segment *seg, unsigned count)
{
    unsigned i;
    printf("[");
    for (i = 0; i < count; i++)
        printf("%s{\"gref\":%u,\"firstSect\":%u,\"lastSect\":%u}", i ? "," : "", seg[i].gref, seg[i].first_sect, seg[i].last_sect);
    printf("]\n");
}

static int segments(const char *path, unsigned count, int write)
{
    struct blkif_request_segment *seg = map_file(path, PAGE_BYTES);
    unsigned i;
    if (count > PAGE_BYTES / sizeof(*seg)) { reply("too many segments"); return 1; }
    if (write) {
        memset(seg, 0xa5, PAGE_BYTES); /* padding the test must not read as a field */
        for (i = 0; i < count; i++) {
            seg[i].gref = 0x9e3779b9u * (i + 1);
            seg[i].first_sect = (i * 7) & 0xff;
            seg[i].last_sect = (255 - i * 3) & 0xff;
        }
    }
    print_segments(seg, count);
    reply(NULL);
    return 0;
}

#define FIELD(type, field) \
    printf("%s\"%s\":[%u,%u]", first ? "" : ",", #field, (unsigned)offsetof(type, field), \
           (unsigned)sizeof(((type *)0)->field)), first = 0

static int layout(void)
{
    int first;
    unsigned pages;

    printf("{\"abi\":\"%s\",\"structs\":{", sizeof(long) == 8 ? "x86_64" : "x86_32");

    first = 1;
    printf("\"blkif_request_segment\":{\"sizeof\":%u,\"fields\":{", (unsigned)sizeof(struct blkif_request_segment));
    FIELD(struct blkif_request_segment, gref);
    FIELD(struct blkif_request_segment, first_sect);
    FIELD(struct blkif_request_segment, last_sect);
    printf("}},");

    first = 1;
    printf("\"blkif_request\":{\"sizeof\":%u,\"fields\":{", (unsigned)sizeof(struct blkif_request));
    FIELD(struct blkif_request, operation);
    FIELD(struct blkif_request, nr_segments);
    FIELD(struct blkif_request, handle);
    FIELD(struct blkif_request, id);
    FIELD(struct blkif_request, sector_number);
    FIELD(struct blkif_request, seg);
    printf("}},");

    first = 1;
    printf("\"blkif_request_discard\":{\"sizeof\":%u,\"fields\":{", (unsigned)sizeof(struct blkif_request_discard));
    FIELD(struct blkif_request_discard, operation);
    FIELD(struct blkif_request_discard, flag);
    FIELD(struct blkif_request_discard, handle);
    FIELD(struct blkif_request_discard, id);
    FIELD(struct blkif_request_discard, sector_number);
    FIELD(struct blkif_request_discard, nr_sectors);
    printf("}},");

    first = 1;
    printf("\"blkif_request_indirect\":{\"sizeof\":%u,\"fields\":{", (unsigned)sizeof(struct blkif_request_indirect));
    FIELD(struct blkif_request_indirect, operation);
    FIELD(struct blkif_request_indirect, indirect_op);
    FIELD(struct blkif_request_indirect, nr_segments);
    FIELD(struct blkif_request_indirect, id);
    FIELD(struct blkif_request_indirect, sector_number);
    FIELD(struct blkif_request_indirect, handle);
    FIELD(struct blkif_request_indirect, indirect_grefs);
#ifdef __i386__
    FIELD(struct blkif_request_indirect, pad);
#endif
    printf("}},");

    first = 1;
    printf("\"blkif_response\":{\"sizeof\":%u,\"fields\":{", (unsigned)sizeof(struct blkif_response));
    FIELD(struct blkif_response, id);
    FIELD(struct blkif_response, operation);
    FIELD(struct blkif_response, status);
    printf("}},");

    first = 1;
    printf("\"blkif_sring\":{\"sizeof\":%u,\"fields\":{", (unsigned)sizeof(struct blkif_sring));
    FIELD(struct blkif_sring, req_prod);
    FIELD(struct blkif_sring, req_event);
    FIELD(struct blkif_sring, rsp_prod);
    FIELD(struct blkif_sring, rsp_event);
    FIELD(struct blkif_sring, pvt);
    FIELD(struct blkif_sring, __pad);
    FIELD(struct blkif_sring, ring);
    printf("}},");

    printf("\"blkif_sring_entry\":{\"sizeof\":%u,\"fields\":{}}", (unsigned)sizeof(union blkif_sring_entry));
    printf("},\"constants\":{");
    printf("\"BLKIF_OP_READ\":%d,\"BLKIF_OP_WRITE\":%d,\"BLKIF_OP_WRITE_BARRIER\":%d,\"BLKIF_OP_FLUSH_DISKCACHE\":%d,"
           "\"BLKIF_OP_RESERVED_1\":%d,\"BLKIF_OP_DISCARD\":%d,\"BLKIF_OP_INDIRECT\":%d,",
           BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE,
           BLKIF_OP_RESERVED_1, BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT);
    printf("\"BLKIF_RSP_OKAY\":%d,\"BLKIF_RSP_ERROR\":%d,\"BLKIF_RSP_EOPNOTSUPP\":%d,",
           BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP);
    printf("\"BLKIF_MAX_SEGMENTS_PER_REQUEST\":%d,\"BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST\":%d,\"BLKIF_DISCARD_SECURE\":%d,",
           BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_DISCARD_SECURE);
    printf("\"VDISK_CDROM\":%d,\"VDISK_REMOVABLE\":%d,\"VDISK_READONLY\":%d,",
           VDISK_CDROM, VDISK_REMOVABLE, VDISK_READONLY);
    printf("\"SEGS_PER_INDIRECT_FRAME\":%u", (unsigned)(PAGE_BYTES / sizeof(struct blkif_request_segment)));
    printf("},\"ringSizes\":{");
    for (pages = 1; pages <= 16; pages *= 2)
        printf("%s\"%u\":%u", pages == 1 ? "" : ",", pages, (unsigned)__CONST_RING_SIZE(blkif, (size_t)pages * PAGE_BYTES));
    printf("}}\n");
    reply(NULL);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "layout")) return layout();
    if (argc == 5 && !strcmp(argv[1], "front")) return front(argv[2], num(argv[3]), num(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "back")) return back(argv[2], num(argv[3]), num(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "segments-write")) return segments(argv[2], num(argv[3]), 1);
    if (argc == 4 && !strcmp(argv[1], "segments-read")) return segments(argv[2], num(argv[3]), 0);
    fprintf(stderr, "usage: %s layout | front|back RINGFILE PAGES START | segments-write|segments-read FILE COUNT\n", argv[0]);
    return 2;
}

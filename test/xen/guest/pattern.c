/*
 * pattern: write and verify a known block pattern on a block device (or an image file) with O_DIRECT,
 * so that a reader can tell, block by block, which write ended up on the disk.
 *
 * Every 4 KiB block carries a 32-byte header and a payload derived from it:
 *   magic "XMPATTN1" | block number | generation | checksum (FNV-1a 64 of the rest of the block)
 * The block number says where the block was meant to go (a misplaced write shows), the generation says
 * which pass wrote it, the checksum catches torn or corrupted blocks.
 *
 * usage: pattern [-t TAG] [-c BLOCKS] MODE ...
 *   write  DEV GEN FIRST COUNT   write blocks [FIRST, FIRST+COUNT) with generation GEN
 *   verify DEV GEN FIRST COUNT   check that those blocks hold generation GEN (exit 1 if not)
 *   scan   DEV FIRST COUNT       say which generations the blocks hold (exit 1 on corrupt blocks)
 *   load   DEV FIRST COUNT       write generation 1, 2, 3... over the range, reading each full pass back,
 *                                until SIGTERM/SIGINT; then verify everything acknowledged (exit 1 if not)
 *   -t TAG     prefix of every output line (default "pattern"), e.g. "DOMU: pattern"
 *   -c BLOCKS  blocks per write request (default 8)
 *
 * Acknowledgement record (load): "TAG acked gen=G blocks=A" is printed every second and at the end.
 * It means that the writes of blocks [FIRST, FIRST+A) with generation G have completed (pwrite with O_DIRECT
 * returned), so those blocks must hold G and the rest of the range G-1 (nothing, if G is 1). Lines are
 * machine-readable key=value pairs; the final one of load is
 *   "TAG final gen=G acked=A count=N result=ok|FAIL ..."
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define MAGIC 0x314e545441504d58ULL /* "XMPATTN1" little-endian */
#define HEADER 32
#define PROGRESS_SECONDS 1.0

struct header {
    uint64_t magic, block, gen, sum;
};

static const char *tag = "pattern";
static unsigned chunk = 8;
static volatile sig_atomic_t stop_requested;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", tag);
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t fnv1a(const unsigned char *p, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

/* The checksum covers the header fields before it and the whole payload. */
static uint64_t block_sum(const unsigned char *b)
{
    uint64_t h = fnv1a(b, 24, 0xcbf29ce484222325ULL);
    return fnv1a(b + HEADER, BLOCK - HEADER, h);
}

static void fill(unsigned char *b, uint64_t block, uint64_t gen)
{
    struct header h = {MAGIC, block, gen, 0};
    uint64_t x = (block + 1) * 0x9e3779b97f4a7c15ULL ^ (gen + 1) * 0xbf58476d1ce4e5b9ULL; /* xorshift seed */
    memcpy(b, &h, sizeof h);
    for (size_t i = HEADER; i < BLOCK; i += 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        memcpy(b + i, &x, 8);
    }
    h.sum = block_sum(b);
    memcpy(b, &h, sizeof h);
}

/* What a block read back holds. */
enum kind { OK, OTHER_GEN, ZERO, MISPLACED, CORRUPT };
static const char *kind_name[] = {"ok", "other-gen", "zero", "misplaced", "corrupt"};

static enum kind classify(const unsigned char *b, uint64_t block, uint64_t gen, uint64_t *found_gen)
{
    struct header h;
    static unsigned char expect[BLOCK];
    memcpy(&h, b, sizeof h);
    *found_gen = 0;
    if (h.magic != MAGIC) {
        for (size_t i = 0; i < BLOCK; i++) if (b[i]) return CORRUPT;
        return ZERO;
    }
    if (h.sum != block_sum(b)) return CORRUPT;
    fill(expect, h.block, h.gen); /* a valid checksum over a wrong payload is still corruption */
    if (memcmp(expect, b, BLOCK) != 0) return CORRUPT;
    *found_gen = h.gen;
    if (h.block != block) return MISPLACED;
    return h.gen == gen ? OK : OTHER_GEN;
}

static int open_dev(const char *path, int flags)
{
    int fd = open(path, flags | O_DIRECT);
    if (fd < 0 && errno == EINVAL) {
        /* tmpfs (dom0 checking an image file) has no O_DIRECT: a buffered read is as good there */
        fd = open(path, flags);
        if (fd >= 0) say("note=buffered-io dev=%s", path);
    }
    if (fd < 0) {
        say("error=open dev=%s errno=%s", path, strerror(errno));
        exit(2);
    }
    return fd;
}

static unsigned char *buffer(size_t blocks)
{
    void *p;
    if (posix_memalign(&p, BLOCK, blocks * BLOCK)) {
        say("error=posix_memalign");
        exit(2);
    }
    return p;
}

/* Write blocks [first, first+count) of generation gen; *acked counts the blocks whose write completed.
 * Returns 0, or -1 on an I/O error. Stops early (returning 0) when stop_requested and may_stop. */
static int write_range(int fd, uint64_t gen, uint64_t first, uint64_t count, uint64_t *acked, int may_stop,
                       double *next_report)
{
    unsigned char *b = buffer(chunk);
    *acked = 0;
    while (*acked < count) {
        if (may_stop && stop_requested) break;
        uint64_t n = count - *acked < chunk ? count - *acked : chunk;
        for (uint64_t i = 0; i < n; i++) fill(b + i * BLOCK, first + *acked + i, gen);
        ssize_t r = pwrite(fd, b, n * BLOCK, (off_t)((first + *acked) * BLOCK));
        if (r != (ssize_t)(n * BLOCK)) {
            say("error=write block=%llu gen=%llu result=%zd errno=%s", (unsigned long long)(first + *acked),
                (unsigned long long)gen, r, r < 0 ? strerror(errno) : "short");
            free(b);
            return -1;
        }
        *acked += n;
        if (next_report && now() >= *next_report) {
            say("acked gen=%llu blocks=%llu", (unsigned long long)gen, (unsigned long long)*acked);
            *next_report = now() + PROGRESS_SECONDS;
        }
    }
    free(b);
    return 0;
}

/* Read [first, first+count) back; count blocks by kind against generation gen. Returns the number of blocks
 * that are not OK. Prints the first few problems, and a summary line "verify ...". */
static uint64_t verify_range(int fd, uint64_t gen, uint64_t first, uint64_t count, const char *what)
{
    unsigned char *b = buffer(chunk);
    uint64_t counts[5] = {0}, bad = 0, shown = 0, lo_gen = UINT64_MAX, hi_gen = 0;
    for (uint64_t done = 0; done < count;) {
        uint64_t n = count - done < chunk ? count - done : chunk;
        ssize_t r = pread(fd, b, n * BLOCK, (off_t)((first + done) * BLOCK));
        if (r != (ssize_t)(n * BLOCK)) {
            say("error=read block=%llu result=%zd errno=%s", (unsigned long long)(first + done), r,
                r < 0 ? strerror(errno) : "short");
            free(b);
            return count - done + bad;
        }
        for (uint64_t i = 0; i < n; i++) {
            uint64_t found;
            enum kind k = classify(b + i * BLOCK, first + done + i, gen, &found);
            counts[k]++;
            if (k == OTHER_GEN || k == MISPLACED) {
                if (found < lo_gen) lo_gen = found;
                if (found > hi_gen) hi_gen = found;
            }
            if (k != OK) {
                bad++;
                if (shown++ < 5)
                    say("mismatch block=%llu expected-gen=%llu found=%s found-gen=%llu",
                        (unsigned long long)(first + done + i), (unsigned long long)gen, kind_name[k],
                        (unsigned long long)found);
            }
        }
        done += n;
    }
    free(b);
    say("verify %s gen=%llu first=%llu count=%llu ok=%llu other-gen=%llu zero=%llu misplaced=%llu corrupt=%llu"
        " result=%s",
        what, (unsigned long long)gen, (unsigned long long)first, (unsigned long long)count,
        (unsigned long long)counts[OK], (unsigned long long)counts[OTHER_GEN], (unsigned long long)counts[ZERO],
        (unsigned long long)counts[MISPLACED], (unsigned long long)counts[CORRUPT], bad ? "FAIL" : "ok");
    if (counts[OTHER_GEN])
        say("other-gens lowest=%llu highest=%llu", (unsigned long long)lo_gen, (unsigned long long)hi_gen);
    return bad;
}

/* scan: which generations are there, without expecting one. */
static int scan(int fd, uint64_t first, uint64_t count)
{
    unsigned char *b = buffer(1);
    uint64_t zero = 0, corrupt = 0, misplaced = 0, valid = 0, lo = UINT64_MAX, hi = 0;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t found;
        if (pread(fd, b, BLOCK, (off_t)((first + i) * BLOCK)) != BLOCK) {
            say("error=read block=%llu errno=%s", (unsigned long long)(first + i), strerror(errno));
            return 1;
        }
        enum kind k = classify(b, first + i, 0, &found);
        if (k == ZERO) zero++;
        else if (k == CORRUPT) corrupt++;
        else if (k == MISPLACED) misplaced++;
        else {
            valid++;
            if (found < lo) lo = found;
            if (found > hi) hi = found;
        }
    }
    free(b);
    say("scan first=%llu count=%llu valid=%llu lowest-gen=%llu highest-gen=%llu zero=%llu misplaced=%llu"
        " corrupt=%llu result=%s",
        (unsigned long long)first, (unsigned long long)count, (unsigned long long)valid,
        (unsigned long long)(valid ? lo : 0), (unsigned long long)hi, (unsigned long long)zero,
        (unsigned long long)misplaced, (unsigned long long)corrupt, corrupt || misplaced ? "FAIL" : "ok");
    return corrupt || misplaced ? 1 : 0;
}

static void on_stop(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* load: generation after generation until asked to stop; each full pass is read back. At the end, the
 * acknowledged record is checked: [first, first+acked) holds gen, the rest gen-1. */
static int load(int fd, uint64_t first, uint64_t count)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    say("load start first=%llu count=%llu chunk=%u", (unsigned long long)first, (unsigned long long)count, chunk);
    uint64_t gen = 0, acked = count, bad = 0;
    double next_report = now() + PROGRESS_SECONDS;
    while (!stop_requested) {
        gen++;
        if (write_range(fd, gen, first, count, &acked, 1, &next_report)) return 1;
        if (acked < count) break; /* stopped within the pass */
        say("acked gen=%llu blocks=%llu", (unsigned long long)gen, (unsigned long long)acked);
        if (verify_range(fd, gen, first, count, "pass")) return 1;
    }
    if (acked == 0 && gen > 1) { /* stopped right at the start of a pass: the last complete one is the record */
        gen--;
        acked = count;
    }
    say("acked gen=%llu blocks=%llu", (unsigned long long)gen, (unsigned long long)acked);
    bad += verify_range(fd, gen, first, acked, "acked");
    if (gen > 1) bad += verify_range(fd, gen - 1, first + acked, count - acked, "previous");
    say("final gen=%llu acked=%llu count=%llu result=%s", (unsigned long long)gen, (unsigned long long)acked,
        (unsigned long long)count, bad ? "FAIL" : "ok");
    return bad ? 1 : 0;
}

static uint64_t num(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || end == s) {
        fprintf(stderr, "pattern: not a number: %s\n", s);
        exit(2);
    }
    return v;
}

static void usage(void)
{
    fprintf(stderr, "usage: pattern [-t TAG] [-c BLOCKS] write|verify DEV GEN FIRST COUNT\n"
                    "       pattern [-t TAG] [-c BLOCKS] scan|load DEV FIRST COUNT\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "t:c:")) != -1) {
        if (opt == 't') tag = optarg;
        else if (opt == 'c') chunk = (unsigned)num(optarg);
        else usage();
    }
    if (chunk == 0) usage();
    argc -= optind;
    argv += optind;
    if (argc < 1) usage();
    const char *mode = argv[0];
    if ((!strcmp(mode, "write") || !strcmp(mode, "verify")) && argc == 5) {
        uint64_t gen = num(argv[2]), first = num(argv[3]), count = num(argv[4]), acked;
        if (!strcmp(mode, "verify")) {
            int fd = open_dev(argv[1], O_RDONLY);
            return verify_range(fd, gen, first, count, "range") ? 1 : 0;
        }
        int fd = open_dev(argv[1], O_RDWR);
        double t0 = now();
        if (write_range(fd, gen, first, count, &acked, 0, NULL)) return 1;
        if (fdatasync(fd)) say("error=fdatasync errno=%s", strerror(errno));
        say("write gen=%llu first=%llu count=%llu seconds=%.1f result=ok", (unsigned long long)gen,
            (unsigned long long)first, (unsigned long long)count, now() - t0);
        return 0;
    }
    if (!strcmp(mode, "scan") && argc == 4) {
        int fd = open_dev(argv[1], O_RDONLY);
        return scan(fd, num(argv[2]), num(argv[3]));
    }
    if (!strcmp(mode, "load") && argc == 4) {
        int fd = open_dev(argv[1], O_RDWR);
        return load(fd, num(argv[2]), num(argv[3]));
    }
    usage();
    return 2;
}

/*
 * Lab guest agent: a static binary started by the initramfs /init.
 *
 * Heartbeats (UDP, guest -> runner) let the runner see every stall of the
 * guest, e.g. migration downtime, to about one period.  A control socket
 * (UDP, runner -> guest) answers echo probes and text commands that load
 * the guest (dirty memory), prove memory and disk survived a migration
 * (fill/verify, diskwrite/disksum, diskstream: writes in flight), check the pages written during a migration
 * (oracle) and shut it down cleanly (poweroff).
 *
 * Configuration comes only from the kernel command line (/proc/cmdline):
 *   lab.runner=IPv4 lab.hb_port=N lab.hb_us=N lab.ctl_port=N lab.name=STR
 *   lab.probe=1 (print the READY line, then exit so /init powers off)
 * Build: gcc -O2 -static -Wall -Wextra -pthread -o agent agent.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)
#define PAGE 4096UL
#define DISK "/dev/vda"
#define DIRTY_SLICE_NS 10000000ULL /* pace dirtying every 10 ms: smooth rate */

struct config {
    char name[64];
    struct in_addr runner;
    int have_runner;
    int hb_port;
    long hb_us;
    int ctl_port;
    int probe;
};

static struct config cfg = {.name = "guest", .hb_us = 1000, .ctl_port = 7777};
static char boot_id_text[37];
static uint8_t boot_id_bin[16];
static atomic_uint_least64_t hb_sent;
static atomic_int powering_off; /* set once: the heartbeat stops sending */

/* ---------- small helpers ---------- */

static uint64_t clock_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static struct timespec ns_to_ts(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ULL),
                          .tv_nsec = (long)(ns % 1000000000ULL)};
    return ts;
}

static void sleep_until(uint64_t mono_ns)
{
    struct timespec ts = ns_to_ts(mono_ns);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* The lab reads the serial console, so READY/ERROR lines go to /dev/console. */
static void console(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    int fd = open("/dev/console", O_WRONLY | O_APPEND | O_NOCTTY | O_CLOEXEC);
    ssize_t w = write(fd >= 0 ? fd : STDERR_FILENO, line, (size_t)n);
    (void)w;
    if (fd >= 0)
        close(fd);
}

static void fatal(const char *what)
{
    console("LAB-AGENT-ERROR %s: %s", what, strerror(errno));
    exit(1);
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

#define FNV_OFFSET 0xcbf29ce484222325ULL
static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Strict decimal/hex parse: a typo must give an error, not a silent 0. */
static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s || *s == '-')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !(v >= 0.0) || v > 1e6)
        return -1;
    *out = v;
    return 0;
}

/* ---------- configuration ---------- */

static const char *arg_value(const char *tok, const char *key)
{
    size_t n = strlen(key);
    return strncmp(tok, key, n) == 0 && tok[n] == '=' ? tok + n + 1 : NULL;
}

static void read_cmdline(void)
{
    char buf[4096];
    FILE *f = fopen("/proc/cmdline", "r");
    if (!f)
        fatal("open /proc/cmdline");
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;

    char *save = NULL;
    for (char *t = strtok_r(buf, " \t\n", &save); t; t = strtok_r(NULL, " \t\n", &save)) {
        const char *v;
        if ((v = arg_value(t, "lab.name")))
            snprintf(cfg.name, sizeof cfg.name, "%s", v);
        else if ((v = arg_value(t, "lab.runner")))
            cfg.have_runner = inet_pton(AF_INET, v, &cfg.runner) == 1;
        else if ((v = arg_value(t, "lab.hb_port")))
            cfg.hb_port = atoi(v);
        else if ((v = arg_value(t, "lab.hb_us")))
            cfg.hb_us = atol(v);
        else if ((v = arg_value(t, "lab.ctl_port")))
            cfg.ctl_port = atoi(v);
        else if ((v = arg_value(t, "lab.probe")))
            cfg.probe = strcmp(v, "1") == 0;
    }
    if (cfg.hb_us < 100) /* below this a TCG guest only burns CPU */
        cfg.hb_us = 100;
}

/* boot_id changes on every boot: it tells the runner a reboot happened. */
static void read_boot_id(void)
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f || !fgets(boot_id_text, sizeof boot_id_text, f))
        fatal("read boot_id");
    fclose(f);
    int j = 0;
    for (int i = 0; boot_id_text[i] && j < 32; i++) {
        char c = boot_id_text[i];
        if (c == '-')
            continue;
        int d = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
        boot_id_bin[j / 2] = (uint8_t)(boot_id_bin[j / 2] << 4 | (d & 0xf));
        j++;
    }
}

/* ---------- (1) heartbeats ---------- */

struct __attribute__((packed)) heartbeat {
    char magic[4]; /* "LHB1" */
    uint32_t flags;
    uint64_t seq;
    uint64_t mono_ns;
    uint8_t boot_id[16];
    uint64_t uptime_ms;
};
_Static_assert(sizeof(struct heartbeat) == 48, "heartbeat wire size");

/* Highest SCHED_FIFO priority we may have, so guest load cannot delay beats. */
static void raise_priority(void)
{
    int max = sched_get_priority_max(SCHED_FIFO);
    int min = sched_get_priority_min(SCHED_FIFO);
    for (int p = max; p >= min && p > 0; p--) {
        struct sched_param sp = {.sched_priority = p};
        if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp) == 0)
            return;
    }
}

static void *heartbeat_main(void *unused)
{
    (void)unused;
    raise_priority();
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fatal("heartbeat socket");
    struct sockaddr_in dst = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)cfg.hb_port),
                              .sin_addr = cfg.runner};
    const uint64_t period = (uint64_t)cfg.hb_us * 1000ULL;
    uint64_t seq = 0;
    uint64_t next = clock_ns(CLOCK_MONOTONIC);

    for (;;) {
        next += period;
        sleep_until(next);
        if (atomic_load(&powering_off))
            break;
        uint64_t now = clock_ns(CLOCK_MONOTONIC);
        /* After a stall (e.g. migration downtime) restart the schedule from
         * now: a burst of catch-up beats would hide the gap's true shape. */
        if (now > next + period)
            next = now;

        struct heartbeat hb = {.magic = {'L', 'H', 'B', '1'},
                               .flags = 0,
                               .seq = htole64(seq + 1),
                               .mono_ns = htole64(now),
                               .uptime_ms = htole64(clock_ns(CLOCK_BOOTTIME) / 1000000ULL)};
        memcpy(hb.boot_id, boot_id_bin, sizeof hb.boot_id);
        /* seq counts packets actually handed to the stack, so the runner can
         * read any hole in the sequence as loss on the path. */
        if (sendto(fd, &hb, sizeof hb, 0, (struct sockaddr *)&dst, sizeof dst) == (ssize_t)sizeof hb) {
            seq++;
            atomic_store(&hb_sent, seq);
        }
    }
    return NULL;
}

/* ---------- dirty: background page writer, and the dirty-page oracle ----------
 *
 * The writer sweeps the region in page order, storing the sweep's round number
 * in each page's first word, at the requested rate. So at any moment pages
 * [0, pos) hold `round` and pages [pos, N) hold `round - 1`: one boundary. A
 * page holding anything else after a migration lost a write (the destination
 * got a stale copy). Checked two ways, so a stale page is caught whether the
 * writer reaches it first or the check does: the writer checks each page holds
 * the previous round's value before it rewrites it, and `oracle` scans the
 * whole region with the writer stopped (under its mutex).
 *
 * A large sweep keeps evicting TCG's TLB entries, and the writes QEMU 7.2 loses
 * under TCG (upstream 03bfc2188f06) are those made through entries that stay
 * resident. So a second thread rewrites a small hot set of pages (far fewer
 * than the TLB holds) every millisecond, each write preceded by a check that
 * the page still holds the previous round's value. Its round counter lives in
 * a local the compiler keeps in a register: CPU state always migrates whole,
 * so the counter is right on the destination even when memory is not.
 */

#define HOT_PAGES 8 /* on one 2 MiB page when the guest has them */
#define HOT_SMALL_PAGES 8 /* on ordinary 4 KiB pages: the kernel's own hot data (stacks) is there, and
                           * QEMU's TLB treats large pages apart (a flush inside one flushes all) */
#define HOT_PERIOD_NS 1000000ULL
#define ORACLE_FIRST 6 /* wrong pages reported with address, found and expected */

struct wrong_page {
    uintptr_t addr;
    uint64_t found, expected;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started;
    double rate_mibs; /* requested; 0 = stopped */
    volatile uint64_t *base;
    size_t pages;
    size_t pos;
    uint64_t round; /* pages before pos hold round, the rest round - 1 */
    int huge; /* the region is on 2 MiB pages */
} dirty = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
static _Atomic double dirty_measured; /* MiB/s over the last second */

/* Wrong pages found by a writer before it rewrote them (sweep and hot set), since the last `oracle`. */
struct findings {
    pthread_mutex_t mu;
    uint64_t wrong;
    struct wrong_page first[ORACLE_FIRST];
};
static struct findings sweep_found = {.mu = PTHREAD_MUTEX_INITIALIZER};
static struct findings hot_found = {.mu = PTHREAD_MUTEX_INITIALIZER};
static volatile uint64_t *hot_base; /* HOT_PAGES pages, never unmapped */
static int hot_huge; /* ... within one 2 MiB page */
static volatile uint64_t *hot_small; /* HOT_SMALL_PAGES 4 KiB pages, locked, never unmapped */
/* TCG's TLB is indexed by virtual page number modulo its size (64 entries or more). The sweep skips
 * the pages whose index class (modulo TLB_CLASSES) the hot set uses, so it never evicts the hot set's
 * TLB entries: the lost writes are those made through entries that stay resident. */
#define TLB_CLASSES 64
static uint64_t hot_classes; /* bit k: a hot page has virtual page number = k modulo TLB_CLASSES */

static int sweep_skips(const volatile void *page)
{
    return (hot_classes >> (((uintptr_t)page / PAGE) % TLB_CLASSES)) & 1;
}
static atomic_uint_least64_t hot_rounds;

static atomic_uint console_wrong; /* wrong pages told on the serial console this boot */

static void note_wrong(struct findings *f, volatile uint64_t *word, uint64_t found, uint64_t expected)
{
    pthread_mutex_lock(&f->mu);
    if (f->wrong < ORACLE_FIRST)
        f->first[f->wrong] = (struct wrong_page){(uintptr_t)word, found, expected};
    f->wrong++;
    pthread_mutex_unlock(&f->mu);
    /* Also on the serial console (the host keeps its log): evidence that outlives a guest
     * the lost writes crash. The first few only, so a broken guest cannot flood it. */
    if (atomic_fetch_add(&console_wrong, 1) < ORACLE_FIRST)
        console("LAB-ORACLE-WRONG writer=%s addr=0x%lx found=%llu expected=%llu", f == &hot_found ? "hot" : "sweep",
                (unsigned long)(uintptr_t)word, (unsigned long long)found, (unsigned long long)expected);
}

#define HUGE (2 * MIB)

/* Anonymous memory, populated; on 2 MiB pages when the guest has them (*huge set), so that each
 * 2 MiB is physically contiguous and the harness can read it from outside the guest. */
static void *map_oracle(size_t bytes, int *huge)
{
    size_t rounded = (bytes + HUGE - 1) / HUGE * HUGE;
    void *p = mmap(NULL, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE,
                   -1, 0);
    *huge = p != MAP_FAILED;
    if (p == MAP_FAILED)
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    return p;
}

/* Guest-physical address of the page at `addr` (/proc/self/pagemap; the agent runs as root). */
static uint64_t phys_of(const volatile void *addr)
{
    uint64_t entry = 0;
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = pread(fd, &entry, sizeof entry, (off_t)((uintptr_t)addr / PAGE * sizeof entry));
    close(fd);
    if (n != (ssize_t)sizeof entry || !(entry >> 63))
        return 0;
    return (entry & ((1ULL << 55) - 1)) * PAGE;
}

static void *dirty_main(void *unused)
{
    (void)unused;
    uint64_t last = 0, win_start = 0, win_pages = 0;
    double owed = 0;

    pthread_mutex_lock(&dirty.mu);
    for (;;) {
        if (dirty.rate_mibs <= 0 || !dirty.pages) {
            atomic_store(&dirty_measured, 0.0);
            while (dirty.rate_mibs <= 0 || !dirty.pages)
                pthread_cond_wait(&dirty.cv, &dirty.mu);
            last = win_start = clock_ns(CLOCK_MONOTONIC);
            win_pages = 0;
            owed = 0;
        }
        /* Pay what real elapsed time owes, capped at two slices so a stall
         * of this thread does not turn into a burst afterwards. */
        uint64_t now = clock_ns(CLOCK_MONOTONIC);
        double per_ns = dirty.rate_mibs * (double)(MIB / PAGE) / 1e9;
        owed += per_ns * (double)(now - last);
        if (owed > per_ns * 2 * DIRTY_SLICE_NS)
            owed = per_ns * 2 * DIRTY_SLICE_NS;
        last = now;
        size_t n = (size_t)owed;
        owed -= (double)n;
        for (size_t i = 0; i < n; i++) {
            if (dirty.pos == 0)
                dirty.round++;
            volatile uint64_t *word = dirty.base + dirty.pos * (PAGE / 8);
            if (!sweep_skips(word)) {
                uint64_t found = *word;
                if (found != dirty.round - 1)
                    note_wrong(&sweep_found, word, found, dirty.round - 1);
                *word = dirty.round;
            }
            if (++dirty.pos == dirty.pages)
                dirty.pos = 0;
        }
        win_pages += n;
        pthread_mutex_unlock(&dirty.mu);

        sleep_until(now + DIRTY_SLICE_NS);
        now = clock_ns(CLOCK_MONOTONIC);
        if (now - win_start >= 1000000000ULL) {
            double secs = (double)(now - win_start) / 1e9;
            atomic_store(&dirty_measured, (double)win_pages * PAGE / MIB / secs);
            win_start = now;
            win_pages = 0;
        }
        pthread_mutex_lock(&dirty.mu);
    }
    return NULL;
}

static void *hot_main(void *unused)
{
    (void)unused;
    register uint64_t round = 1; /* in a register: migrates with the vCPU state */
    uint64_t next = clock_ns(CLOCK_MONOTONIC);
    for (;;) {
        for (size_t j = 0; j < HOT_PAGES + HOT_SMALL_PAGES; j++) {
            volatile uint64_t *word = j < HOT_PAGES ? hot_base + j * (PAGE / 8)
                                                    : hot_small + (j - HOT_PAGES) * (PAGE / 8);
            uint64_t found = *word;
            if (found != round - 1)
                note_wrong(&hot_found, word, found, round - 1);
            *word = round;
        }
        round++;
        atomic_store_explicit(&hot_rounds, round - 1, memory_order_relaxed);
        next += HOT_PERIOD_NS;
        sleep_until(next);
    }
    return NULL;
}

static int start_hot_set(void)
{
    void *p = map_oracle(HOT_PAGES * PAGE, &hot_huge);
    if (p == MAP_FAILED)
        return -1;
    hot_base = p;
    /* Not merged into a huge page, not moved: its guest-physical addresses stay what oracle_map said. */
    p = mmap(NULL, HOT_SMALL_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_LOCKED,
             -1, 0);
    if (p == MAP_FAILED)
        return -1;
    madvise(p, HOT_SMALL_PAGES * PAGE, MADV_NOHUGEPAGE);
    hot_small = p;
    for (size_t j = 0; j < HOT_PAGES; j++)
        hot_classes |= 1ULL << (((uintptr_t)hot_base / PAGE + j) % TLB_CLASSES);
    for (size_t j = 0; j < HOT_SMALL_PAGES; j++)
        hot_classes |= 1ULL << (((uintptr_t)hot_small / PAGE + j) % TLB_CLASSES);
    pthread_t t;
    if (pthread_create(&t, NULL, hot_main, NULL) != 0)
        return -1;
    pthread_detach(t);
    return 0;
}

static int append_wrong(char *out, size_t outsz, int n, const struct wrong_page *w, size_t count, size_t before)
{
    for (size_t i = 0; i < count && (size_t)n < outsz; i++)
        n += snprintf(out + n, outsz - (size_t)n, "%s0x%lx:%llu:%llu", i + before ? "," : "", (unsigned long)w[i].addr,
                      (unsigned long long)w[i].found, (unsigned long long)w[i].expected);
    return n;
}

/* Take (and reset) what a writer found since the last oracle. */
static uint64_t take_findings(struct findings *f, struct wrong_page *first, size_t *nfirst)
{
    pthread_mutex_lock(&f->mu);
    uint64_t wrong = f->wrong;
    *nfirst = wrong < ORACLE_FIRST ? wrong : ORACLE_FIRST;
    memcpy(first, f->first, *nfirst * sizeof *first);
    f->wrong = 0;
    pthread_mutex_unlock(&f->mu);
    return wrong;
}

/* oracle: scan the sweep region (writer stopped), then report and reset what the writers found. */
static int cmd_oracle(char *out, size_t outsz)
{
    struct wrong_page scan_first[ORACLE_FIRST], sweep_first[ORACLE_FIRST], hot_first[ORACLE_FIRST];
    size_t scan_wrong = 0, n_scan, n_sweep, n_hot;
    pthread_mutex_lock(&dirty.mu);
    size_t checked = dirty.pages;
    for (size_t i = 0; i < dirty.pages; i++) {
        uint64_t want = i < dirty.pos ? dirty.round : dirty.round - 1;
        if (dirty.round == 0)
            want = 0;
        volatile uint64_t *word = dirty.base + i * (PAGE / 8);
        if (sweep_skips(word))
            want = 0; /* never written */
        if (*word != want) {
            if (scan_wrong < ORACLE_FIRST)
                scan_first[scan_wrong] = (struct wrong_page){(uintptr_t)word, *word, want};
            scan_wrong++;
        }
    }
    uint64_t round = dirty.round;
    uintptr_t sweep_base = (uintptr_t)dirty.base;
    pthread_mutex_unlock(&dirty.mu);
    n_scan = scan_wrong < ORACLE_FIRST ? scan_wrong : ORACLE_FIRST;
    uint64_t sweep_wrong = take_findings(&sweep_found, sweep_first, &n_sweep);
    uint64_t hot_wrong = take_findings(&hot_found, hot_first, &n_hot);

    int n = snprintf(out, outsz, "ok sweep_base=0x%lx sweep_pages=%zu sweep_round=%llu scan_wrong=%zu sweep_wrong=%llu "
                     "hot_base=0x%lx hot_small_base=0x%lx hot_pages=%d hot_rounds=%llu hot_wrong=%llu first=",
                     (unsigned long)sweep_base, checked, (unsigned long long)round, scan_wrong,
                     (unsigned long long)sweep_wrong, (unsigned long)(uintptr_t)hot_base,
                     (unsigned long)(uintptr_t)hot_small, HOT_PAGES + HOT_SMALL_PAGES,
                     (unsigned long long)atomic_load_explicit(&hot_rounds, memory_order_relaxed),
                     (unsigned long long)hot_wrong);
    n = append_wrong(out, outsz, n, scan_first, n_scan, 0);
    n = append_wrong(out, outsz, n, sweep_first, n_sweep, n_scan);
    n = append_wrong(out, outsz, n, hot_first, n_hot, n_scan + n_sweep);
    return n;
}

/* oracle_map: where the oracle's memory is in guest-physical terms, one address per 2 MiB page, so the
 * harness can check it from outside (a paused destination) when a crashed guest could not. */
static int cmd_oracle_map(char *out, size_t outsz)
{
    pthread_mutex_lock(&dirty.mu);
    int n = snprintf(out, outsz, "ok huge=%d hot=0x%llx sweep_pages=%zu sweep_vpn=0x%lx tlb_classes=%d "
                     "skip_classes=0x%llx sweep=", dirty.huge && hot_huge, (unsigned long long)phys_of(hot_base),
                     dirty.pages, (unsigned long)((uintptr_t)dirty.base / PAGE), TLB_CLASSES,
                     (unsigned long long)hot_classes);
    for (size_t off = 0; dirty.huge && off < dirty.pages * PAGE && (size_t)n < outsz; off += HUGE)
        n += snprintf(out + n, outsz - (size_t)n, "%s0x%llx", off ? "," : "",
                      (unsigned long long)phys_of((const volatile uint8_t *)dirty.base + off));
    for (size_t j = 0; j < HOT_SMALL_PAGES && (size_t)n < outsz; j++)
        n += snprintf(out + n, outsz - (size_t)n, "%s0x%llx", j ? "," : " hot_small=",
                      (unsigned long long)phys_of(hot_small + j * (PAGE / 8)));
    pthread_mutex_unlock(&dirty.mu);
    return n;
}

static int cmd_dirty(char **av, int ac, char *out, size_t outsz)
{
    double rate;
    uint64_t mib = 0;
    if (ac < 1 || parse_double(av[0], &rate) || (rate > 0 && (ac < 2 || parse_u64(av[1], &mib) || mib == 0)))
        return snprintf(out, outsz, "err usage: dirty <MiB_per_s> <region_MiB>");

    pthread_mutex_lock(&dirty.mu);
    int rc = 0;
    size_t want = rate > 0 ? (size_t)mib * (MIB / PAGE) : 0;
    if (want != dirty.pages) {
        /* Remap under the lock: the writer never sees a half-swapped region. */
        if (dirty.base)
            munmap((void *)dirty.base, dirty.huge ? (dirty.pages * PAGE + HUGE - 1) / HUGE * HUGE : dirty.pages * PAGE);
        dirty.base = NULL;
        dirty.pages = dirty.pos = 0;
        dirty.round = 0; /* fresh pages hold 0: round 0 */
        if (want) {
            void *p = map_oracle(want * PAGE, &dirty.huge);
            if (p == MAP_FAILED) {
                rc = snprintf(out, outsz, "err cannot map %llu MiB: %s", (unsigned long long)mib, strerror(errno));
                rate = 0;
            } else {
                dirty.base = p;
                dirty.pages = want;
            }
        }
    }
    dirty.rate_mibs = rate;
    if (!dirty.started && rate > 0) {
        pthread_t t;
        if (pthread_create(&t, NULL, dirty_main, NULL) == 0) {
            pthread_detach(t);
            dirty.started = 1;
        } else {
            rc = snprintf(out, outsz, "err cannot start dirty thread");
        }
    }
    pthread_cond_signal(&dirty.cv);
    size_t region = dirty.pages * PAGE / MIB;
    pthread_mutex_unlock(&dirty.mu);
    if (rc)
        return rc;
    return snprintf(out, outsz, "ok rate_mibs=%g region_mib=%zu", rate, region);
}

/* ---------- fill / verify: memory content survives migration ---------- */

static struct {
    uint64_t *base;
    size_t mib;
    uint64_t seed;
    int valid;
} fill;

static int cmd_fill(char **av, int ac, char *out, size_t outsz)
{
    uint64_t seed, mib;
    if (ac < 2 || parse_u64(av[0], &seed) || parse_u64(av[1], &mib) || mib == 0)
        return snprintf(out, outsz, "err usage: fill <seed> <MiB>");
    if (fill.base && fill.mib != mib) {
        munmap(fill.base, fill.mib * MIB);
        fill.base = NULL;
    }
    if (!fill.base) {
        void *p = mmap(NULL, mib * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            fill.valid = 0;
            return snprintf(out, outsz, "err cannot map %llu MiB: %s", (unsigned long long)mib, strerror(errno));
        }
        fill.base = p;
        fill.mib = mib;
    }
    size_t words = fill.mib * MIB / 8;
    for (size_t i = 0; i < words; i++)
        fill.base[i] = splitmix64(seed ^ i);
    fill.seed = seed;
    fill.valid = 1;
    /* base: where the pattern is, for a test that damages it behind the agent's back */
    return snprintf(out, outsz, "ok mib=%zu base=0x%lx", fill.mib, (unsigned long)(uintptr_t)fill.base);
}

static int cmd_verify(char *out, size_t outsz)
{
    if (!fill.valid)
        return snprintf(out, outsz, "err no pattern");
    size_t words = fill.mib * MIB / 8, bad = 0, first = 0;
    for (size_t i = 0; i < words; i++) {
        if (fill.base[i] != splitmix64(fill.seed ^ i)) {
            if (!bad++)
                first = i * 8;
        }
    }
    if (bad)
        return snprintf(out, outsz, "err bad_words=%zu first_bad_offset=%zu", bad, first);
    return snprintf(out, outsz, "ok bad_words=0 mib=%zu", fill.mib);
}

/* ---------- disk: content survives (storage) migration ---------- */

static int disk_open_error(char *out, size_t outsz)
{
    if (errno == ENOENT)
        return snprintf(out, outsz, "err no disk");
    return snprintf(out, outsz, "err open %s: %s", DISK, strerror(errno));
}

static int cmd_diskwrite(char **av, int ac, char *out, size_t outsz)
{
    uint64_t seed, mib;
    if (ac < 2 || parse_u64(av[0], &seed) || parse_u64(av[1], &mib) || mib == 0)
        return snprintf(out, outsz, "err usage: diskwrite <seed> <MiB>");
    int fd = open(DISK, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return disk_open_error(out, outsz);
    uint64_t *buf = malloc(MIB), h = FNV_OFFSET;
    int rc = 0;
    for (uint64_t m = 0; buf && m < mib && !rc; m++) {
        for (size_t i = 0; i < MIB / 8; i++)
            buf[i] = htole64(splitmix64(seed ^ (m * (MIB / 8) + i)));
        h = fnv1a(h, (const uint8_t *)buf, MIB);
        errno = 0;
        if (pwrite(fd, buf, MIB, (off_t)(m * MIB)) != (ssize_t)MIB)
            rc = snprintf(out, outsz, "err write at MiB %llu: %s", (unsigned long long)m,
                          errno ? strerror(errno) : "short write (disk too small?)");
    }
    if (!buf)
        rc = snprintf(out, outsz, "err out of memory");
    if (!rc && fsync(fd))
        rc = snprintf(out, outsz, "err fsync: %s", strerror(errno));
    free(buf);
    close(fd);
    return rc ? rc : snprintf(out, outsz, "ok mib=%llu sum=%016llx", (unsigned long long)mib, (unsigned long long)h);
}

static int cmd_disksum(char **av, int ac, char *out, size_t outsz)
{
    uint64_t mib = 0;
    if (ac >= 1 && (parse_u64(av[0], &mib) || mib == 0))
        return snprintf(out, outsz, "err usage: disksum [MiB]");
    /* O_DIRECT so we hash what is on the disk, not the page cache. */
    int fd = open(DISK, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0 && errno == EINVAL)
        fd = open(DISK, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return disk_open_error(out, outsz);
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size)) {
        close(fd);
        return snprintf(out, outsz, "err size of %s: %s", DISK, strerror(errno));
    }
    if (mib && mib * MIB < size)
        size = mib * MIB;
    void *buf = NULL;
    if (posix_memalign(&buf, PAGE, MIB)) {
        close(fd);
        return snprintf(out, outsz, "err out of memory");
    }
    uint64_t h = FNV_OFFSET, done = 0;
    while (done < size) {
        size_t want = size - done < MIB ? (size_t)(size - done) : MIB;
        ssize_t n = pread(fd, buf, want, (off_t)done);
        if (n <= 0)
            break;
        h = fnv1a(h, buf, (size_t)n);
        done += (uint64_t)n;
    }
    free(buf);
    close(fd);
    if (done < size)
        return snprintf(out, outsz, "err read stopped at byte %llu", (unsigned long long)done);
    return snprintf(out, outsz, "ok bytes=%llu sum=%016llx", (unsigned long long)done, (unsigned long long)h);
}

/* ---------- diskstream: sequence-numbered writes in flight during a migration ----------
 *
 * A thread writes 4 KiB blocks in order from STREAM_OFFSET, each holding a magic, the seed
 * and its sequence number, with O_DIRECT|O_DSYNC: a write that returned is acknowledged,
 * i.e. on the guest's stable storage. After a (storage) migration every acknowledged block
 * must be on the destination's disk: `diskstream check` reads them back.
 */

#define STREAM_OFFSET (8 * MIB) /* after the region diskwrite/disksum use by default */
#define STREAM_MAGIC 0x4c41425354524d31ULL /* "LABSTRM1" */

static struct {
    pthread_mutex_t mu;
    int running, stop;
    pthread_t thread;
    uint64_t seed, acked, blocks, rate; /* blocks per second */
    char error[160];
} stream = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void stream_block(uint64_t *buf, uint64_t seed, uint64_t seq)
{
    for (size_t i = 0; i < PAGE / 8; i++)
        buf[i] = htole64(splitmix64(seed ^ (seq * (PAGE / 8) + i)));
    buf[0] = htole64(STREAM_MAGIC);
    buf[1] = htole64(seed);
    buf[2] = htole64(seq);
}

static void *stream_main(void *unused)
{
    (void)unused;
    uint64_t *buf = NULL;
    int fd = open(DISK, O_WRONLY | O_DIRECT | O_DSYNC | O_CLOEXEC);
    if (fd < 0 || posix_memalign((void **)&buf, PAGE, PAGE)) {
        pthread_mutex_lock(&stream.mu);
        snprintf(stream.error, sizeof stream.error, "open %s: %s", DISK, strerror(errno));
        stream.running = 0;
        pthread_mutex_unlock(&stream.mu);
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    uint64_t next = clock_ns(CLOCK_MONOTONIC), period = 1000000000ULL / stream.rate;
    for (uint64_t seq = 0;; seq++) {
        pthread_mutex_lock(&stream.mu);
        int stop = stream.stop || seq >= stream.blocks;
        pthread_mutex_unlock(&stream.mu);
        if (stop)
            break;
        stream_block(buf, stream.seed, seq);
        if (pwrite(fd, buf, PAGE, (off_t)(STREAM_OFFSET + seq * PAGE)) != (ssize_t)PAGE) {
            pthread_mutex_lock(&stream.mu);
            snprintf(stream.error, sizeof stream.error, "write of block %llu: %s", (unsigned long long)seq,
                     strerror(errno));
            pthread_mutex_unlock(&stream.mu);
            break;
        }
        pthread_mutex_lock(&stream.mu);
        stream.acked = seq + 1;
        pthread_mutex_unlock(&stream.mu);
        next += period;
        sleep_until(next);
    }
    free(buf);
    close(fd);
    return NULL;
}

static int cmd_diskstream(char **av, int ac, char *out, size_t outsz)
{
    const char *usage = "err usage: diskstream start <seed> <blocks_per_s> | stop | check";
    if (ac < 1)
        return snprintf(out, outsz, "%s", usage);
    if (!strcmp(av[0], "start")) {
        uint64_t seed, rate, size = 0;
        if (ac < 3 || parse_u64(av[1], &seed) || parse_u64(av[2], &rate) || rate == 0)
            return snprintf(out, outsz, "%s", usage);
        int fd = open(DISK, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return disk_open_error(out, outsz);
        int sized = ioctl(fd, BLKGETSIZE64, &size);
        close(fd);
        if (sized || size <= STREAM_OFFSET)
            return snprintf(out, outsz, "err disk too small for a stream (%llu bytes)", (unsigned long long)size);
        pthread_mutex_lock(&stream.mu);
        if (stream.running) {
            pthread_mutex_unlock(&stream.mu);
            return snprintf(out, outsz, "err a stream is running");
        }
        stream.seed = seed, stream.rate = rate, stream.acked = 0, stream.stop = 0, stream.error[0] = 0;
        stream.blocks = (size - STREAM_OFFSET) / PAGE;
        stream.running = pthread_create(&stream.thread, NULL, stream_main, NULL) == 0;
        int ok = stream.running;
        pthread_mutex_unlock(&stream.mu);
        return ok ? snprintf(out, outsz, "ok blocks=%llu", (unsigned long long)stream.blocks)
                  : snprintf(out, outsz, "err cannot start the stream thread");
    }
    if (!strcmp(av[0], "stop")) {
        pthread_mutex_lock(&stream.mu);
        int running = stream.running;
        stream.stop = 1;
        pthread_mutex_unlock(&stream.mu);
        if (running)
            pthread_join(stream.thread, NULL);
        pthread_mutex_lock(&stream.mu);
        stream.running = 0;
        int n = snprintf(out, outsz, "%s acked=%llu error=%s", stream.error[0] ? "err" : "ok",
                         (unsigned long long)stream.acked, stream.error[0] ? stream.error : "none");
        pthread_mutex_unlock(&stream.mu);
        return n;
    }
    if (!strcmp(av[0], "check")) {
        pthread_mutex_lock(&stream.mu);
        uint64_t acked = stream.acked, seed = stream.seed;
        int running = stream.running;
        pthread_mutex_unlock(&stream.mu);
        if (running)
            return snprintf(out, outsz, "err stop the stream first");
        int fd = open(DISK, O_RDONLY | O_DIRECT | O_CLOEXEC);
        uint64_t *buf = NULL, *want = malloc(PAGE), wrong = 0, first = 0;
        if (fd < 0 || !want || posix_memalign((void **)&buf, PAGE, PAGE)) {
            if (fd >= 0)
                close(fd);
            free(want);
            return fd < 0 ? disk_open_error(out, outsz) : snprintf(out, outsz, "err out of memory");
        }
        for (uint64_t seq = 0; seq < acked; seq++) {
            stream_block(want, seed, seq);
            if (pread(fd, buf, PAGE, (off_t)(STREAM_OFFSET + seq * PAGE)) != (ssize_t)PAGE ||
                memcmp(buf, want, PAGE)) {
                if (!wrong++)
                    first = seq;
            }
        }
        free(buf);
        free(want);
        close(fd);
        return snprintf(out, outsz, "ok checked=%llu wrong=%llu first_wrong=%lld", (unsigned long long)acked,
                        (unsigned long long)wrong, wrong ? (long long)first : -1LL);
    }
    return snprintf(out, outsz, "%s", usage);
}

/* ---------- (2)-(5) control socket ---------- */

static int cmd_info(char *out, size_t outsz)
{
    struct sysinfo si;
    unsigned long long mem_kib = 0;
    if (sysinfo(&si) == 0)
        mem_kib = (unsigned long long)si.totalram * si.mem_unit / 1024;
    return snprintf(out, outsz, "ok name=%s boot_id=%s uptime_ms=%llu mem_total_kib=%llu hb_sent=%llu dirty_mibs=%.2f",
                    cfg.name, boot_id_text, (unsigned long long)(clock_ns(CLOCK_BOOTTIME) / 1000000ULL), mem_kib,
                    (unsigned long long)atomic_load(&hb_sent), atomic_load(&dirty_measured));
}

/* Runs one "C <reqid> <cmd> [args]" line; returns 1 if we must power off. */
static int run_command(char *line, char *reply, size_t replysz)
{
    char *av[16], *save = NULL;
    int ac = 0;
    for (char *t = strtok_r(line, " \t\r\n", &save); t && ac < 16; t = strtok_r(NULL, " \t\r\n", &save))
        av[ac++] = t;
    /* av[0] is "C" */
    if (ac < 3) {
        snprintf(reply, replysz, "R %s err usage: C <reqid> <cmd> [args]", ac > 1 ? av[1] : "-");
        return 0;
    }
    int n = snprintf(reply, replysz, "R %.64s ", av[1]);
    char *out = reply + n;
    size_t outsz = replysz - (size_t)n;
    const char *cmd = av[2];
    char **args = av + 3;
    int nargs = ac - 3;

    if (!strcmp(cmd, "ping"))
        snprintf(out, outsz, "ok");
    else if (!strcmp(cmd, "info"))
        cmd_info(out, outsz);
    else if (!strcmp(cmd, "dirty"))
        cmd_dirty(args, nargs, out, outsz);
    else if (!strcmp(cmd, "fill"))
        cmd_fill(args, nargs, out, outsz);
    else if (!strcmp(cmd, "verify"))
        cmd_verify(out, outsz);
    else if (!strcmp(cmd, "oracle"))
        cmd_oracle(out, outsz);
    else if (!strcmp(cmd, "oracle_map"))
        cmd_oracle_map(out, outsz);
    else if (!strcmp(cmd, "diskwrite"))
        cmd_diskwrite(args, nargs, out, outsz);
    else if (!strcmp(cmd, "disksum"))
        cmd_disksum(args, nargs, out, outsz);
    else if (!strcmp(cmd, "diskstream"))
        cmd_diskstream(args, nargs, out, outsz);
    else if (!strcmp(cmd, "poweroff")) {
        snprintf(out, outsz, "ok");
        return 1;
    } else
        snprintf(out, outsz, "err unknown command");
    return 0;
}

/* The runner resends a command until it gets the reply; answering a resend
 * from this cache keeps every command at-most-once (no second fill/diskwrite). */
#define REPLY_CACHE 8
static struct {
    char reqid[65];
    char reply[1024];
} replies[REPLY_CACHE];
static unsigned replies_next;

static const char *cached_reply(const char *line)
{
    char reqid[65];
    if (sscanf(line, "C %64s", reqid) != 1)
        return NULL;
    for (unsigned i = 0; i < REPLY_CACHE; i++)
        if (replies[i].reqid[0] && !strcmp(replies[i].reqid, reqid))
            return replies[i].reply;
    return NULL;
}

static void remember_reply(const char *line, const char *reply)
{
    unsigned i = replies_next++ % REPLY_CACHE;
    if (sscanf(line, "C %64s", replies[i].reqid) != 1)
        replies[i].reqid[0] = 0;
    snprintf(replies[i].reply, sizeof replies[i].reply, "%s", reply);
}

/* Stop sending and take eth0 down before reboot(), as an init system's shutdown does. The guest
 * kernel (Debian 6.1.192) resets virtio devices in device_shutdown(); a heartbeat sent after that
 * spins for good in virtio-net's start_xmit (virtqueue_enable_cb_delayed on the broken queue), and
 * at SCHED_FIFO it starves the poweroff itself: a soft lockup, seen in CI (the hang reported in
 * github.com/ejc3/fcvm/issues/990). */
static void quiesce_network(void)
{
    atomic_store(&powering_off, 1);
    usleep(20000); /* the heartbeat thread sees the flag at its next beat */
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "eth0");
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags &= ~IFF_UP;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr))
            console("LAB-AGENT-ERROR eth0 down: %s", strerror(errno));
    }
    close(fd);
}

static void serve(int fd)
{
    char buf[2048], line[2048], reply[1024];
    for (;;) {
        struct sockaddr_in from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &fromlen);
        if (n <= 0)
            continue;
        if (buf[0] == 'E') { /* echo probe: answer as fast as we can */
            sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fromlen);
            continue;
        }
        if (n < 2 || buf[0] != 'C' || buf[1] != ' ')
            continue;
        buf[n] = 0;
        const char *again = cached_reply(buf);
        if (again) {
            sendto(fd, again, strlen(again), 0, (struct sockaddr *)&from, fromlen);
            continue;
        }
        memcpy(line, buf, (size_t)n + 1); /* run_command tokenizes buf in place */
        int off = run_command(buf, reply, sizeof reply);
        remember_reply(line, reply);
        sendto(fd, reply, strlen(reply), 0, (struct sockaddr *)&from, fromlen);
        if (off) {
            /* Cold migration wants a clean stop: flush, then power off. Wait a moment first,
             * so the reply above leaves the virtio NIC before the machine goes away. */
            usleep(200000);
            quiesce_network();
            sync();
            reboot(RB_POWER_OFF);
            console("LAB-AGENT-ERROR poweroff: %s", strerror(errno));
        }
    }
}

int main(void)
{
    read_cmdline();
    read_boot_id();

    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fatal("control socket");
    struct sockaddr_in any = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)cfg.ctl_port),
                              .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&any, sizeof any))
        fatal("bind control port");

    if (cfg.have_runner && cfg.hb_port > 0 && !cfg.probe) {
        pthread_t t;
        if (pthread_create(&t, NULL, heartbeat_main, NULL))
            fatal("start heartbeat thread");
    }
    /* READY only once both sockets exist: the runner may talk right away. */
    console("LAB-AGENT-READY name=%s boot_id=%s", cfg.name, boot_id_text);
    if (cfg.probe)
        return 0;
    if (start_hot_set())
        fatal("start the oracle's hot set");
    serve(fd);
    return 0;
}

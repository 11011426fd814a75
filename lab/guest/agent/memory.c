#include "agent.h"

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
 * One round in ZERO_EVERY writes a page all-zero instead (its first word 0; the rest of a page is never
 * written), shifting with the round: QEMU sends such a page as a zero page, so a destination that keeps a
 * zero page's old data shows here as a page holding an older round (stamp() says what each page holds).
 *
 * A large sweep keeps evicting TCG's TLB entries, and the writes QEMU 7.2 loses
 * under TCG (upstream 03bfc2188f06) are those made through entries that stay
 * resident. So a second thread rewrites a small hot set of pages (far fewer
 * than the TLB holds) every millisecond, each write preceded by a check that
 * the page still holds the previous round's value. Its round counter lives in
 * a local the compiler keeps in a register: CPU state always migrates whole,
 * so the counter is right on the destination even when memory is not.
 */

#define ZERO_EVERY 7

/* What page `page` of the sweep holds after round `round` (round 0: never written). */
static uint64_t stamp(size_t page, uint64_t round)
{
    return round && (page + round) % ZERO_EVERY == 0 ? 0 : round;
}

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
    _Atomic int wanted; /* commands waiting for mu: the writer gives it up to them */
} dirty = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
_Atomic double dirty_measured; /* MiB/s over the last second */

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

/* A command's hold on the writer's state. The writer at full speed would otherwise take mu back as soon as it
 * lets go (a mutex is not fair): on a slow guest (nested KVM, 5 MiB/s) `dirty 0 0` waited past its 60 s. */
static void lock_for_command(void)
{
    atomic_fetch_add(&dirty.wanted, 1);
    pthread_mutex_lock(&dirty.mu);
    atomic_fetch_sub(&dirty.wanted, 1);
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
        /* n pages written, not n steps: pages the sweep skips (the hot set's TLB classes) are neither
         * written nor counted, so the rate asked is the rate written and the rate reported. */
        size_t written = 0;
        for (size_t steps = 0; written < n && steps < n + dirty.pages; steps++) {
            /* At most one slice under mu, and none while a command waits for it: what is left stays owed. */
            if ((steps & 63) == 63 && (atomic_load(&dirty.wanted) ||
                                       clock_ns(CLOCK_MONOTONIC) - now > DIRTY_SLICE_NS))
                break;
            if (dirty.pos == 0)
                dirty.round++;
            volatile uint64_t *word = dirty.base + dirty.pos * (PAGE / 8);
            if (!sweep_skips(word)) {
                uint64_t found = *word, want = stamp(dirty.pos, dirty.round - 1);
                if (found != want)
                    note_wrong(&sweep_found, word, found, want);
                *word = stamp(dirty.pos, dirty.round);
                written++;
            }
            if (++dirty.pos == dirty.pages)
                dirty.pos = 0;
        }
        win_pages += written;
        owed += (double)(n - written);
        pthread_mutex_unlock(&dirty.mu);
        while (atomic_load(&dirty.wanted)) /* the command takes mu, then the writer waits for it in lock() */
            sleep_until(clock_ns(CLOCK_MONOTONIC) + 100000);

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

int start_hot_set(void)
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
int cmd_oracle(char *out, size_t outsz)
{
    struct wrong_page scan_first[ORACLE_FIRST], sweep_first[ORACLE_FIRST], hot_first[ORACLE_FIRST];
    size_t scan_wrong = 0, n_scan, n_sweep, n_hot;
    lock_for_command();
    size_t checked = dirty.pages;
    for (size_t i = 0; i < dirty.pages; i++) {
        /* Position 0 with a round begun means that round is complete (the next one starts at the next write):
         * every page holds it. Otherwise the pages before the position hold this round, the rest the last. */
        uint64_t want = dirty.round == 0 ? 0 : stamp(i, (i < dirty.pos || dirty.pos == 0) ? dirty.round : dirty.round - 1);
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
    size_t pos = dirty.pos;
    uintptr_t sweep_base = (uintptr_t)dirty.base;
    pthread_mutex_unlock(&dirty.mu);
    n_scan = scan_wrong < ORACLE_FIRST ? scan_wrong : ORACLE_FIRST;
    uint64_t sweep_wrong = take_findings(&sweep_found, sweep_first, &n_sweep);
    uint64_t hot_wrong = take_findings(&hot_found, hot_first, &n_hot);

    int n = snprintf(out, outsz, "ok sweep_base=0x%lx sweep_pages=%zu sweep_round=%llu sweep_pos=%zu scan_wrong=%zu sweep_wrong=%llu "
                     "hot_base=0x%lx hot_small_base=0x%lx hot_pages=%d hot_rounds=%llu hot_wrong=%llu first=",
                     (unsigned long)sweep_base, checked, (unsigned long long)round, pos, scan_wrong,
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
int cmd_oracle_map(char *out, size_t outsz)
{
    lock_for_command();
    int n = snprintf(out, outsz, "ok huge=%d hot=0x%llx sweep_pages=%zu sweep_vpn=0x%lx tlb_classes=%d "
                     "skip_classes=0x%llx zero_every=%d sweep=", dirty.huge && hot_huge,
                     (unsigned long long)phys_of(hot_base), dirty.pages, (unsigned long)((uintptr_t)dirty.base / PAGE),
                     TLB_CLASSES, (unsigned long long)hot_classes, ZERO_EVERY);
    for (size_t off = 0; dirty.huge && off < dirty.pages * PAGE && (size_t)n < outsz; off += HUGE)
        n += snprintf(out + n, outsz - (size_t)n, "%s0x%llx", off ? "," : "",
                      (unsigned long long)phys_of((const volatile uint8_t *)dirty.base + off));
    for (size_t j = 0; j < HOT_SMALL_PAGES && (size_t)n < outsz; j++)
        n += snprintf(out + n, outsz - (size_t)n, "%s0x%llx", j ? "," : " hot_small=",
                      (unsigned long long)phys_of(hot_small + j * (PAGE / 8)));
    pthread_mutex_unlock(&dirty.mu);
    return n;
}

int cmd_dirty(char **av, int ac, char *out, size_t outsz)
{
    double rate;
    uint64_t mib = 0;
    if (ac < 1 || parse_double(av[0], &rate) || (rate > 0 && (ac < 2 || parse_u64(av[1], &mib) || mib == 0)))
        return snprintf(out, outsz, "err usage: dirty <MiB_per_s> <region_MiB>");

    lock_for_command();
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

int cmd_fill(char **av, int ac, char *out, size_t outsz)
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

int cmd_verify(char *out, size_t outsz)
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

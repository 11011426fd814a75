/* ---------- work: the guest's own pace, to measure the slowdown a migration causes ----------
 *
 * A steady, cheap unit of work: every WORK_PERIOD_NS an ordinary (SCHED_OTHER) thread updates one word
 * per 64 bytes of a 256 KiB buffer (4096 stores over 64 pages) and times it. The heartbeat carries the
 * running totals (units done, nanoseconds spent in them), so the runner sees per window how long one
 * unit took: dirty logging, auto-converge's throttle, postcopy's page faults and a host busy copying
 * memory all make it slower, which downtime does not show. About 2% of a TCG vCPU.
 */
#include "agent.h"

#define WORK_PERIOD_NS 10000000ULL
#define WORK_BYTES (256UL * 1024UL)
#define WORK_STRIDE 64UL

_Atomic uint64_t work_units;    /* units done since boot */
_Atomic uint64_t work_ns_total; /* time spent in them */

static void *work_main(void *unused)
{
    (void)unused;
    volatile uint64_t *buf = mmap(NULL, WORK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                                  -1, 0);
    if (buf == MAP_FAILED)
        return NULL;
    uint64_t next = clock_ns(CLOCK_MONOTONIC), round = 0;
    for (;;) {
        uint64_t began = clock_ns(CLOCK_MONOTONIC);
        round++;
        for (size_t i = 0; i < WORK_BYTES / sizeof *buf; i += WORK_STRIDE / sizeof *buf)
            buf[i] = buf[i] + round;
        uint64_t took = clock_ns(CLOCK_MONOTONIC) - began;
        atomic_fetch_add(&work_ns_total, took);
        atomic_fetch_add(&work_units, 1);
        next += WORK_PERIOD_NS;
        uint64_t now = clock_ns(CLOCK_MONOTONIC);
        if (now > next + WORK_PERIOD_NS)
            next = now; /* after a stall, no burst of catch-up units */
        sleep_until(next);
    }
    return NULL;
}

int start_work(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, work_main, NULL) != 0)
        return -1;
    pthread_detach(t);
    return 0;
}

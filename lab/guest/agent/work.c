/* ---------- work: the guest's own pace, to measure the slowdown a migration causes ----------
 *
 * A steady, cheap sample of work: every WORK_PERIOD_NS an ordinary (SCHED_OTHER) thread does WORK_UNITS
 * units of 16 stores spread over a 256 KiB buffer and times the sample with two clock reads only (a clock
 * read per unit starved QEMU's main loop under TCG: the guest's clocksource is emulated I/O there, and the
 * source's libvirt missed its keepalive). The heartbeat carries the running totals (units, nanoseconds the
 * samples took), so the runner sees the guest's work rate: dirty logging (TCG's slow path on a clean page),
 * auto-converge's throttle (a sample the vCPU is put to sleep in takes the sleep with it), postcopy's page
 * faults and a host busy copying memory all lower it, which downtime does not show. About 1% of a vCPU.
 */
#include "agent.h"

#define WORK_PERIOD_NS 10000000ULL
#define WORK_UNITS 256
#define WORK_BYTES (256UL * 1024UL)
#define WORK_STORES 16 /* one unit: 16 stores, 4 KiB apart, moving on through the buffer */

_Atomic uint64_t work_units;    /* units done since boot */
_Atomic uint64_t work_ns_total; /* wall time of the samples they were done in */

static void *work_main(void *unused)
{
    (void)unused;
    volatile uint64_t *buf = mmap(NULL, WORK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                                  -1, 0);
    if (buf == MAP_FAILED)
        return NULL;
    uint64_t next = clock_ns(CLOCK_MONOTONIC), round = 0;
    size_t at = 0;
    const size_t words = WORK_BYTES / sizeof *buf, step = PAGE / sizeof *buf;
    for (;;) {
        uint64_t began = clock_ns(CLOCK_MONOTONIC), now;
        for (int u = 0; u < WORK_UNITS; u++) {
            round++;
            for (int k = 0; k < WORK_STORES; k++, at = (at + step + 1) % words)
                buf[at] = buf[at] + round;
        }
        now = clock_ns(CLOCK_MONOTONIC);
        atomic_fetch_add(&work_ns_total, now - began);
        atomic_fetch_add(&work_units, WORK_UNITS);
        next += WORK_PERIOD_NS;
        now = clock_ns(CLOCK_MONOTONIC);
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

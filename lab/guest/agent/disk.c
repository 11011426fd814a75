#include "agent.h"

/* ---------- disk: content survives (storage) migration ---------- */

static int disk_open_error(char *out, size_t outsz)
{
    if (errno == ENOENT)
        return snprintf(out, outsz, "err no disk");
    return snprintf(out, outsz, "err open %s: %s", DISK, strerror(errno));
}

int cmd_diskwrite(char **av, int ac, char *out, size_t outsz)
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

int cmd_disksum(char **av, int ac, char *out, size_t outsz)
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

int cmd_diskstream(char **av, int ac, char *out, size_t outsz)
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

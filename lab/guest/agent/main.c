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
 * Sources: main.c (configuration, heartbeats, control socket), util.c, memory.c (fill/verify,
 * dirty writer, oracle), disk.c (diskwrite/disksum, diskstream); agent.h is what they share.
 * Build: gcc -O2 -static -Wall -Wextra -pthread -o agent *.c (lab/guest/image.py does)
 */
#include "agent.h"

struct config cfg = {.name = "guest", .hb_us = 1000, .ctl_port = 7777};
static char boot_id_text[37];
static uint8_t boot_id_bin[16];
static atomic_uint_least64_t hb_sent;
static atomic_int powering_off; /* set once: the heartbeat stops sending */

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
    uint64_t work_units; /* work.c's running totals: the runner derives the guest's pace per window */
    uint64_t work_ns;
};
_Static_assert(sizeof(struct heartbeat) == 64, "heartbeat wire size");

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
                               .uptime_ms = htole64(clock_ns(CLOCK_BOOTTIME) / 1000000ULL),
                               .work_units = htole64(atomic_load(&work_units)),
                               .work_ns = htole64(atomic_load(&work_ns_total))};
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
    if (start_work())
        fatal("start the steady work");
    serve(fd);
    return 0;
}

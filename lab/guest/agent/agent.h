/* What the agent's sources share: the build's includes, sizes, the guest's configuration and the
 * helpers and commands each file offers the others. */
#ifndef LAB_AGENT_H
#define LAB_AGENT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
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
#define FNV_OFFSET 0xcbf29ce484222325ULL

struct config {
    char name[64];
    struct in_addr runner;
    int have_runner;
    int hb_port;
    long hb_us;
    int ctl_port;
    int probe;
};

extern struct config cfg;
extern _Atomic double dirty_measured; /* MiB/s the dirty writer achieved over the last second */
extern _Atomic uint64_t work_units;    /* work.c: units of the steady work done since boot */
extern _Atomic uint64_t work_ns_total; /* work.c: nanoseconds spent in them */
int start_work(void);

/* util.c */
uint64_t clock_ns(clockid_t clk);
struct timespec ns_to_ts(uint64_t ns);
void sleep_until(uint64_t mono_ns);
void console(const char *fmt, ...);
void fatal(const char *what);
uint64_t splitmix64(uint64_t x);
uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n);
int parse_u64(const char *s, uint64_t *out);
int parse_double(const char *s, double *out);

/* memory.c: fill/verify, the dirty writer and the dirty-page oracle */
int cmd_oracle(char *out, size_t outsz);
int cmd_oracle_map(char *out, size_t outsz);
int cmd_dirty(char **av, int ac, char *out, size_t outsz);
int cmd_fill(char **av, int ac, char *out, size_t outsz);
int cmd_verify(char *out, size_t outsz);
int start_hot_set(void);

/* disk.c: diskwrite/disksum, diskstream */
int cmd_diskwrite(char **av, int ac, char *out, size_t outsz);
int cmd_disksum(char **av, int ac, char *out, size_t outsz);
int cmd_diskstream(char **av, int ac, char *out, size_t outsz);

#endif

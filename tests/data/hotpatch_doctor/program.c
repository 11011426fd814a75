/*
 * A small program with one function of each shape the hot patch doctor knows
 * (tests/test_hotpatch_doctor.py patches it and asks the doctor). Built with
 * gcc -g -O2 -pthread; noinline/noipa keep the shapes the test means.
 */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "shapes.h"

#define NOINLINE __attribute__((noinline, noipa))
#define PAUSE_SECONDS 1
#define WEIGHT 2

struct counter {
    long hits;
    int last;
};

int limit = 10;
static volatile int stop_worker;
typedef void (*init_fn)(void);
static init_fn registered[4];
static int registered_count;
static int types_known;
static struct counter seen;

static inline int add_one(int x)
{
    return x + 1;
}

NOINLINE int compute(int v)
{
    return add_one(v) * WEIGHT + add_one(v * 3);
}

NOINLINE int scale(int v, int k)
{
    seen.hits++;
    seen.last = v;
    return v * k;
}

NOINLINE unsigned long fibonacci(unsigned n)
{
    if (n < 2) {
        return n;
    }
    return fibonacci(n - 1) + fibonacci(n - 2);
}

NOINLINE int next_ticket(void)
{
    static int ticket = 100;

    return ticket++;
}

NOINLINE int is_odd(unsigned n);

NOINLINE int is_even(unsigned n)
{
    return n == 0 ? 1 : is_odd(n - 1);
}

NOINLINE int is_odd(unsigned n)
{
    return n == 0 ? 0 : is_even(n - 1);
}

NOINLINE void nothing(void)
{
}

NOINLINE __attribute__((noreturn)) void die(const char *why)
{
    fprintf(stderr, "fatal: %s\n", why);
    exit(2);
}

NOINLINE void serve_forever(void)
{
    for (;;) {
        printf("%d\n", compute(limit));
        sleep(PAUSE_SECONDS);
    }
}

NOINLINE void print_table(int n)
{
    for (int i = 0;; i++) {
        if (i >= n) {
            exit(0); /* the loop's way out ends the process: an edge out all the same */
        }
        printf("row %d\n", i);
    }
}

static void *worker(void *arg)
{
    while (!stop_worker) {
        usleep(1000 * compute((int)(long)arg));
    }
    return NULL;
}

NOINLINE void register_module_init(init_fn fn)
{
    registered[registered_count++] = fn;
}

static void register_types(void)
{
    types_known = 3;
}

static void __attribute__((constructor)) do_init_register_types(void)
{
    register_module_init(register_types);
}

static void read_verbosity(void)
{
    types_known += getenv("VERBOSE") != NULL;
}

static void __attribute__((constructor)) setup_defaults(void)
{
    limit = getenv("LIMIT") ? atoi(getenv("LIMIT")) : limit;
    read_verbosity();
}

NOINLINE int checked(int v)
{
    assert(v >= 0);
    return v + __LINE__;
}

int main(int argc, char **argv)
{
    pthread_t thread;
    struct point p = { argc, 2 };

    for (int i = 0; i < registered_count; i++) {
        registered[i]();
    }
    pthread_create(&thread, NULL, worker, (void *)(long)argc);
    if (argc > 3) {
        die("too many arguments");
    }
    printf("%d %d %lu %d %d %d\n", scale(compute(area(&p)), SCALE_DEFAULT), is_even(argc), fibonacci(argc),
           checked(argc), types_known, limit);
    nothing();
    printf("ticket %d\n", next_ticket());
    if (argc > 4) {
        print_table(argc);
    }
    if (argc > 2) {
        serve_forever();
    }
    stop_worker = 1;
    pthread_join(thread, NULL);
    return 0;
}

/*
 * util.c - clocks and the CPU count.
 *
 * core_now_us is monotonic (intervals, deadlines, timers); core_wall_time is
 * the calendar clock (timestamps in logs and job records) and may jump.
 * core_cpu_count counts the CPUs in this process's affinity mask, which is
 * what `taskset` and container cpusets restrict, sizing the mask for
 * machines with more than CPU_SETSIZE CPUs. All any thread.
 */
#define _GNU_SOURCE /* sched_getaffinity, CPU_ALLOC */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

uint64_t core_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

double core_wall_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int core_cpu_count(void) {
    for (int n_cpus = CPU_SETSIZE; n_cpus <= (1 << 20); n_cpus *= 2) {
        cpu_set_t *set = CPU_ALLOC((size_t)n_cpus);
        if (!set)
            break;
        size_t size = CPU_ALLOC_SIZE((size_t)n_cpus);
        CPU_ZERO_S(size, set);
        if (sched_getaffinity(0, size, set) == 0) {
            int count = CPU_COUNT_S(size, set);
            CPU_FREE(set);
            return count > 0 ? count : 1;
        }
        int failure = errno;
        CPU_FREE(set);
        if (failure != EINVAL)
            break;
        /* EINVAL: the kernel's mask is larger than ours; try a larger one. */
    }
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
}

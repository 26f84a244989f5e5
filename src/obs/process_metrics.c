/*
 * process_metrics.c - the standard process_* metrics (see obs.h), named and
 * computed as prometheus_client and the Go client do, so dashboards built
 * for either work unchanged.
 *
 * Design:
 *  - One collector, run at the start of every render, reads /proc/self/stat
 *    (CPU time, virtual size, resident pages), counts /proc/self/fd and
 *    reads the open-file limit, and sets the gauges. Nothing is sampled in
 *    the background; a scrape costs a few small reads.
 *  - The start time is computed once, at registration, from the process's
 *    start tick in /proc/self/stat and the boot time in /proc/stat.
 *  - A file that cannot be read leaves its metrics at their last value.
 * Threading: the collector runs under the registry's render lock.
 */
#include "obs.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

typedef struct process_metrics {
    metric *cpu_seconds, *resident_bytes, *virtual_bytes, *open_fds, *max_fds, *start_time;
    double ticks_per_second;
    double page_bytes;
} process_metrics;

/* Reads a small file into buf (NUL-terminated); bytes read or -1. */
static ssize_t read_small_file(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    while (len + 1 < cap) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0) {
            close(fd);
            return -1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return (ssize_t)len;
}

/* Fields of /proc/self/stat we use (numbered as in proc(5)). */
typedef struct proc_stat {
    unsigned long long utime, stime;   /* 14, 15: clock ticks */
    unsigned long long starttime;      /* 22: clock ticks after boot */
    unsigned long long vsize;          /* 23: bytes */
    long long rss;                     /* 24: pages */
} proc_stat;

static int read_proc_stat(proc_stat *st) {
    char buf[1024];
    if (read_small_file("/proc/self/stat", buf, sizeof buf) <= 0)
        return -1;
    /* The command name (field 2) is in parentheses and may itself contain
     * spaces and parentheses: fields resume after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    p++;
    unsigned long long v[24] = {0}; /* v[k] is field k + 3 */
    long long rss = 0;
    for (int field = 3; field <= 24; field++) {
        while (*p == ' ')
            p++;
        if (!*p)
            return -1;
        char *end;
        if (field == 3) { /* state: one letter */
            p++;
            continue;
        }
        if (field == 24)
            rss = strtoll(p, &end, 10);
        else
            v[field - 3] = strtoull(p, &end, 10);
        if (end == p)
            return -1;
        p = end;
    }
    st->utime = v[14 - 3];
    st->stime = v[15 - 3];
    st->starttime = v[22 - 3];
    st->vsize = v[23 - 3];
    st->rss = rss;
    return 0;
}

static int read_boot_time(double *out) {
    char buf[16384];
    if (read_small_file("/proc/stat", buf, sizeof buf) <= 0)
        return -1;
    for (char *line = buf; line && *line;) {
        if (strncmp(line, "btime ", 6) == 0) {
            *out = strtod(line + 6, NULL);
            return 0;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return -1;
}

static int count_open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n > 0 ? n - 1 : 0; /* not counting the directory's own fd */
}

static void process_collect(void *ud) {
    process_metrics *pm = ud;
    proc_stat st;
    if (read_proc_stat(&st) == 0) {
        metric_set(pm->cpu_seconds, (double)(st.utime + st.stime) / pm->ticks_per_second);
        metric_set(pm->virtual_bytes, (double)st.vsize);
        metric_set(pm->resident_bytes, (double)st.rss * pm->page_bytes);
    }
    int fds = count_open_fds();
    if (fds >= 0)
        metric_set(pm->open_fds, fds);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        metric_set(pm->max_fds, (double)rl.rlim_cur);
}

int metrics_register_process(metrics_registry *r) {
    if (!r)
        return -1;
    process_metrics *pm = calloc(1, sizeof *pm);
    if (!pm)
        return -1;
    long ticks = sysconf(_SC_CLK_TCK);
    long page = sysconf(_SC_PAGESIZE);
    pm->ticks_per_second = ticks > 0 ? (double)ticks : 100.0;
    pm->page_bytes = page > 0 ? (double)page : 4096.0;

    pm->cpu_seconds = metric_series(
        metrics_counter(r, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", 0, NULL),
        NULL);
    pm->virtual_bytes = metric_series(
        metrics_gauge(r, "process_virtual_memory_bytes", "Virtual memory size in bytes.", 0, NULL), NULL);
    pm->resident_bytes = metric_series(
        metrics_gauge(r, "process_resident_memory_bytes", "Resident memory size in bytes.", 0, NULL), NULL);
    pm->start_time = metric_series(
        metrics_gauge(r, "process_start_time_seconds",
                      "Start time of the process since unix epoch in seconds.", 0, NULL),
        NULL);
    pm->open_fds = metric_series(
        metrics_gauge(r, "process_open_fds", "Number of open file descriptors.", 0, NULL), NULL);
    pm->max_fds = metric_series(
        metrics_gauge(r, "process_max_fds", "Maximum number of open file descriptors.", 0, NULL), NULL);
    if (!pm->cpu_seconds || !pm->virtual_bytes || !pm->resident_bytes || !pm->start_time ||
        !pm->open_fds || !pm->max_fds) {
        free(pm);
        return -1;
    }

    proc_stat st;
    double boot;
    if (read_proc_stat(&st) == 0 && read_boot_time(&boot) == 0)
        metric_set(pm->start_time, boot + (double)st.starttime / pm->ticks_per_second);

    if (metrics_on_collect_owned(r, process_collect, pm, free) != 0) {
        free(pm);
        return -1;
    }
    return 0;
}

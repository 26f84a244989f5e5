/*
 * obs.h - observability: the Prometheus metrics registry with its text
 * exposition, and the JSON-lines logger. The obs module's one public header.
 *
 * Metrics design:
 *  - A registry holds families (name, help, type, label names; for
 *    histograms the bucket bounds) in registration order; a family holds its
 *    labelled series in creation order. Nothing is ever removed before
 *    metrics_registry_destroy, so every pointer handed out stays valid until
 *    then and hot paths look a series up once and keep it.
 *  - Updates (metric_inc/add/set/observe) are lock-free C11 atomics on the
 *    series itself: no registry or family lock is taken. Counter and gauge
 *    values are doubles stored as 64-bit patterns (add is a CAS loop);
 *    histogram buckets are atomic counters, so any number of threads can
 *    update the same series at once.
 *  - Series lookup (metric_series) takes the family's mutex and hashes the
 *    label values: about 75 ns uncontended (measured with two labels). Families with no labels
 *    skip the lock. Rendering walks append-only lists and takes no lock that
 *    an update or a lookup takes.
 *  - Every update function accepts NULL and does nothing, so a failed
 *    registration (a NULL family, hence NULL series) never crashes a caller.
 *
 * Logging design: one JSON object per line, written with one write(2) under
 * a process-wide lock so lines from different threads never interleave; the
 * level and the output fd are process-wide atomics.
 *
 * Threads: every function here may be called from any thread, except
 * metrics_registry_destroy (no other call on that registry may be running
 * or follow it).
 */
#ifndef AISERVE_OBS_H
#define AISERVE_OBS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Lets the compiler check that a variadic list ends with NULL. */
#if defined(__GNUC__)
#define METRICS_SENTINEL __attribute__((sentinel))
#else
#define METRICS_SENTINEL
#endif

/* ------------------------------------------------------------------------
 * Metrics
 * ------------------------------------------------------------------------ */

/* The Content-Type of metrics_render's output (text exposition 0.0.4). */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Label sets per family beyond which metric_series returns NULL (and logs
 * one warning per family): a guard against unbounded label values. */
#define METRICS_MAX_SERIES 10000
/* Most label names one family may have. */
#define METRICS_MAX_LABELS 16

typedef struct metrics_registry metrics_registry;
typedef struct metric_family metric_family; /* a name + help + type + label names */
typedef struct metric metric;               /* one labelled series */

/* prometheus_client's default histogram buckets, in seconds:
 * .005 .01 .025 .05 .075 .1 .25 .5 .75 1 2.5 5 7.5 10 (+Inf implicit). */
extern const double metrics_latency_buckets[];
extern const int metrics_n_latency_buckets;

/* Writes n bounds start, start*factor, ... into out (caller-owned, n
 * doubles). Returns 0, or -1 (out untouched) unless start > 0,
 * factor > 1 and n >= 1. */
int metrics_exponential_buckets(double start, double factor, int n, double *out);
/* Writes n bounds start, start+width, ... into out. Returns 0, or -1 unless
 * width > 0 and n >= 1. */
int metrics_linear_buckets(double start, double width, int n, double *out);

/* Returns a new empty registry (owned by the caller, freed with
 * metrics_registry_destroy), or NULL on ENOMEM. */
metrics_registry *metrics_registry_create(void);

/* Frees the registry, its families and series, and calls the ud_free of
 * every collector. NULL is fine. No other call on it, and no use of a
 * family or series pointer from it, may run at the same time or later. */
void metrics_registry_destroy(metrics_registry *r);

/* Register a family. `name` must match [a-zA-Z_:][a-zA-Z0-9_:]*; each of
 * the n_labels (0..METRICS_MAX_LABELS) label names must match
 * [a-zA-Z_][a-zA-Z0-9_]*, must not start with "__", and must be distinct
 * ("le" is also reserved in histograms). `help` may be NULL (empty).
 * name, help and label_names are borrowed for the call (copied).
 *
 * Returns the family, owned by the registry and valid until it is
 * destroyed, or NULL when a name is invalid, when the name or one of the
 * sample names it renders (a histogram's _bucket, _sum, _count) is already
 * used by another family, or on ENOMEM. A family with no labels gets its one
 * series at once, so it renders (as 0) before it is ever touched. Any
 * thread, at any time (registration is usually done at startup). */
metric_family *metrics_counter(metrics_registry *r, const char *name, const char *help, int n_labels,
                               const char *const *label_names);
metric_family *metrics_gauge(metrics_registry *r, const char *name, const char *help, int n_labels,
                             const char *const *label_names);
/* upper_bounds: n_bounds finite, strictly increasing bounds (borrowed,
 * copied); +Inf is implicit, and a trailing +Inf given explicitly is
 * dropped. upper_bounds NULL means metrics_latency_buckets (n_bounds is then
 * ignored). */
metric_family *metrics_histogram(metrics_registry *r, const char *name, const char *help,
                                 int n_labels, const char *const *label_names,
                                 const double *upper_bounds, int n_bounds);

/* Find-or-create the series for these label values: n_labels strings,
 * borrowed for the call (copied); label_values may be NULL when the family
 * has no labels. Invalid UTF-8 in a value is replaced by U+FFFD (the scrape
 * must stay valid UTF-8). Returns the series, owned by the registry and
 * valid until it is destroyed, or NULL when f is NULL, a value is NULL, the
 * family already has METRICS_MAX_SERIES series, or on ENOMEM. Concurrent
 * calls with the same values return the same series. Any thread; costs one
 * mutex and a hash of the values, so look the series up once and keep it. */
metric *metric_series(metric_family *f, const char *const *label_values);

/* metric_series with the label values as arguments: exactly as many
 * `const char *` values as the family has labels, then NULL. Returns NULL if
 * the count is wrong (as far as a NULL-terminated list can tell). */
metric *metric_get(metric_family *f, ...) METRICS_SENTINEL;

/* Updates. All are lock-free, any thread, and do nothing on NULL or on a
 * series of the wrong type. */
void metric_inc(metric *m);               /* counter, gauge: += 1 */
void metric_dec(metric *m);               /* gauge: -= 1 */
void metric_add(metric *m, double v);     /* counter: += v (v < 0 or NaN ignored); gauge: += v */
/* gauge = v; also allowed on a counter that mirrors a total kept elsewhere
 * (process_cpu_seconds_total), in which case the caller keeps it monotonic. */
void metric_set(metric *m, double v);
/* histogram: counts v in the first bucket whose bound is >= v and adds it
 * to the sum. NaN is dropped (it would make _sum NaN forever). */
void metric_observe(metric *m, double v);

/* Counter or gauge: the current value. Histogram: the number of
 * observations. NULL: 0. */
double metric_value(const metric *m);
/* Histogram: the observation count and sum (either pointer may be NULL);
 * zeros for NULL or another type. The count is the sum of the buckets; the
 * sum may miss an observation that is in flight at the same moment. */
void metric_histogram_read(const metric *m, uint64_t *count, double *sum);

/* Adds a collector: fn(ud) is called at the start of every render, in the
 * order the collectors were added, so it can refresh gauges (queue depths,
 * model states, process metrics). ud is borrowed; ud_free, if not NULL, is
 * called with it by metrics_registry_destroy (taking it). Renders are
 * serialised, so collectors never run concurrently with each other; a
 * collector may create series and register families but must not call
 * metrics_render. Returns 0, or -1 on ENOMEM (ud_free not called). */
int metrics_on_collect(metrics_registry *r, void (*fn)(void *ud), void *ud);
int metrics_on_collect_owned(metrics_registry *r, void (*fn)(void *ud), void *ud,
                             void (*ud_free)(void *ud));

/* Runs the collectors, then renders the whole registry in the Prometheus
 * text exposition format 0.0.4: "# HELP" and "# TYPE" per family (families
 * in registration order, series in creation order); histograms as
 * name_bucket{...,le="..."} cumulative counts ending with le="+Inf", then
 * name_sum and name_count (always equal to the +Inf bucket). Values use
 * metrics_format_value; le values are written as prometheus_client writes
 * them ("0.005", "1.0", "+Inf") so queries written against the Python
 * service keep matching. Returns a malloc'd NUL-terminated string (the
 * caller frees it with free) and stores its length in *len (len may be
 * NULL), or NULL on ENOMEM. Any thread; renders are serialised. */
char *metrics_render(metrics_registry *r, size_t *len);

/* Formats a sample value so that Go's strconv.ParseFloat (and strtod) read
 * it back exactly: integers below 2^63 in plain digits ("42"), other finite
 * values in the shortest %g form that round-trips ("0.1", "1e+300"), and
 * "+Inf", "-Inf", "NaN". Writes at most cap bytes including the NUL (32 is
 * always enough) and returns the length written. */
size_t metrics_format_value(double v, char *buf, size_t cap);

/* Runs the collectors as a render does (serialised with renders), so that
 * the gauges they refresh are current; for readers other than a scrape. */
void metrics_collect(metrics_registry *r);

/* Reading the registry, for the history below. Families and series are
 * never removed, so what these return stays valid until the registry is
 * destroyed; walking is lock-free, as a render's is. */
metric_family *metrics_find(metrics_registry *r, const char *name); /* NULL when absent */
const char *metric_family_type(const metric_family *f);             /* "counter", "gauge", "histogram" */
int metric_family_labels(const metric_family *f, const char *const **names); /* count; names borrowed */
int metric_family_bounds(const metric_family *f, const double **bounds);     /* histogram bounds, +Inf not counted */
const metric *metric_family_first(const metric_family *f);          /* series in creation order */
const metric *metric_next(const metric *m);                         /* NULL after the last */
const char *const *metric_label_values(const metric *m);            /* one per label name */
/* Histogram: each bucket's own count (not cumulative; bounds + 1 of them,
 * the last +Inf) into counts, and the sum (may be NULL). */
void metric_histogram_buckets(const metric *m, uint64_t *counts, double *sum);

/* ------------------------------------------------------------------------
 * History: the last minutes of chosen metrics, one sample a second
 * ------------------------------------------------------------------------
 *
 * What the operator console draws the moment it opens, without Prometheus
 * (history.c). Each obs_history_tick samples every series of the tracked
 * families: a counter as its rate per second since the previous tick, a
 * gauge as its value, a histogram as the observations since the previous
 * tick with their mean and estimated p50, p90 and p99 (linear within a
 * bucket, as Prometheus's histogram_quantile). Each histogram family with
 * labels also gets one series over all its label values (labels null). A ring keeps
 * `seconds` samples; series beyond `max_series` are not tracked (counted
 * as dropped), so memory stays within seconds x max_series x 5 floats
 * whatever the traffic.
 *
 * Threads: tick from one thread (the server's main loop); json from any;
 * a mutex serialises them. */
typedef struct obs_history obs_history;

/* NULL on ENOMEM. families (names, borrowed for the call) may name families
 * registered later: they are looked up at every tick until found. */
obs_history *obs_history_create(metrics_registry *r, const char *const *families, int n_families,
                                int seconds, int max_series);
void obs_history_destroy(obs_history *h); /* NULL is fine */
/* Takes one sample of everything; now_ms: wall-clock milliseconds. */
void obs_history_tick(obs_history *h, int64_t now_ms);
/* {"interval_ms", "seconds", "t": [ms...], "series": [{"name", "type",
 * "labels", then "rate" | "value" | "count","mean","p50","p90","p99":
 * arrays aligned with t, null where the series had no sample or no
 * observation]}, "dropped_series"} for the samples taken after since_ms
 * (0: all kept), of the families whose names are in `only` (a
 * comma-separated list; NULL or "": all). A counter or histogram whose
 * samples there are all 0 or null is left out (a reader takes it as 0);
 * gauges are always there (a 0 is a state: a closed breaker, an empty
 * queue). malloc'd; NULL on ENOMEM. */
char *obs_history_json(obs_history *h, int64_t since_ms, const char *only, size_t *len);

/* Registers the standard process metrics, named as prometheus_client and
 * the Go client name them, refreshed from /proc at every render:
 * process_cpu_seconds_total, process_resident_memory_bytes,
 * process_virtual_memory_bytes, process_open_fds, process_max_fds,
 * process_start_time_seconds. Returns 0, or -1 if one of the names is taken
 * or on ENOMEM (families registered before the failure stay, at 0). */
int metrics_register_process(metrics_registry *r);

/* ------------------------------------------------------------------------
 * Logging
 * ------------------------------------------------------------------------ */

typedef enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 } log_level;

/* Parses a level name, case-insensitively: "debug", "info", "warn" or
 * "warning", "error", and Python's "critical" and "fatal" (both LOG_ERROR).
 * Returns 0 and stores *out, or -1 (out untouched). */
int log_level_parse(const char *s, log_level *out);
/* "debug", "info", "warning", "error" (as written in log lines); "unknown"
 * for a value outside the enum. Static string. */
const char *log_level_name(log_level l);

/* Process-wide minimum level (default LOG_INFO); atomic, any thread. */
void log_set_level(log_level l);
log_level log_get_level(void);
/* 1 if a line at level l would be written, else 0. */
int log_enabled(log_level l);

/* Where lines go (default 1, stdout). The fd is borrowed: the logger never
 * closes it, and the caller keeps it open while logging may happen. */
void log_set_output(int fd);

/* Writes one line:
 *   {"time":"2026-11-27T10:52:29.123Z","level":"info","msg":"...",...fields}
 * time is UTC with milliseconds. `fields` is a JSON object that is TAKEN
 * (decref'd by the call; NULL is fine; a non-object is logged under the key
 * "fields"). Its keys follow msg in their order; a field named time, level
 * or msg is written as "fields.<name>" so it cannot replace them. Invalid
 * UTF-8 in msg is replaced by U+FFFD; reals in fields are written with 15
 * significant digits (12.345, not 12.345000000000001). The line goes out in one write(2)
 * under a process-wide lock, so lines never interleave; EINTR is retried; a
 * line that meets EAGAIN (a full non-blocking pipe) is dropped and counted,
 * and never waits more than about 100 ms to finish a line it has started.
 * With a blocking fd, a reader that stops reading stalls the loggers (as
 * with any logger). Any thread. No-op (still decref'ing fields) when the
 * level is disabled. */
void log_json(log_level level, const char *msg, json_t *fields);

/* log_json with the fields as arguments: key (const char *, borrowed),
 * value (json_t *, TAKEN; NULL is logged as null) pairs, ending with a NULL
 * key:  log_event(LOG_INFO, "model_loaded", "model", json_string(name),
 *                 "version", json_integer(v), NULL);
 * The values are decref'd even when the level is disabled. */
void log_event(log_level level, const char *msg, ...) METRICS_SENTINEL;

/* Lines dropped since the process started (EAGAIN, write errors, ENOMEM). */
uint64_t log_dropped_lines(void);

#ifdef __cplusplus
}
#endif

#endif /* AISERVE_OBS_H */

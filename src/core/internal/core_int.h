/*
 * core_int.h - what the core module's files share and nobody else sees:
 * the settings table's row type, applying one value to one setting, the
 * value formatters, and the loader's record of where each value came from.
 *
 * Row invariants (checked by test_config through the public accessors):
 * every key, environment variable and flag appears once; every default
 * lies within its bounds; a string's bounds are lengths and its maximum is
 * below its field's size.
 */
#ifndef AISERVE_CORE_INT_H
#define AISERVE_CORE_INT_H

#include <stddef.h>
#include <stdint.h>

#include "core.h"

typedef enum setting_type {
    SETTING_STRING,
    SETTING_INT,
    SETTING_BOOL,
    SETTING_DURATION,
    SETTING_SIZE,
    SETTING_LEVEL,
    SETTING_LIST,
    SETTING_TIERS,
} setting_type;

/* Storage by type: STRING char[size], INT int, BOOL bool, DURATION int64_t
 * in units of unit_us microseconds, SIZE uint64_t bytes, LEVEL
 * core_log_level, LIST char[size] (items joined by ",", no blanks; "" is
 * the empty list), TIERS core_tiers. */
typedef struct core_setting {
    const char *section;   /* "server" */
    const char *key;       /* "port" */
    const char *name;      /* "server.port" */
    const char *flag;      /* "--port" */
    const char *env;       /* "AISERVE_PORT" */
    const char *env_alias; /* seed's name, applied before env; or NULL */
    const char *metavar;   /* "N", "HOST", ... in --help */
    setting_type type;
    const char *field;     /* member of core_config */
    size_t offset, size;   /* of that member */
    int64_t def;           /* default: numbers in storage units */
    const char *def_str;   /* default of a string */
    int64_t min, max;      /* bounds in storage units; for a string, its length */
    int64_t unit_us;       /* duration: microseconds per stored unit (1 or 1000) */
    /* list: checks one item (0, or -1 with why); `items` names what an item
     * is, for --help and the docs ("IP addresses or CIDR blocks"). */
    int (*check_item)(const char *item, char *why, size_t cap);
    const char *items;
    const char *help;
    bool secret_userinfo;  /* a URL whose password is shown as *** wherever it is printed */
} core_setting;

extern const core_setting core_settings[];
extern const size_t core_n_settings;

/* Sections in table order, NULL-terminated. */
extern const char *const core_sections[];

/* Where each setting's current value came from, for messages that involve
 * two settings. origin[i] is "" for the default. */
#define CORE_MAX_SETTINGS 64
typedef struct core_origins {
    char origin[CORE_MAX_SETTINGS][160];
} core_origins;

/* Sets error text printf-style; err may be NULL. */
void core_set_error(core_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

const core_setting *core_setting_by_name(const char *section, const char *key);

/* Parses `value` (len bytes, not necessarily NUL-terminated; a NUL inside is
 * an error) for setting s and stores it into *c. Returns 0, or -1 with the
 * problem (without location) in why[cap]. */
int core_setting_apply(const core_setting *s, core_config *c, const char *value, size_t len,
                       char *why, size_t cap);

/* Writes the value of s in *c as it would be written in YAML (unquoted). */
void core_setting_format(const core_setting *s, const core_config *c, char *buf, size_t cap);
void core_setting_format_default(const core_setting *s, char *buf, size_t cap);
void core_setting_format_range(const core_setting *s, char *buf, size_t cap);
const char *core_setting_type_name(const core_setting *s);

/* Closest flag / key to a misspelt one, or NULL when none is close. */
const char *core_suggest_flag(const char *flag);
const core_setting *core_suggest_key(const char *section, const char *key);
const char *core_suggest_section(const char *name);

/* Parses tiers text ("default=100/100,pro=1000/200"; blanks around items
 * are fine; "" gives only the built-ins) into *out, which is zeroed first
 * (so equal configurations compare equal bytewise). Returns 0, or -1 with
 * why. */
int core_tiers_parse(const char *text, size_t len, core_tiers *out, char *why, size_t cap);
/* "default=100/100,anonymous=100/100,pro=1000/200". */
void core_tiers_format(const core_tiers *t, char *buf, size_t cap);

/* Duration text with a bare number in units of bare_unit_us. */
int core_parse_duration(const char *s, int64_t bare_unit_us, int64_t *out_us);
/* Largest unit that divides exactly ("90s", "2ms", "1h"); 0 as "0" + zero_unit. */
void core_format_duration(int64_t us, const char *zero_unit, char *buf, size_t cap);
/* Largest of GiB/MiB/KiB that divides exactly, else bare bytes. */
void core_format_size(uint64_t bytes, char *buf, size_t cap);

/* YAML file over *c, recording origins when not NULL. `via` names where the
 * path came from in messages ("flag --config", "AISERVE_CONFIG"), or NULL. */
int core_config_file_apply(core_config *c, const char *path, const char *via, core_origins *origins,
                           core_error *err);

/* core_config_validate with origins for the messages (origins may be NULL). */
int core_config_check(const core_config *c, const core_origins *origins, core_error *err);

#endif /* AISERVE_CORE_INT_H */

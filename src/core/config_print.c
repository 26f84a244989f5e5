/*
 * config_print.c - the settings table rendered for people and programs:
 * --help, the Markdown table in docs/configuration.md, a complete YAML file,
 * the JSON startup-log object, and per-setting info for tests and tools.
 *
 * All of them walk core_settings[] in order, so a new row shows up
 * everywhere at once; values are formatted the way the parsers read them
 * ("10s", "1MiB"), so a dump loads back unchanged. Writes only to the FILE *
 * it is given (or a memory stream it returns).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_int.h"

#define WIDTH 78 /* wrap prose in --help and YAML comments here */

const char *core_setting_type_name(const core_setting *s) {
    static const char *const names[] = {
        [SETTING_STRING] = "string", [SETTING_INT] = "int",   [SETTING_BOOL] = "bool",
        [SETTING_DURATION] = "duration", [SETTING_SIZE] = "size", [SETTING_LEVEL] = "level",
        [SETTING_LIST] = "list", [SETTING_TIERS] = "tiers",
    };
    return names[s->type];
}

static const char *zero_unit(const core_setting *s) { return s->unit_us == 1000 ? "ms" : "us"; }

/* scheme://user:password@host -> scheme://user:***@host, in place (buf
 * holds cap bytes). */
static void redact_userinfo(char *buf, size_t cap) {
    char *scheme = strstr(buf, "://");
    char *at = scheme ? strrchr(scheme, '@') : NULL;
    char *colon = at ? memchr(scheme + 3, ':', (size_t)(at - scheme - 3)) : NULL;
    if (colon && (size_t)(colon - buf) + 5 + strlen(at) < cap) {
        memmove(colon + 4, at, strlen(at) + 1);
        memcpy(colon + 1, "***", 3);
    } else if (colon) {
        snprintf(buf, cap, "(a URL with a password)");
    }
}

void core_setting_format(const core_setting *s, const core_config *c, char *buf, size_t cap) {
    const char *place = (const char *)c + s->offset;
    switch (s->type) {
    case SETTING_STRING:
        snprintf(buf, cap, "%.*s", (int)s->size, place);
        return;
    case SETTING_INT: {
        int v;
        memcpy(&v, place, sizeof v);
        snprintf(buf, cap, "%d", v);
        return;
    }
    case SETTING_BOOL: {
        bool v;
        memcpy(&v, place, sizeof v);
        snprintf(buf, cap, "%s", v ? "true" : "false");
        return;
    }
    case SETTING_DURATION: {
        int64_t v;
        memcpy(&v, place, sizeof v);
        if (v < 0 || v > INT64_MAX / s->unit_us)
            snprintf(buf, cap, "%lld%s", (long long)v, zero_unit(s));
        else
            core_format_duration(v * s->unit_us, zero_unit(s), buf, cap);
        return;
    }
    case SETTING_SIZE: {
        uint64_t v;
        memcpy(&v, place, sizeof v);
        core_format_size(v, buf, cap);
        return;
    }
    case SETTING_LEVEL: {
        core_log_level v;
        memcpy(&v, place, sizeof v);
        snprintf(buf, cap, "%s", core_log_level_name(v));
        return;
    }
    case SETTING_LIST:
        snprintf(buf, cap, "%.*s", (int)s->size, *place ? place : "[]");
        return;
    case SETTING_TIERS: {
        core_tiers t;
        memcpy(&t, place, sizeof t);
        core_tiers_format(&t, buf, cap);
        return;
    }
    }
    snprintf(buf, cap, "?");
}

void core_setting_format_default(const core_setting *s, char *buf, size_t cap) {
    core_config d;
    core_config_defaults(&d);
    core_setting_format(s, &d, buf, cap);
}

void core_setting_format_range(const core_setting *s, char *buf, size_t cap) {
    char lo[24], hi[24];
    switch (s->type) {
    case SETTING_STRING:
        if (s->min > 0)
            snprintf(buf, cap, "%lld..%lld bytes", (long long)s->min, (long long)s->max);
        else
            snprintf(buf, cap, "up to %lld bytes", (long long)s->max);
        return;
    case SETTING_INT:
        snprintf(buf, cap, "%lld..%lld", (long long)s->min, (long long)s->max);
        return;
    case SETTING_BOOL:
        snprintf(buf, cap, "true/false");
        return;
    case SETTING_DURATION:
        core_format_duration(s->min, zero_unit(s), lo, sizeof lo);
        core_format_duration(s->max, zero_unit(s), hi, sizeof hi);
        snprintf(buf, cap, "%s..%s", lo, hi);
        return;
    case SETTING_SIZE:
        core_format_size((uint64_t)s->min, lo, sizeof lo);
        core_format_size((uint64_t)s->max, hi, sizeof hi);
        snprintf(buf, cap, "%s..%s", lo, hi);
        return;
    case SETTING_LEVEL:
        snprintf(buf, cap, "debug/info/warning/error");
        return;
    case SETTING_LIST:
        snprintf(buf, cap, "%s", s->items ? s->items : "items");
        return;
    case SETTING_TIERS:
        snprintf(buf, cap, "rates %lld..%lld", (long long)s->min, (long long)s->max);
        return;
    }
    snprintf(buf, cap, "?");
}

/* Writes `text` wrapped at WIDTH, each line starting with `prefix`. */
static void write_wrapped(FILE *f, const char *prefix, const char *text) {
    size_t room = WIDTH - strlen(prefix);
    while (*text) {
        size_t n = strlen(text);
        if (n > room) {
            n = room;
            while (n > 0 && text[n] != ' ')
                n--;
            if (n == 0) /* one long word */
                n = strcspn(text, " ");
        }
        fprintf(f, "%s%.*s\n", prefix, (int)n, text);
        text += n;
        while (*text == ' ')
            text++;
    }
}

/* "Default 10s; 1ms..1h, a bare number is milliseconds." and the like. */
static void describe_value(const core_setting *s, char *buf, size_t cap) {
    char def[128], range[64];
    core_setting_format_default(s, def, sizeof def);
    core_setting_format_range(s, range, sizeof range);
    switch (s->type) {
    case SETTING_STRING:
        snprintf(buf, cap, *def ? "Default %s." : "Default \"\" (empty).", def);
        return;
    case SETTING_BOOL:
        snprintf(buf, cap, "Default %s.", def);
        return;
    case SETTING_LEVEL:
        snprintf(buf, cap, "Default %s; one of debug, info, warning, error.", def);
        return;
    case SETTING_DURATION:
        snprintf(buf, cap, "Default %s; %s, a bare number is %s.", def, range,
                 s->unit_us == 1000 ? "milliseconds" : "microseconds");
        return;
    case SETTING_SIZE:
        snprintf(buf, cap, "Default %s; %s, a bare number is bytes.", def, range);
        return;
    case SETTING_INT:
        snprintf(buf, cap, "Default %s; %s.", def, range);
        return;
    case SETTING_LIST:
        snprintf(buf, cap, "Default %s%s; %s, separated by commas.", def, strcmp(def, "[]") ? "" : " (none)", range);
        return;
    case SETTING_TIERS:
        snprintf(buf, cap, "Default %s; NAME=REQUESTS_PER_MINUTE/BURST items separated by commas, %s.", def, range);
        return;
    }
}

void core_config_print_help(FILE *f) {
    fputs("usage: aiserve serve [--config FILE] [--NAME VALUE ...]\n\n", f);
    write_wrapped(f, "",
                  "Runs the model server. Each setting comes from, in rising precedence: its default, the "
                  "YAML file (--config FILE, else the file named by AISERVE_CONFIG), its environment "
                  "variable, its flag. Flags are --name value or --name=value; a boolean flag alone means "
                  "true and --no-NAME means false.");
    fputc('\n', f);
    write_wrapped(f, "",
                  "Durations are a number with a unit, us ms s m h (250ms, 1.5s, 1h30m); a bare number is in "
                  "the unit the setting states. Sizes are bytes, or a number with k M G (x1000) or KiB MiB "
                  "GiB (x1024), as in 1MiB or 64k. Booleans are true/false, yes/no, on/off or 1/0. An "
                  "environment variable set to the empty string counts as unset.");
    fputs("\n  --config FILE\n", f);
    write_wrapped(f, "      ", "YAML configuration file (environment: AISERVE_CONFIG). See docs/configuration.md.");
    fputs("  -h, --help\n      Show this help and exit.\n", f);

    const char *section = "";
    for (size_t i = 0; i < core_n_settings; i++) {
        const core_setting *s = &core_settings[i];
        if (strcmp(section, s->section) != 0) {
            section = s->section;
            fprintf(f, "\n%s:\n", section);
        }
        char flag[96];
        if (s->type == SETTING_BOOL)
            snprintf(flag, sizeof flag, "--[no-]%s", s->flag + 2);
        else
            snprintf(flag, sizeof flag, "%s %s", s->flag, s->metavar);
        if (s->env_alias)
            fprintf(f, "  %s   (%s, %s or %s)\n", flag, s->name, s->env, s->env_alias);
        else
            fprintf(f, "  %s   (%s, %s)\n", flag, s->name, s->env);
        char value[512], text[1024];
        describe_value(s, value, sizeof value);
        snprintf(text, sizeof text, "%s %s", s->help, value);
        write_wrapped(f, "      ", text);
    }
}

void core_config_write_markdown(FILE *f) {
    fputs("| YAML key | environment | flag | type and range | default | meaning |\n"
          "|---|---|---|---|---|---|\n",
          f);
    for (size_t i = 0; i < core_n_settings; i++) {
        const core_setting *s = &core_settings[i];
        char def[300], range[64], env[160], flag[160], type[128];
        core_setting_format_default(s, def, sizeof def);
        core_setting_format_range(s, range, sizeof range);
        if (s->env_alias)
            snprintf(env, sizeof env, "`%s`, or the seed's `%s`", s->env, s->env_alias);
        else
            snprintf(env, sizeof env, "`%s`", s->env);
        if (s->type == SETTING_BOOL)
            snprintf(flag, sizeof flag, "`%s`, `--no-%s`", s->flag, s->flag + 2);
        else
            snprintf(flag, sizeof flag, "`%s %s`", s->flag, s->metavar);
        switch (s->type) {
        case SETTING_DURATION:
            snprintf(type, sizeof type, "duration, %s (bare number: %s)", range, zero_unit(s));
            break;
        case SETTING_SIZE:
            snprintf(type, sizeof type, "size, %s", range);
            break;
        case SETTING_LIST:
            snprintf(type, sizeof type, "list of %s", range);
            break;
        case SETTING_TIERS:
            snprintf(type, sizeof type, "tiers, NAME=RPM/BURST,... (%s)", range);
            break;
        case SETTING_STRING:
        case SETTING_INT:
        case SETTING_BOOL:
        case SETTING_LEVEL:
            snprintf(type, sizeof type, "%s, %s", core_setting_type_name(s), range);
            break;
        }
        fprintf(f, "| `%s` | %s | %s | %s | `%s` | %s |\n", s->name, env, flag, type, *def ? def : "\"\"",
                s->help);
    }
}

/* Writes s as a double-quoted JSON string (also valid YAML). */
/* A double-quoted string that both YAML and JSON read back as the same
 * text: ASCII controls, DEL, the C1 controls, U+2028/U+2029 and the
 * non-characters U+FFFE/U+FFFF (which YAML refuses raw) are escaped.
 * Values are valid UTF-8 (core_setting_apply checks). */
static void write_quoted(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        if (*p == '"' || *p == '\\') {
            fprintf(f, "\\%c", *p++);
        } else if (*p == '\n') {
            fputs("\\n", f);
            p++;
        } else if (*p == '\t') {
            fputs("\\t", f);
            p++;
        } else if (*p < 0x20 || *p == 0x7f) {
            fprintf(f, "\\u%04x", *p++);
        } else if (*p < 0x80) {
            fputc(*p++, f);
        } else {
            size_t k = (*p & 0xE0) == 0xC0 ? 2 : (*p & 0xF0) == 0xE0 ? 3 : (*p & 0xF8) == 0xF0 ? 4 : 1;
            uint32_t cp = k == 1 ? *p : (uint32_t)(*p & (0x7F >> k));
            size_t j = 1;
            for (; j < k && (p[j] & 0xC0) == 0x80; j++)
                cp = (cp << 6) | (p[j] & 0x3F);
            if (j < k) { /* cannot happen for checked values; never read past the NUL */
                fprintf(f, "\\u%04x", 0xFFFD);
                p += j;
                continue;
            }
            if ((cp >= 0x80 && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029 || cp == 0xFFFE ||
                cp == 0xFFFF)
                fprintf(f, "\\u%04x", (unsigned)cp);
            else
                fwrite(p, 1, k, f);
            p += k;
        }
    }
    fputc('"', f);
}

/* A stored list ("a,b") as a flow sequence of quoted items: ["a", "b"]
 * (YAML), or a JSON array when json is set (the same text). */
static void write_list(FILE *f, const char *list, int json) {
    fputc('[', f);
    char item[1024];
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        snprintf(item, sizeof item, "%.*s", (int)(n < sizeof item ? n : sizeof item - 1), p);
        if (p != list)
            fputs(json ? "," : ", ", f);
        write_quoted(f, item);
        p += n;
        if (*p == ',')
            p++;
    }
    fputc(']', f);
}

/* Tiers as a block mapping, one tier a line:
 *     default: {requests_per_minute: 100, burst: 100}
 * A name that does not start with a letter or digit is quoted. */
static void write_tiers_yaml(FILE *f, const char *place) {
    core_tiers t;
    memcpy(&t, place, sizeof t);
    for (int i = 0; i < t.n && i < CORE_MAX_TIERS; i++) {
        const char *name = t.tier[i].name;
        char first = name[0];
        fputs("\n    ", f);
        if ((first >= 'a' && first <= 'z') || (first >= 'A' && first <= 'Z') || (first >= '0' && first <= '9'))
            fputs(name, f);
        else
            write_quoted(f, name);
        fprintf(f, ": {requests_per_minute: %d, burst: %d}", t.tier[i].requests_per_minute, t.tier[i].burst);
    }
}

int core_config_write_yaml(const core_config *c, FILE *f) {
    write_wrapped(f, "# ",
                  "aiserve configuration (docs/configuration.md). Every key is optional and defaults as "
                  "shown in `aiserve serve --help`; environment variables and flags override this file.");
    const char *section = "";
    for (size_t i = 0; i < core_n_settings; i++) {
        const core_setting *s = &core_settings[i];
        if (strcmp(section, s->section) != 0) {
            section = s->section;
            fprintf(f, "\n%s:\n", section);
        }
        char value[4200];
        core_setting_format(s, c, value, sizeof value);
        write_wrapped(f, "  # ", s->help);
        fprintf(f, s->type == SETTING_TIERS ? "  %s:" : "  %s: ", s->key);
        if (s->type == SETTING_STRING)
            write_quoted(f, value);
        else if (s->type == SETTING_LIST)
            write_list(f, (const char *)c + s->offset, 0);
        else if (s->type == SETTING_TIERS)
            write_tiers_yaml(f, (const char *)c + s->offset);
        else
            fputs(value, f);
        fputc('\n', f);
    }
    return ferror(f) ? -1 : 0;
}

char *core_config_describe_json(const core_config *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    fputc('{', f);
    for (size_t i = 0; i < core_n_settings; i++) {
        const core_setting *s = &core_settings[i];
        const char *place = (const char *)c + s->offset;
        fprintf(f, "%s\"%s\":", i ? "," : "", s->field);
        switch (s->type) {
        case SETTING_STRING: {
            char value[4200];
            core_setting_format(s, c, value, sizeof value);
            if (s->secret_userinfo) /* this text goes to the log */
                redact_userinfo(value, sizeof value);
            write_quoted(f, value);
            break;
        }
        case SETTING_INT: {
            int v;
            memcpy(&v, place, sizeof v);
            fprintf(f, "%d", v);
            break;
        }
        case SETTING_BOOL: {
            bool v;
            memcpy(&v, place, sizeof v);
            fputs(v ? "true" : "false", f);
            break;
        }
        case SETTING_DURATION: {
            int64_t v;
            memcpy(&v, place, sizeof v);
            fprintf(f, "%lld", (long long)v);
            break;
        }
        case SETTING_SIZE: {
            uint64_t v;
            memcpy(&v, place, sizeof v);
            fprintf(f, "%llu", (unsigned long long)v);
            break;
        }
        case SETTING_LEVEL: {
            core_log_level v;
            memcpy(&v, place, sizeof v);
            write_quoted(f, core_log_level_name(v));
            break;
        }
        case SETTING_LIST:
            write_list(f, place, 1);
            break;
        case SETTING_TIERS: {
            core_tiers t;
            memcpy(&t, place, sizeof t);
            fputc('{', f);
            for (int k = 0; k < t.n && k < CORE_MAX_TIERS; k++) {
                fputs(k ? "," : "", f);
                write_quoted(f, t.tier[k].name);
                fprintf(f, ":{\"requests_per_minute\":%d,\"burst\":%d}", t.tier[k].requests_per_minute,
                        t.tier[k].burst);
            }
            fputc('}', f);
            break;
        }
        }
    }
    fputs(",\"config_file\":", f);
    char path[sizeof c->config_file + 1];
    snprintf(path, sizeof path, "%.*s", (int)sizeof c->config_file, c->config_file);
    write_quoted(f, path);
    fputc('}', f);
    int failed = ferror(f);
    if (fclose(f) != 0 || failed) {
        free(buf);
        return NULL;
    }
    return buf;
}

size_t core_config_n_settings(void) { return core_n_settings; }

int core_config_setting_info(size_t i, core_setting_info *out) {
    if (i >= core_n_settings)
        return -1;
    const core_setting *s = &core_settings[i];
    *out = (core_setting_info){
        .key = s->name,
        .env = s->env,
        .env_alias = s->env_alias,
        .flag = s->flag,
        .field = s->field,
        .type = core_setting_type_name(s),
        .help = s->help,
    };
    core_setting_format_default(s, out->default_text, sizeof out->default_text);
    core_setting_format_range(s, out->range_text, sizeof out->range_text);
    return 0;
}

/*
 * srv_log.c - see srv_log.h. Thread-safe by construction: each line is built
 * in a stack buffer and emitted by one write(2) to stderr.
 */
#include "srv_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = SRV_LOG_INFO;

static const char *const g_names[] = {"error", "warn", "info", "debug"};
static const char *const g_tags[] = {"ERROR", "WARN ", "INFO ", "DEBUG"};

void srv_log_set_level(int level) {
    if (level < SRV_LOG_ERROR) level = SRV_LOG_ERROR;
    if (level > SRV_LOG_DEBUG) level = SRV_LOG_DEBUG;
    atomic_store_explicit(&g_level, level, memory_order_relaxed);
}

int srv_log_enabled(int level) { return level <= atomic_load_explicit(&g_level, memory_order_relaxed); }

int srv_log_level_from_name(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < 4; i++)
        if (!strcasecmp(name, g_names[i])) return i;
    if (!strcasecmp(name, "warning")) return SRV_LOG_WARN;
    return -1;
}

const char *srv_log_level_name(int level) { return level >= 0 && level < 4 ? g_names[level] : "?"; }

void srv_log(int level, const char *fmt, ...) {
    if (!srv_log_enabled(level)) return;
    char line[4096];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = (int)strftime(line, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, ".%03dZ %s ", (int)(tv.tv_usec / 1000),
                  g_tags[level < 0   ? 0
                         : level > 3 ? 3
                                     : level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0) m = 0;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof line - 2) { /* truncated: mark it */
        len = sizeof line - 2;
        memcpy(line + len - 3, "...", 3);
    }
    while (len > (size_t)n && line[len - 1] == '\n') len--;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

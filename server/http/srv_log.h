/*
 * srv_log.h - leveled logging to stderr for the server.
 *
 * One line per call: "2025-01-31T12:00:00.123Z LEVEL message\n", formatted
 * into a bounded stack buffer (longer messages are truncated with "...") and
 * written with a single write(2), so lines from the loop and engine threads
 * never interleave. The level is a process-wide setting (set once at start,
 * read with relaxed atomics afterwards); every function is thread-safe.
 */
#ifndef NI_SRV_LOG_H
#define NI_SRV_LOG_H

enum srv_log_level { SRV_LOG_ERROR = 0, SRV_LOG_WARN = 1, SRV_LOG_INFO = 2, SRV_LOG_DEBUG = 3 };

/* Sets the most verbose level that is printed (default SRV_LOG_INFO). */
void srv_log_set_level(int level);

/* 1 when a message at `level` would be printed. */
int srv_log_enabled(int level);

/* Level from "error", "warn"/"warning", "info", "debug" (case-insensitive), or -1. */
int srv_log_level_from_name(const char *name);

/* Name of a level ("error" ... "debug"); "?" when out of range. */
const char *srv_log_level_name(int level);

/* Prints one line at `level` when enabled. A trailing newline in fmt is dropped. */
void srv_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif

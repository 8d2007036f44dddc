/*
 * stop.c - finish reasons and text release of one sequence (see stop.h).
 *
 * The held text is short (at most the longest stop string plus one token's
 * bytes), so matching rescans it whole on every token: a memmem per stop
 * string for a complete match, a suffix-against-prefix comparison for a
 * possible one. No incremental matcher state exists that could go stale when
 * bytes are released.
 *
 * Released bytes are dropped lazily, at the start of the next call, so the
 * caller can read them in place (no copy, no buffer of its own).
 */
#include "stop.h"

#include <string.h>

#include "engine/util/util.h"

int stop_spec_init(stop_spec *sp, int max_tokens, int max_len, int ignore_eos, const int32_t *ids,
                   int n_ids, const char *const *strs, int n_strs) {
    memset(sp, 0, sizeof *sp);
    if (max_tokens < 1 || max_len < 1 || n_ids < 0 || n_ids > STOP_MAX_IDS || n_strs < 0 ||
        n_strs > STOP_MAX_STR || (n_ids && !ids) || (n_strs && !strs))
        return NI_EINVAL;
    sp->max_tokens = max_tokens;
    sp->max_len = max_len;
    sp->ignore_eos = ignore_eos != 0;
    if (n_ids) memcpy(sp->ids, ids, (size_t)n_ids * sizeof(int32_t));
    sp->n_ids = n_ids;
    for (int i = 0; i < n_strs; i++) {
        size_t l = strs[i] ? strlen(strs[i]) : 0;
        if (l < 1 || l > STOP_MAX_STR_LEN) return NI_EINVAL;
        memcpy(sp->str[i], strs[i], l);
        sp->str_len[i] = (int)l;
    }
    sp->n_str = n_strs;
    return 0;
}

void stop_state_init(stop_state *st) {
    st->len = 0;
    st->released = 0;
}

stop_reason stop_check_token(const stop_spec *sp, int32_t tok, int is_eog, int n_gen,
                             int n_tokens) {
    if (!sp->ignore_eos && is_eog) return STOP_REASON_STOP;
    for (int i = 0; i < sp->n_ids; i++)
        if (tok == sp->ids[i]) return STOP_REASON_STOP;
    if (n_gen >= sp->max_tokens || n_tokens >= sp->max_len) return STOP_REASON_LENGTH;
    return STOP_REASON_NONE;
}

/* Offset of the earliest complete stop string in buf[0..n), or -1. Earliest
 * by start, so that no released byte can belong to another stop string. */
static int find_stop(const stop_spec *sp, const char *buf, int n) {
    int best = -1;
    for (int i = 0; i < sp->n_str; i++) {
        const char *p = memmem(buf, (size_t)n, sp->str[i], (size_t)sp->str_len[i]);
        if (p && (best < 0 || p - buf < best)) best = (int)(p - buf);
    }
    return best;
}

/* Length of the longest suffix of buf[0..n) that is a proper prefix of a stop
 * string: the bytes a later token may still turn into a match. */
static int stop_prefix_tail(const stop_spec *sp, const char *buf, int n) {
    int best = 0;
    for (int i = 0; i < sp->n_str; i++)
        for (int k = NI_MIN(sp->str_len[i] - 1, n); k > best; k--)
            if (!memcmp(buf + n - k, sp->str[i], (size_t)k)) {
                best = k;
                break;
            }
    return best;
}

/* Bytes at the end of buf[0..n) that are a UTF-8 lead byte followed by fewer
 * continuation bytes than it announces (0..3). A complete, ASCII or invalid
 * end gives 0: only a character that may still complete is worth holding. */
static int utf8_open_tail(const char *buf, int n) {
    const unsigned char *p = (const unsigned char *)buf;
    for (int k = 1; k <= NI_MIN(3, n); k++) {
        const unsigned c = p[n - k];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte: the lead is further back */
        const int need = c >= 0xF0 && c <= 0xF4   ? 4
                         : c >= 0xE0 && c <= 0xEF ? 3
                         : c >= 0xC2 && c <= 0xDF ? 2
                                                  : 1;
        return need > k ? k : 0;
    }
    return 0;
}

stop_reason stop_push_text(stop_state *st, const stop_spec *sp, stop_reason why, const char *bytes,
                           int n, const char **text, int *text_len) {
    NI_ASSERT(n >= 0 && n <= STOP_MAX_TEXT && (n == 0 || bytes));
    NI_ASSERT(st->released >= 0 && st->released <= st->len);
    memmove(st->hold, st->hold + st->released, (size_t)(st->len - st->released));
    st->len -= st->released;
    st->released = 0;
    NI_ASSERT(st->len < STOP_MAX_STR_LEN); /* the invariant that makes room for n bytes */
    if (n) memcpy(st->hold + st->len, bytes, (size_t)n);
    st->len += n;

    int release = st->len;
    const int at = find_stop(sp, st->hold, st->len);
    if (at >= 0) {
        /* the stop string and everything after it are never shown; the bytes
         * before it go out as they are (see stop.h on a stop string that
         * starts inside a character) */
        release = at;
        why = STOP_REASON_STOP;
    } else if (why == STOP_REASON_NONE) {
        release -=
            NI_MAX(stop_prefix_tail(sp, st->hold, st->len), utf8_open_tail(st->hold, st->len));
    } else { /* the end, and nothing follows that could complete a character */
        const int open = utf8_open_tail(st->hold, release);
        if (open) {
            memcpy(st->hold + release - open, "\xEF\xBF\xBD", 3);
            release += 3 - open;
            st->len = NI_MAX(st->len, release);
        }
    }
    st->released = release;
    *text = st->hold;
    *text_len = release;
    return why;
}

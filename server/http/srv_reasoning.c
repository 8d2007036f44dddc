/*
 * srv_reasoning.c - see srv_reasoning.h. Three states: START (nothing
 * decided: leading whitespace and a partial "<think>" are held), THINK
 * (reasoning; a partial "</think>" is held) and CONTENT (pass-through).
 * Neither tag has a proper prefix that is also its suffix, so a failed match
 * releases the held bytes and the current byte is simply looked at again.
 */
#include "srv_reasoning.h"

#include <string.h>

#include "engine/util/util.h"

enum { ST_START = 0, ST_THINK = 1, ST_CONTENT = 2 };

#define OPEN_TAG "<think>"
#define CLOSE_TAG "</think>"
#define MAX_WS 16 /* leading whitespace allowed before <think> */

static const char *const g_names[] = {
    [SRV_REASONING_NONE] = "none",
    [SRV_REASONING_QWEN3] = "qwen3",
    [SRV_REASONING_DEEPSEEK_R1] = "deepseek_r1",
};

int srv_reasoning_parser_from_name(const char *name) {
    for (int i = 0; name && i < (int)NI_ARRAY_LEN(g_names); i++)
        if (!strcmp(name, g_names[i])) return i;
    return NI_ENOTFOUND;
}

const char *srv_reasoning_parser_name(int p) {
    return p >= 0 && p < (int)NI_ARRAY_LEN(g_names) ? g_names[p] : "unknown";
}

void srv_reasoning_init(srv_reasoning *r, int p) {
    memset(r, 0, sizeof *r);
    r->parser = p;
    r->state = p == SRV_REASONING_QWEN3 || p == SRV_REASONING_DEEPSEEK_R1 ? ST_START : ST_CONTENT;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Where text belongs when the output does not open with <think>. */
static srv_buf *no_tag_dest(const srv_reasoning *r, srv_buf *reasoning, srv_buf *content) {
    return r->parser == SRV_REASONING_DEEPSEEK_R1 ? reasoning : content;
}

int srv_reasoning_feed(srv_reasoning *r, const char *text, size_t len, srv_buf *reasoning,
                       srv_buf *content) {
    size_t i = 0;
    int rc = 0;
    while (i < len && !rc) {
        if (r->state == ST_CONTENT) return srv_buf_append(content, text + i, len - i);
        if (r->state == ST_START) {
            char c = text[i];
            if (r->match == 0 && is_ws(c) && r->n_ws < MAX_WS) {
                r->held[r->n_ws++] = c;
                i++;
            } else if (c == OPEN_TAG[r->match]) {
                r->held[r->n_ws + r->match++] = c;
                i++;
                if (r->match == (int)strlen(OPEN_TAG)) { /* tag and the space before it go */
                    r->n_ws = r->match = 0;
                    r->state = ST_THINK;
                }
            } else { /* no tag: what is held and what follows is the parser's default */
                rc = srv_buf_append(no_tag_dest(r, reasoning, content), r->held,
                                    (size_t)(r->n_ws + r->match));
                r->n_ws = r->match = 0;
                r->state = r->parser == SRV_REASONING_DEEPSEEK_R1 ? ST_THINK : ST_CONTENT;
            }
            continue;
        }
        /* ST_THINK */
        if (r->match == 0) {
            const char *lt = memchr(text + i, '<', len - i);
            size_t run = lt ? (size_t)(lt - (text + i)) : len - i;
            rc = srv_buf_append(reasoning, text + i, run);
            i += run;
            if (lt && !rc) {
                r->held[0] = '<';
                r->match = 1;
                i++;
            }
            continue;
        }
        if (text[i] == CLOSE_TAG[r->match]) {
            r->held[r->match++] = text[i++];
            if (r->match == (int)strlen(CLOSE_TAG)) {
                r->match = 0;
                r->state = ST_CONTENT;
            }
        } else { /* not the tag: release what was held, look at this byte again */
            rc = srv_buf_append(reasoning, r->held, (size_t)r->match);
            r->match = 0;
        }
    }
    return rc;
}

int srv_reasoning_flush(srv_reasoning *r, srv_buf *reasoning, srv_buf *content) {
    size_t n = (size_t)(r->n_ws + r->match);
    srv_buf *dest = r->state == ST_START ? no_tag_dest(r, reasoning, content) : reasoning;
    r->n_ws = r->match = 0;
    return n ? srv_buf_append(dest, r->held, n) : 0;
}

int srv_reasoning_thinking(const srv_reasoning *r) {
    return r->state == ST_THINK || (r->state == ST_START && r->parser == SRV_REASONING_DEEPSEEK_R1);
}

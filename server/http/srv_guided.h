/*
 * srv_guided.h - the structured-output parameters of a generation request,
 * compiled into the grammar the engine enforces (engine/grammar).
 *
 * Accepted, one at a time (two is a 400):
 *   response_format {"type": "text"}                         nothing
 *                   {"type": "json_object"}                  any JSON object
 *                   {"type": "json_object", "schema": S}     S (llama-server's form)
 *                   {"type": "json_schema", "json_schema": {"name", "schema": S, "strict"}}
 *   guided_json S (an object, or a string holding one), guided_regex R,
 *   guided_choice [strings], guided_grammar G (GBNF)          vLLM's extra parameters
 *   structured_outputs {"json" | "regex" | "choice" | "grammar": ...}   vLLM's newer form
 * Compilation runs on the loop thread, bounded by gr_limits (linear in the
 * grammar it builds, which is capped), so a hostile schema costs a 400.
 */
#ifndef NI_SRV_GUIDED_H
#define NI_SRV_GUIDED_H

#include <jansson.h>

#include "engine/grammar/grammar.h"
#include "srv_api.h"

/* Reads the parameters above from body. Returns 0 with *out (NULL when the
 * request is unconstrained; the caller owns it), or -1 with err filled: 400
 * naming the parameter, with the compiler's message (keyword, JSON pointer or
 * offset). */
int srv_guided_parse(const json_t *body, gr_grammar **out, srv_api_error *err);

#endif

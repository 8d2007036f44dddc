/*
 * fuzz_request.c - request JSON -> internal request, both endpoints, on the
 * committed tiny-llama3 model: parse errors name a status and stay 4xx, a
 * parsed request is within the model's limits; no crash or leak.
 */
#include <jansson.h>
#include <string.h>

#include "fuzz_util.h"
#include "server/http/srv_api.h"
#include "tokenizer/chat.h"

static mdl_model g_m;
static srv_api_ctx g_ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fz_load(&g_m, "test/models/tiny-llama3");
    g_ctx.tok = g_m.tok;
    g_ctx.chat_style = chat_detect(g_m.chat_template);
    g_ctx.vocab = g_m.cfg.vocab_size;
    g_ctx.max_seq_len = g_m.cfg.max_seq_len;
    g_ctx.max_tokens_default = 4096;
    g_ctx.max_n = 8;
    g_ctx.model_name = "tiny";
    g_ctx.model_path = "test/models/tiny-llama3";
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    json_t *body = json_loadb((const char *)data, n, JSON_REJECT_DUPLICATES, NULL);
    if (!body) return 0;
    for (int kind = SRV_API_COMPLETION; kind <= SRV_API_CHAT; kind++) {
        srv_gen_req r;
        srv_api_error e;
        memset(&e, 0, sizeof e);
        if (srv_api_parse_gen(&g_ctx, kind, body, &r, &e) == 0) {
            if (r.n_prompt < 1 || r.n_prompt + r.max_tokens > g_ctx.max_seq_len) __builtin_trap();
            srv_gen_req_free(&r);
        } else if (e.status < 400 || e.status > 599) {
            __builtin_trap();
        }
    }
    json_decref(body);
    return 0;
}

/*
 * model.h - model configuration and FP32 weights, loaded from a GGUF file or a
 * Hugging Face directory (config.json + *.safetensors + tokenizer files).
 *
 * Design: mdl_load() turns either source into the same mdl_model: settings in
 * mdl_config, every weight dequantized to FP32 in one arena (the CPU
 * reference compute type; the CUDA backend converts from these at upload).
 * Matrices are row-major [out_features][in_features] (the HF / ggml layout:
 * y = W x with W rows contiguous), so y[i] = dot(W[i,:], x).
 *
 * RoPE pair layout: HF checkpoints rotate (x[i], x[i+head_dim/2]) pairs
 * ("neox"/half-split); llama.cpp's converter permutes LLaMA q/k weights so that
 * adjacent pairs (x[2i], x[2i+1]) rotate instead. We keep weights as stored and
 * record the layout in cfg.rope_interleaved; every RoPE implementation honours
 * it, so both sources give identical attention scores.
 */
#ifndef NI_MODEL_H
#define NI_MODEL_H

#include <stddef.h>
#include <stdint.h>

struct tok_tokenizer;

enum mdl_arch { MDL_ARCH_LLAMA = 0, MDL_ARCH_QWEN3 = 1 };

enum mdl_rope_scaling { MDL_ROPE_NONE = 0, MDL_ROPE_LLAMA3 = 1 };

typedef struct mdl_config {
    int arch;               /* enum mdl_arch */
    int n_layers;
    int dim;                /* hidden size */
    int hidden_dim;         /* FFN intermediate size */
    int n_heads;
    int n_kv_heads;         /* GQA: n_heads % n_kv_heads == 0 */
    int head_dim;           /* explicit (qwen3) or dim / n_heads */
    int vocab_size;
    int max_seq_len;        /* context length the model was trained for */
    float norm_eps;         /* RMSNorm epsilon */
    float rope_theta;
    int rope_interleaved;   /* 1: adjacent pairs (GGUF llama), 0: half-split (HF, qwen3) */
    int rope_scaling;       /* enum mdl_rope_scaling */
    float rope_factor;      /* llama3: factor */
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int rope_orig_max_pos;  /* llama3: original_max_position_embeddings */
    int tied_embeddings;    /* lm_head shares tok_embd */
    int has_qk_norm;        /* qwen3 per-head RMSNorm on q and k */
} mdl_config;

typedef struct mdl_layer {
    float *attn_norm;       /* [dim] */
    float *wq;              /* [n_heads*head_dim][dim] */
    float *wk;              /* [n_kv_heads*head_dim][dim] */
    float *wv;              /* [n_kv_heads*head_dim][dim] */
    float *wo;              /* [dim][n_heads*head_dim] */
    float *q_norm;          /* [head_dim] or NULL (qwen3 only) */
    float *k_norm;          /* [head_dim] or NULL (qwen3 only) */
    float *ffn_norm;        /* [dim] */
    float *w_gate;          /* [hidden_dim][dim] */
    float *w_up;            /* [hidden_dim][dim] */
    float *w_down;          /* [dim][hidden_dim] */
} mdl_layer;

typedef struct mdl_weights {
    float *tok_embd;        /* [vocab_size][dim] */
    float *out_norm;        /* [dim] */
    float *lm_head;         /* [vocab_size][dim]; == tok_embd when tied */
    float *rope_freqs;      /* [head_dim/2] divisors of the base inverse frequencies, or NULL.
                             * Set when RoPE scaling applies (llama3): from the GGUF's
                             * rope_freqs.weight, or computed from the HF rope_scaling
                             * parameters, so every backend rotates by
                             * pos * theta^(-2i/head_dim) / rope_freqs[i]. */
    mdl_layer *layers;      /* [n_layers] */
    uint32_t src_type;      /* storage type of the projections in the file (GGUF_T_* of
                             * layer 0's q projection: F32, F16, BF16, Q8_0, Q4_0, Q4_1);
                             * the arena holds them dequantized to FP32 */
    float *arena;           /* one allocation holding every tensor above */
    size_t arena_floats;
} mdl_weights;

/* The sampling defaults the model's authors recommend, as data: GGUF
 * general.sampling.{temp,top_k,top_p,min_p,penalty_repeat} (llama.cpp's keys,
 * written by its converter from generation_config.json), or an HF
 * directory's generation_config.json {temperature, top_k, top_p, min_p,
 * repetition_penalty}, where "do_sample": false means greedy (temperature 0,
 * whatever temperature says). A has_* flag is 1 when the file sets the value;
 * the loader checks types and finiteness only: ranges and precedence are the
 * server's business (the file only recommends). Other general.sampling.* keys
 * (sequence, penalty_last_n, mirostat*, xtc_*) are not read. */
typedef struct mdl_sampling_defaults {
    int has_temperature, has_top_k, has_top_p, has_min_p, has_repetition_penalty;
    float temperature;
    int top_k;
    float top_p;
    float min_p;
    float repetition_penalty;
    const char *source; /* static: "general.sampling.*" or "generation_config.json";
                         * NULL when the model sets none */
} mdl_sampling_defaults;

typedef struct mdl_model {
    mdl_config cfg;
    mdl_weights w;
    mdl_sampling_defaults sampling; /* what the file recommends (all has_* 0: nothing) */
    struct tok_tokenizer *tok;  /* owned; NULL only if the source had no tokenizer */
    char *chat_template;        /* owned Jinja source from the file, or NULL */
    char *name;                 /* owned display name (file/dir basename) */
    char *path;                 /* owned copy of the source path */
} mdl_model;

/* Loads path: a .gguf file, or a directory holding config.json and
 * model.safetensors / model.safetensors.index.json plus tokenizer.json or
 * tokenizer.model (and optionally generation_config.json). A sampling default
 * of the wrong type, non-finite, or a generation_config.json that is not a
 * JSON object, is refused like any other metadata. Returns 0, or a negative NI_E* code with a
 * one-line message in err naming the file and the problem (*m is left zeroed). */
int mdl_load(mdl_model *m, const char *path, char *err, size_t errlen);

/* Frees everything mdl_load allocated; safe on a zeroed model. */
void mdl_free(mdl_model *m);

/* Checks the config for internal consistency (positive sizes, GQA divides,
 * sane bounds). Returns 0 or NI_EFORMAT with a message. */
int mdl_config_validate(const mdl_config *c, const char *path, char *err, size_t errlen);

#endif

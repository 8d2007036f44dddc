/*
 * gguf.h - read-only GGUF v2/v3 reader over a private mmap.
 *
 * Design: gguf_open() maps the whole file and validates every count, length
 * and offset against the file size before any of it is used, so a truncated
 * or hostile file yields NI_EFORMAT with a message, never a wild read.
 * Keys, strings and tensor data are views into the mapping (not copies): they
 * live until gguf_close(). Only the kv and tensor index arrays are heap
 * allocated. Strings are NOT NUL-terminated: use (len, ptr).
 */
#ifndef NI_GGUF_H
#define NI_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum gguf_vtype {
    GGUF_VT_UINT8 = 0, GGUF_VT_INT8 = 1, GGUF_VT_UINT16 = 2, GGUF_VT_INT16 = 3,
    GGUF_VT_UINT32 = 4, GGUF_VT_INT32 = 5, GGUF_VT_FLOAT32 = 6, GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8, GGUF_VT_ARRAY = 9, GGUF_VT_UINT64 = 10, GGUF_VT_INT64 = 11,
    GGUF_VT_FLOAT64 = 12,
};

/* ggml tensor types we know the layout of (values are the on-disk ids). */
enum gguf_ttype {
    GGUF_T_F32 = 0, GGUF_T_F16 = 1, GGUF_T_Q4_0 = 2, GGUF_T_Q4_1 = 3,
    GGUF_T_Q8_0 = 8, GGUF_T_BF16 = 30,
};

typedef struct gguf_str {
    uint64_t len;
    const char *ptr; /* into the mapping, not NUL-terminated */
} gguf_str;

typedef struct gguf_kv {
    gguf_str key;
    uint32_t type;          /* enum gguf_vtype */
    union {
        uint64_t u64;       /* every unsigned integer type and bool */
        int64_t i64;        /* every signed integer type */
        double f64;         /* FLOAT32 and FLOAT64 */
        gguf_str str;
    } v;
    /* type == GGUF_VT_ARRAY: */
    uint32_t arr_type;      /* element type (never ARRAY: nested arrays are rejected) */
    uint64_t arr_n;         /* element count */
    const uint8_t *arr_data;/* first element in the mapping (numeric arrays) */
    gguf_str *arr_strs;     /* [arr_n] heap array, only for string arrays */
} gguf_kv;

typedef struct gguf_tensor {
    gguf_str name;
    uint32_t n_dims;        /* 1..4 */
    uint64_t ne[4];         /* ne[0] is the fastest-varying (row length); unused dims are 1 */
    uint32_t type;          /* enum gguf_ttype (validated: only known types are accepted) */
    uint64_t offset;        /* relative to the data section */
    const void *data;       /* into the mapping; nbytes readable */
    uint64_t nbytes;
    uint64_t n_elements;
} gguf_tensor;

typedef struct gguf_ctx {
    char *path;             /* owned copy, for error messages */
    void *map;              /* mmap base */
    size_t size;            /* file size */
    uint32_t version;
    uint64_t n_kv;
    gguf_kv *kv;            /* [n_kv] */
    uint64_t n_tensors;
    gguf_tensor *tensors;   /* [n_tensors] */
    uint64_t alignment;     /* general.alignment or 32 */
    uint64_t data_offset;   /* start of the tensor data section */
} gguf_ctx;

/* Maps and validates path. On failure returns a negative NI_E* code, writes a
 * one-line message naming the file into err, and leaves *g zeroed. */
int gguf_open(gguf_ctx *g, const char *path, char *err, size_t errlen);

/* Unmaps and frees; safe on a zeroed or failed ctx. */
void gguf_close(gguf_ctx *g);

/* Key lookup; NULL when absent. */
const gguf_kv *gguf_find(const gguf_ctx *g, const char *key);

/* Typed getters: 0 on success, NI_ENOTFOUND if absent, NI_EFORMAT if the
 * stored type does not convert (any integer type converts to an integer,
 * any numeric type to a float). */
int gguf_get_int(const gguf_ctx *g, const char *key, int64_t *out);
int gguf_get_float(const gguf_ctx *g, const char *key, double *out);
int gguf_get_str(const gguf_ctx *g, const char *key, gguf_str *out);
/* Array lookup with the required element type; NULL if absent or mistyped. */
const gguf_kv *gguf_get_arr(const gguf_ctx *g, const char *key, uint32_t elem_type);

/* Tensor lookup by name; NULL when absent. */
const gguf_tensor *gguf_find_tensor(const gguf_ctx *g, const char *name);

/* 1 if s equals the C string c. */
int gguf_str_eq(gguf_str s, const char *c);

/* Name of a tensor type ("Q4_1"), or "unknown". */
const char *gguf_type_name(uint32_t type);

#endif

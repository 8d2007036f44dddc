/*
 * safetensors.h - read-only reader for Hugging Face safetensors checkpoints,
 * single file or sharded (model.safetensors.index.json), over private mmaps.
 *
 * Design: each shard is mapped once; its JSON header is parsed with jansson
 * and every tensor's data_offsets are validated against the shard size and
 * its dtype/shape before use. Tensor data are views into the mappings and
 * live until st_close(). dtypes are reported with the ggml type ids from
 * gguf.h (F32, F16, BF16) so quant.c dequantizes both sources the same way.
 */
#ifndef NI_SAFETENSORS_H
#define NI_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_TYPE_UNSUPPORTED 0xffffffffu

typedef struct st_tensor {
    char *name;             /* owned */
    uint32_t type;          /* GGUF_T_F32/F16/BF16, or ST_TYPE_UNSUPPORTED */
    char dtype[8];          /* the file's dtype string, for messages */
    int n_dims;
    uint64_t shape[ST_MAX_DIMS]; /* outermost first (PyTorch order) */
    uint64_t n_elements;
    const void *data;       /* into the mapping */
    uint64_t nbytes;
    int shard;              /* index into st_set.shards */
} st_tensor;

typedef struct st_shard {
    char *path;             /* owned */
    void *map;
    size_t size;
} st_shard;

typedef struct st_set {
    st_shard *shards;       /* [n_shards] */
    int n_shards;
    st_tensor *tensors;     /* [n_tensors] */
    int n_tensors;
} st_set;

/* Opens dir/model.safetensors, or every shard named by
 * dir/model.safetensors.index.json. Returns 0 or a negative NI_E* code with a
 * one-line message naming the file. *s is zeroed on failure. */
int st_open_dir(st_set *s, const char *dir, char *err, size_t errlen);

/* Opens a single safetensors file (appends to s, which must be zeroed or open). */
int st_open_file(st_set *s, const char *path, char *err, size_t errlen);

/* Tensor by name, or NULL. */
const st_tensor *st_find(const st_set *s, const char *name);

void st_close(st_set *s);

#endif

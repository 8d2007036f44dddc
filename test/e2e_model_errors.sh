#!/usr/bin/env bash
# e2e_model_errors.sh - what `nanoinfer info` and `nanoinfer generate` print
# for the model files the probe of issue 14 found (the loader's own checks:
# test/test_model_bad.c; this is the command line a user sees).
#
# Files: the tiny llama GGUFs of the fuzz_gguf seed corpus
# (test/fuzz/corpus/fuzz_gguf/model_*.gguf, written by
# scripts/gen_fuzz_corpus.py), and copies of test/models/tiny-llama2 broken
# here (a safetensors header one byte short, a GPT-2 architecture, a context
# length of 2^31). Checks:
#   - a refused file: both commands exit 1 with exactly one stderr line,
#     "error: <file>: ..." naming the problem, and nothing on stdout;
#   - a valid one (alignment 1 and 8 laid out for it, F16 / BF16 embeddings):
#     info and generate exit 0, generate prints its timing line;
#   - a file that loads but whose output is NaN: generate exits 1 with one
#     "error:" line saying why, and no timing line (it used to print no error
#     and a prefill time of minus the uptime).
# Needs python3.
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
BIN=$BUILD/nanoinfer
CORPUS=test/fuzz/corpus/fuzz_gguf
TMP=$(mktemp -d /tmp/ni_e2e_model_errors.XXXXXX)
pass=0 fail=0
cleanup() {
  if [ "$fail" -eq 0 ] || [ -z "${KEEP_TMP:-}" ]; then rm -rf "$TMP"; else echo "logs kept in $TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
command -v python3 >/dev/null || { echo "FAIL: python3 is required (make deps)"; exit 1; }
[ -x "$BIN" ] || { echo "FAIL: $BIN is not built"; exit 1; }

# run NAME CMD MODEL: runs `nanoinfer CMD` on MODEL (generate: a short greedy
# run on the CPU) -> RC, $TMP/NAME.CMD.{out,err}
run() {
  local base=$TMP/$1.$2
  if [ "$2" = info ]; then
    timeout 60 "$BIN" info --model "$3" >"$base.out" 2>"$base.err"
  else
    timeout 60 "$BIN" generate --model "$3" --prompt abc --max-tokens 4 --device cpu \
      >"$base.out" 2>"$base.err"
  fi
  RC=$?
}

# refused NAME MODEL WANT [FILE]: both commands exit 1, print one line
# "error: FILE: ..." holding WANT on stderr (FILE: MODEL, or the file of an HF
# directory the message names), and nothing on stdout
refused() {
  local name=$1 model=$2 want=$3 file=${4:-$2} cmd err
  for cmd in info generate; do
    run "$name" "$cmd" "$model"
    err=$TMP/$name.$cmd.err
    if [ "$RC" -ne 1 ]; then bad "$cmd $name: exit $RC, want 1"; continue; fi
    if [ "$(wc -l <"$err")" -ne 1 ]; then
      bad "$cmd $name: stderr is not one line:"; cat "$err"; continue
    fi
    if ! grep -qF "error: $file: " "$err" || ! grep -qF -- "$want" "$err"; then
      bad "$cmd $name: want 'error: $file: ...$want...', got: $(cat "$err")"; continue
    fi
    if [ -s "$TMP/$name.$cmd.out" ]; then bad "$cmd $name: printed on stdout"; continue; fi
    ok
  done
}

# loads NAME MODEL: info and generate exit 0; generate prints its timing line
loads() {
  run "$1" info "$2"
  if [ "$RC" -eq 0 ] && grep -q '^layers: 2$' "$TMP/$1.info.out"; then ok
  else bad "info $1: exit $RC: $(cat "$TMP/$1.info.err")"; fi
  run "$1" generate "$2"
  if [ "$RC" -eq 0 ] && grep -q '^\[3 prompt tokens, prefill [0-9.]* ms .*4 generated' \
    "$TMP/$1.generate.err"; then ok
  else bad "generate $1: exit $RC: $(cat "$TMP/$1.generate.err")"; fi
}

# ---- GGUF (the seed corpus)
for f in valid align1 align8 embd_f16 embd_bf16; do loads "$f" "$CORPUS/model_$f.gguf"; done
refused align1_padded "$CORPUS/model_align1_padded.gguf" "general.alignment 1 does not match"
refused embd_f32_as_f16 "$CORPUS/model_embd_f32_as_f16.gguf" "'token_embd.weight' (offset 0, 1024 bytes of F16)"
refused embd_f32_as_bf16 "$CORPUS/model_embd_f32_as_bf16.gguf" "bytes of BF16) and 'output_norm.weight'"
refused offsets_zero "$CORPUS/model_offsets_zero.gguf" "overlap"
refused offsets_overlap "$CORPUS/model_offsets_overlap.gguf" "overlap"
refused offsets_misaligned "$CORPUS/model_offsets_misaligned.gguf" "'output_norm.weight' is misaligned"
refused norm_nan "$CORPUS/model_norm_nan.gguf" "'output_norm.weight' has a non-finite value (nan)"
refused norm_inf "$CORPUS/model_norm_inf.gguf" "'output_norm.weight' has a non-finite value (inf)"
refused freq_base_str "$CORPUS/model_freq_base_str.gguf" "'llama.rope.freq_base' has type string"
refused block_count_short "$CORPUS/model_block_count_short.gguf" "beyond llama.block_count = 1"
refused vocab_short "$CORPUS/model_vocab_short.gguf" "20 tokens but token_embd.weight has 32 rows"
refused ctx_2p31 "$CORPUS/model_ctx_2p31.gguf" "'llama.context_length' is 2147483648"

# loads, but every logit is NaN: generate says so
run output_nan info "$CORPUS/model_output_nan.gguf"
if [ "$RC" -eq 0 ]; then ok; else bad "info output_nan: exit $RC"; fi
run output_nan generate "$CORPUS/model_output_nan.gguf"
e=$TMP/output_nan.generate.err
if [ "$RC" -eq 1 ] && [ "$(grep -c '^error: ' "$e")" -eq 1 ] &&
  grep -q '^error: generation failed after 0 tokens: .*no finite logit' "$e" &&
  ! grep -q 'prefill' "$e"; then ok
else bad "generate output_nan: exit $RC, want 1 with one error line and no timing:"; cat "$e"; fi

# ---- Hugging Face directories: copies of tiny-llama2, one thing broken each
hf_copy() { rm -rf "$TMP/$1"; cp -r test/models/tiny-llama2 "$TMP/$1"; }
hf_copy st_short
python3 - "$TMP/st_short/model.safetensors" <<'EOF'
import struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
struct.pack_into("<Q", b, 0, struct.unpack_from("<Q", b, 0)[0] - 1)
open(p, "wb").write(b)
EOF
refused st_short "$TMP/st_short" "header" "$TMP/st_short/model.safetensors"
hf_copy gpt2
sed -i 's/"LlamaForCausalLM"/"GPT2LMHeadModel"/' "$TMP/gpt2/config.json"
refused gpt2 "$TMP/gpt2" "unsupported architecture 'GPT2LMHeadModel' for model_type 'llama' (supported: LlamaForCausalLM" \
  "$TMP/gpt2/config.json"
hf_copy ctx
sed -i 's/"max_position_embeddings": 512/"max_position_embeddings": 2147483648/' "$TMP/ctx/config.json"
refused ctx "$TMP/ctx" "max_position_embeddings is 2147483648, out of range" "$TMP/ctx/config.json"

echo "e2e_model_errors: $pass passed, $fail failed"
[ "$fail" -eq 0 ]

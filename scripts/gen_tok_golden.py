#!/usr/bin/env python3
"""
gen_tok_golden.py - regenerate the tokenizer golden fixtures (test/fixtures/tok_*).

Usage (from the repository root):
    pip install transformers tokenizers gguf sentencepiece protobuf
    python3 scripts/gen_tok_golden.py [--retrain] [--model PATH] [--vocab-dir DIR]

Defaults: --model models/SmolLM2-135M-Instruct.Q4_1.gguf, --vocab-dir ../shared/vocab.
Re-runnable: every output is rewritten from the references; the tiny
SentencePiece / BPE models under test/fixtures/tok_*_tiny* are only retrained
when absent or with --retrain (training is deterministic, but keeping the files
keeps diffs small). Nothing from ../shared/vocab is copied into the repo.

What is the reference, per fixture (each records it in its "reference" field):

* tok_smollm2.json - SmolLM2 byte-level BPE. The vocab/merges come from the
  GGUF, converted by transformers (AutoTokenizer.from_pretrained(dir,
  gguf_file=...)). transformers' GGUF converter drops SmolLM2's Digits
  pre-tokenizer, so the ids are computed with the converted tokenizer whose
  pre_tokenizer is put back to the real HF SmolLM2 tokenizer.json one:
  Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false)].
  Cases where the plain GGUF conversion differs are listed in "notes".
* tok_gpt2.json - GPT-2 vocab (../shared/vocab/ggml-vocab-gpt-2.gguf) through
  transformers' GGUF conversion (plain ByteLevel, which is GPT-2's real config).
* tok_llama_spm.json - LLaMA 2 SentencePiece vocab
  (../shared/vocab/ggml-vocab-llama-spm.gguf). Reference = the `sentencepiece`
  package on a ModelProto built from the GGUF arrays (BPE, byte_fallback,
  identity normalizer, add_dummy_prefix), cross-checked against HF `tokenizers`
  with the real Llama-2 tokenizer.json layout (normalizer
  Sequence[Prepend("▁"), Replace(" ", "▁")], the "legacy" fast tokenizer);
  the script fails if they disagree. transformers 5.x's own GGUF/SPM
  conversion (Metaspace prepend_scheme) differs on leading spaces; those
  differences are listed in "notes" only.
* tok_spm_tiny/tokenizer.model - tiny BPE SentencePiece model (byte_fallback)
  trained here; tok_spm_tiny.json holds ids from `sentencepiece` and HF
  (legacy tokenizer.json), which must agree.
* tok_spm_tiny_json/tokenizer.json - the same model as a legacy HF
  tokenizer.json (Prepend/Replace normalizer); tok_spm_tiny_meta/tokenizer.json
  - the transformers 5.x conversion (Metaspace pre-tokenizer); ids from HF
  tokenizers for each.
* tok_bpe_tiny_digits/, tok_bpe_tiny_l3/ - tiny byte-level BPE tokenizer.json
  files trained with HF tokenizers (SmolLM2-style Digits+ByteLevel; LLaMA-3
  style Split regex + ByteLevel(use_regex=false) + ignore_merges + BOS
  post-processor), ids from HF tokenizers.

Each fixture: {"reference", "vocab", "cases": [{"text", "ids", "parse_special",
"decoded"}], "decode_cases": [{"ids", "text"}], "notes": [...]}.
"decoded" is HF decode(ids, skip_special_tokens=True). parse_special=1 is HF's
default (special tokens in the text become single ids); parse_special=0 is
HF with split/encode_special_tokens=True. ids never include BOS
(add_special_tokens=False) unless the case says "add_bos": 1.
"""
import argparse
import copy
import json
import os
import random
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "test", "fixtures")


# ----------------------------------------------------------------------------
# corpus
# ----------------------------------------------------------------------------
def build_corpus():
    c = [
        "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\t\n", "\n \n", "    \n    ",
        "Hello world", " Hello world", "Hello World!", "  Hello", "Hello  ", "Hello \n",
        "hello, world! how are you?", "The quick brown fox jumps over the lazy dog.",
        "I'm sure they'll say it's fine, don't you think? We've seen it.",
        "I'M SURE THEY'LL SAY IT'S FINE. WE'VE 'RE 'D 'LL",
        "it's 's 't 're 've 'm 'll 'd 'x", "''''''```````\"\"\"\"......!!!!!!??????",
        "café naïve résumé façade Ångström", "Straße, Größe, Übermaß", "e\u0301 combining acute",
        "你好，世界！这是一个测试。", "日本語のテキストとカタカナ ー", "한국어 텍스트입니다",
        "Россия и Украина", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "ελληνικά γράμματα",
        "ไทย ภาษา", "ស្វាគមន៍", "Tiếng Việt có dấu",
        "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ (only emoji that has its own token)",
        "😀👍🏽🇺🇸 and ❤️", "👨‍👩‍👧‍👦", "🦙🦙🦙", "emoji at end 🎉", "🎉 emoji at start",
        "1", "12", "123", "1234", "12345", "123456789012345", "3.14159", "1,000,000", "-42", "+7",
        "0x1F600", "v1.2.3", "2024-01-01T12:00:00Z", "ABC123def456", "a1b2c3", "١٢٣ ٤٥٦", "½ ⅓ ¾ ²³",
        "x = 3 + 4 * (2 - 1)", "def foo(x):\n    return x ** 2  # comment\n",
        "int main(void) {\n\tprintf(\"hi\\n\");\n\treturn 0;\n}\n",
        "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
        "<html><body><p class=\"x\">Hi</p></body></html>", "SELECT * FROM t WHERE id = 5;",
        "path/to/file.txt", "C:\\Windows\\System32", "https://example.com/a?b=c&d=e#f",
        "user@example.com", "#hashtag @mention $dollar %percent ^caret &amp *star",
        "~tilde `backtick` |pipe| \\backslash", "[brackets] {braces} (parens) <angles>",
        "a\tb\tc", "a\t\tb", "\ttab first", "trailing tab\t", "a\nb\nc", "a\n\nb", "a\r\nb",
        "line1\n\n\nline2", "   leading spaces", "trailing spaces   ", "  both  ", "a  b   c    d",
        "\u00a0nbsp\u00a0here", "ideographic\u3000space", "zero\u200bwidth", "soft\u00adhyphen",
        "en\u2013dash em\u2014dash", "“curly quotes” ‘single’", "…ellipsis…", "•bullet ·dot",
        "ﬁ ligature ﬂ", "Ｆｕｌｌｗｉｄｔｈ", "ŉ ǅ ǈ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐛𝐨𝐥𝐝", "𐍈 gothic", "\u0085next line",
        "line\u2028separator", "ab\u0300\u0301\u0302cd", "Ⅻ roman", "°C ±5 µm ∑∞ ≠ ≤ ≥",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<unk>",
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
        "text<|im_end|>more", " <|im_start|> spaced ", "<|im_start", "im_start|>", "<|im_start|><|im_end|>",
        "<s>Hello</s>", "<s> Hello </s> world", "a<s>b", "</s></s>", "<unk> token",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", "\n\n\n\n\n\n\n\n\n\n", "                ",
        "The year 1999 and 2000 and 20000 and 200000.", "Price: $19.99 (was $29.99)",
        "Mixed 日本 English 한국 Русский 123 🎉", "こんにちは、世界！", "中文English混合Text",
        "ÀÉÎÕÜ àéîõü ÇçÑñ", "Ⓐⓑⓒ", "\u200d", "\ufeffBOM", "tab\there\nnewline\rcarriage",
        "null\u0000byte", "bell\u0007char", "del\u007fchar", "latin1 \u00ff\u00fe\u00e9",
        "Hello, world!Hello, world!", "hello.world", "e.g. i.e. etc.", "U.S.A.", "Mr. Smith's dog",
        "don't", "DON'T", "O'Neil", "rock'n'roll", "'quoted'", "\"double\"",
        "  \n  \n  ", "\n ", " \t ", "a \n b", "word\n\tindented", "x\u3000\u3000y",
        "über-cool naïve-ish", "münchen MÜNCHEN", "İstanbul ıi", "ǆemal", "Ω ω Ä ä",
        "a \u180eb", "x\u180e y \u2000z\u205f", "\u1680ogham\u2029para",  # U+180E: \\s for PCRE2 but not for HF (Onig)
    ]
    # digit runs and whitespace around digits
    for n in range(1, 13):
        c.append("".join(str((i * 7 + 3) % 10) for i in range(n)))
    for ws in [" ", "  ", "\t", "\n", "   "]:
        c.append("a" + ws + "1")
        c.append("x" + ws + "42" + ws + "y")
    # whitespace combos around words
    for ws in [" ", "  ", "\t", "\n", "\r\n", "\n\n", " \n", "\u00a0", "\u3000", " \t "]:
        c.append(ws + "word" + ws)
        c.append("one" + ws + "two")
    # contractions / apostrophes
    for w in ["s", "S", "t", "re", "RE", "ve", "m", "ll", "LL", "d", "D"]:
        c.append("it'" + w + " x")
    # seeded random mixes
    rnd = random.Random(1234)
    alph = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"()[]{}<>-_/\\\n\t") + \
        list("éèàüöäßçñ") + list("日本語中文字한국어") + ["😀", "🎉", "🦙", "❤️", "👍🏽"] + list("αβγδабвг")
    for i in range(40):
        c.append("".join(rnd.choice(alph) for _ in range(rnd.randint(5, 60))))
    # a ~10 KB text
    para = ("The tokenizer splits text into pieces, then merges them by rank. "
            "Numbers like 31415 and 2718 are split into digits; emojis 🎉🦙 fall back to bytes. "
            "日本語もテストします。 Ünïcödé wörds too!\n")
    c.append((para * 60)[:10000])
    # dedupe, keep order
    seen = set()
    out = []
    for s in c:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


SPECIAL_CASES_BPE = [
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n", "text<|im_end|>more", " <|im_start|> spaced ",
    "<|im_start", "<|im_start|><|im_end|>", "<|endoftext|>", "a<|endoftext|>b", "<|endoftext|><|endoftext|>",
    "<repo_name>x<file_sep>y", "<|im_end|>\n", "  <|im_end|>  ",
]
SPECIAL_CASES_SPM = [
    "<s>Hello</s>", "<s> Hello </s> world", "a<s>b", "</s></s>", "<unk> token", "Hi</s>there", "<s>",
    " <s>", "<s> ", "text </s>\n", "<s>\n", "<<s>>",
]


def byte_decoder():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def decode_cases(rng, vocab_size, specials, byte_ids, n=40):
    """Id sequences to decode: random ids, specials mixed in, and byte-level
    splits of multi-byte characters (including truncated ones)."""
    cases = []
    for i in range(n):
        k = rng.randint(1, 12)
        ids = [rng.randrange(vocab_size) for _ in range(k)]
        if specials and i % 3 == 0:
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(specials))
        cases.append(ids)
    for seq in byte_ids:
        cases.append(seq)
    return cases


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")
    print("wrote", os.path.relpath(path, ROOT), os.path.getsize(path), "bytes")


def hf_case_list(tok_ids, tok_dec, corpus, special_texts):
    """tok_ids(text, parse_special) -> ids; tok_dec(ids) -> str."""
    cases = []
    for s in corpus + [x for x in special_texts if x not in corpus]:
        ids = tok_ids(s, True)
        cases.append({"text": s, "ids": ids, "parse_special": 1, "decoded": tok_dec(ids)})
    for s in special_texts:
        ids = tok_ids(s, False)
        cases.append({"text": s, "ids": ids, "parse_special": 0, "decoded": tok_dec(ids)})
    return cases


# ----------------------------------------------------------------------------
# byte-level BPE from GGUF (SmolLM2, GPT-2)
# ----------------------------------------------------------------------------
def load_hf_gguf(path):
    from transformers import AutoTokenizer
    d, name = os.path.split(os.path.abspath(path))
    return AutoTokenizer.from_pretrained(d, gguf_file=name)


def gen_bpe_gguf(path, out_name, digits, corpus):
    from tokenizers import Tokenizer
    hf = load_hf_gguf(path)
    conv = hf.backend_tokenizer
    j = json.loads(conv.to_str())
    notes = []
    if digits:
        j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
        notes.append("reference = transformers GGUF conversion with the real SmolLM2 pre_tokenizer "
                     "Sequence[Digits(individual_digits), ByteLevel] restored")
    ref = Tokenizer.from_str(json.dumps(j))
    ref_split = Tokenizer.from_str(json.dumps(j))
    ref_split.encode_special_tokens = True
    specials = [a["id"] for a in j["added_tokens"] if a["special"]]

    def ids_of(s, parse_special):
        t = ref if parse_special else ref_split
        return t.encode(s, add_special_tokens=False).ids

    def dec(ids):
        s = ref.decode(ids, skip_special_tokens=True)
        # transformers-level decode (clean_up_tokenization_spaces is False for these)
        assert not hf.clean_up_tokenization_spaces
        return s

    cases = hf_case_list(ids_of, dec, corpus, SPECIAL_CASES_BPE)
    # cross-checks against transformers' own objects
    n_diff = 0
    for cs in cases:
        if cs["parse_special"]:
            got = hf.encode(cs["text"], add_special_tokens=False)
            if got != cs["ids"]:
                n_diff += 1
                if n_diff <= 20:
                    notes.append("transformers GGUF conversion (no Digits step) differs on %r: %s vs %s"
                                 % (cs["text"][:60], got[:16], cs["ids"][:16]))
            d2 = hf.decode(cs["ids"], skip_special_tokens=True)
            assert d2 == cs["decoded"], (cs["text"], d2, cs["decoded"])
    if n_diff:
        notes.append("total cases where transformers' GGUF conversion differs: %d" % n_diff)
    print(out_name, "cases differing from transformers GGUF conversion:", n_diff)

    rng = random.Random(99)
    vocab = j["model"]["vocab"]
    bd = byte_decoder()
    inv = {v: k for k, v in vocab.items()}
    # byte-split sequences of multibyte chars via single-byte tokens
    byte_tok = {}
    for ch, b in bd.items():
        if ch in vocab:
            byte_tok[b] = vocab[ch]
    seqs = []
    for s in ["🦙", "日本", "é", "👍🏽", "😶‍🌫️"]:
        bs = s.encode("utf-8")
        seqs.append([byte_tok[b] for b in bs])
        seqs.append([byte_tok[b] for b in bs[:-1]])           # truncated at the end
        seqs.append([byte_tok[b] for b in bs[:-1]] + [vocab["a"]])  # interrupted
    for bs in [[0xff, 0x80, "a"], [0xc0, 0x80, "a"], [0xed, 0xa0, 0x80], [0xf0, 0x9f, "S", 0xa6, 0x99],
               [0xe2, 0x82, "a", 0xac], [0xf4, 0x90, 0x80, 0x80], [0x80, 0x80]]:
        if all(b in ("a", "S") or b in byte_tok for b in bs):
            seqs.append([vocab["a"] if b == "a" else specials[0] if b == "S" else byte_tok[b] for b in bs])
    dcs = []
    for ids in decode_cases(rng, len(inv), specials, seqs):
        dcs.append({"ids": ids, "text": ref.decode(ids, skip_special_tokens=True)})
        assert hf.decode(ids, skip_special_tokens=True) == dcs[-1]["text"]
    write_json(os.path.join(FIX, out_name), {
        "reference": "HF tokenizers %s / transformers %s" % (__import__("tokenizers").__version__,
                                                             __import__("transformers").__version__),
        "vocab": os.path.relpath(os.path.abspath(path), ROOT), "cases": cases, "decode_cases": dcs,
        "notes": notes})


# ----------------------------------------------------------------------------
# SentencePiece
# ----------------------------------------------------------------------------
def spm_proto_from_gguf(path):
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as pb
    r = gguf.GGUFReader(path)
    f = r.fields

    def arr(name, conv):
        fl = f[name]
        return [conv(fl.parts[i]) for i in fl.data]
    toks = arr("tokenizer.ggml.tokens", lambda p: bytes(p).decode("utf-8"))
    scores = arr("tokenizer.ggml.scores", lambda p: float(p[0]))
    types = arr("tokenizer.ggml.token_type", lambda p: int(p[0]))
    m = pb.ModelProto()
    for t, s, ty in zip(toks, scores, types):
        p = m.pieces.add()
        p.piece, p.score, p.type = t, s, ty
    ts = m.trainer_spec
    ts.model_type = 2
    ts.byte_fallback = True
    ts.vocab_size = len(toks)
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return m


def legacy_llama_json(conv_json):
    """Turns a converted SPM tokenizer.json into the real Llama-2 (legacy) layout."""
    j = copy.deepcopy(conv_json)
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    j["pre_tokenizer"] = None
    j["post_processor"] = None
    return j


def spm_reference(sp, hf_legacy, hf_split, s, parse_special, specials_text):
    """sentencepiece ids with special-token splitting done like HF/llama.cpp:
    the text is cut at special tokens and every piece gets the dummy prefix."""
    sp_ids = []
    if parse_special:
        i, seg = 0, ""
        while i < len(s):
            m = None
            for st in sorted(specials_text, key=len, reverse=True):
                if s.startswith(st, i):
                    m = st
                    break
            if m:
                if seg:
                    sp_ids += sp.encode(seg)
                seg = ""
                sp_ids.append(sp.piece_to_id(m))
                i += len(m)
            else:
                seg += s[i]
                i += 1
        if seg:
            sp_ids += sp.encode(seg)
    else:
        sp_ids = sp.encode(s)
    h = (hf_legacy if parse_special else hf_split).encode(s, add_special_tokens=False).ids
    return sp_ids, h


def gen_spm(sp, hf_legacy_json, out_name, vocab_desc, corpus, special_cases, other_hf=None):
    from tokenizers import Tokenizer
    hl = Tokenizer.from_str(json.dumps(hf_legacy_json))
    hs = Tokenizer.from_str(json.dumps(hf_legacy_json))
    hs.encode_special_tokens = True
    specials_text = [a["content"] for a in hf_legacy_json["added_tokens"] if a["special"]]
    specials = [a["id"] for a in hf_legacy_json["added_tokens"] if a["special"]]
    notes = []
    cases = []
    mism = 0
    extra = [x for x in special_cases if x not in corpus]
    for s, ps in [(x, 1) for x in corpus + extra] + [(x, 0) for x in special_cases]:
        sp_ids, h = spm_reference(sp, hl, hs, s, ps, specials_text)
        if sp_ids != h:
            mism += 1
            notes.append("sentencepiece vs HF legacy differ on %r: %s vs %s" % (s[:60], sp_ids[:16], h[:16]))
        d = hl.decode(h, skip_special_tokens=True)
        cases.append({"text": s, "ids": h, "parse_special": ps, "decoded": d})
    if mism:
        print("ERROR: sentencepiece and HF legacy disagree on %d cases" % mism, file=sys.stderr)
        for n in notes:
            print("  ", n, file=sys.stderr)
        sys.exit(1)
    if other_hf is not None:
        n_diff = 0
        for cs in cases:
            if cs["parse_special"]:
                got = other_hf.encode(cs["text"], add_special_tokens=False)
                if got != cs["ids"]:
                    n_diff += 1
                    if n_diff <= 10:
                        notes.append("transformers %s conversion differs on %r: %s vs %s" % (
                            __import__("transformers").__version__, cs["text"][:40], got[:12], cs["ids"][:12]))
        if n_diff:
            notes.append("total cases where transformers' own conversion differs (leading-space handling): %d" % n_diff)
        print(out_name, "cases differing from transformers' own conversion:", n_diff)
    rng = random.Random(7)
    n = sp.get_piece_size()
    byte_id = {}
    for i in range(n):
        if sp.is_byte(i):
            byte_id[int(sp.id_to_piece(i)[3:5], 16)] = i
    seqs = []
    for s in ["🦙", "日本", "é"]:
        bs = s.encode("utf-8")
        seqs.append([byte_id[b] for b in bs])
        seqs.append([byte_id[b] for b in bs[:-1]])
        seqs.append([byte_id[b] for b in bs[:-1]] + [sp.piece_to_id("▁a") if sp.piece_to_id("▁a") else 5])
    seqs.append([byte_id[0x20], byte_id[0x41]])
    seqs.append([specials[1] if len(specials) > 1 else 1, byte_id[0x20], byte_id[0x41]])
    seqs.append([byte_id[0xe2], byte_id[0x82], byte_id[0xac], byte_id[0x80]])
    dcs = []
    for ids in decode_cases(rng, n, specials, seqs):
        dcs.append({"ids": ids, "text": hl.decode(ids, skip_special_tokens=True)})
    write_json(os.path.join(FIX, out_name), {
        "reference": "sentencepiece %s == HF tokenizers %s (legacy Llama tokenizer.json layout)" % (
            __import__("sentencepiece").__version__, __import__("tokenizers").__version__),
        "vocab": vocab_desc, "cases": cases, "decode_cases": dcs, "notes": notes})


def check_vocab_test_files(sp, hl_json, inp, outp):
    """The .inp/.out pairs of ../shared/vocab must agree with our references."""
    from tokenizers import Tokenizer
    hl = Tokenizer.from_str(json.dumps(hl_json))
    texts = open(inp, encoding="utf-8").read().split("\n__ggml_vocab_test__\n")[:-1]
    outs = open(outp, encoding="utf-8").read().split("\n")
    bad = 0
    for t, o in zip(texts, outs):
        want = [int(x) for x in o.split()]
        if sp is not None and sp.encode(t) != want:
            bad += 1
            print("  sentencepiece differs from %s on %r" % (os.path.basename(outp), t[:40]))
        if hl.encode(t, add_special_tokens=False).ids != want:
            bad += 1
            print("  HF differs from %s on %r" % (os.path.basename(outp), t[:40]))
    print("checked", len(texts), "strings of", os.path.basename(inp), "mismatches:", bad)
    return bad


# ----------------------------------------------------------------------------
# tiny models
# ----------------------------------------------------------------------------
def tiny_training_text():
    rnd = random.Random(1)
    words = ("the quick brown fox jumps over lazy dog hello world tokenizer model inference server "
             "byte pair encoding test data running quickly numbers she said they are we will it is").split()
    lines = []
    for _ in range(400):
        lines.append(" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 12))) +
                     rnd.choice([".", "!", "?", ",", "", " 42.", " 2024"]))
    lines += ["café naïve résumé", "Hello, World! 12345", "email: a@b.c", "tab\tseparated\tvalues",
              "I'm sure it's fine, don't worry.", "    indented code(x) { return y; }"]
    return "\n".join(lines) + "\n"


def train_spm_tiny(d, retrain):
    import sentencepiece as spm
    path = os.path.join(d, "tokenizer.model")
    if os.path.exists(path) and not retrain:
        return path
    os.makedirs(d, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        txt = os.path.join(td, "train.txt")
        open(txt, "w", encoding="utf-8").write(tiny_training_text())
        spm.SentencePieceTrainer.train(
            input=txt, model_prefix=os.path.join(td, "m"), model_type="bpe", vocab_size=400,
            byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
            add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True,
            allow_whitespace_only_pieces=True, num_threads=1, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            minloglevel=2)
        # drop the temp paths recorded in trainer_spec so retraining is byte-identical
        from sentencepiece import sentencepiece_model_pb2 as pb
        m = pb.ModelProto()
        m.ParseFromString(open(os.path.join(td, "m.model"), "rb").read())
        del m.trainer_spec.input[:]
        m.trainer_spec.model_prefix = ""
        open(path, "wb").write(m.SerializeToString())
    return path


def gen_spm_tiny(retrain, corpus):
    import sentencepiece as spm
    from transformers import AutoTokenizer
    from tokenizers import Tokenizer
    d = os.path.join(FIX, "tok_spm_tiny")
    path = train_spm_tiny(d, retrain)
    cfg = {"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "add_eos_token": False,
           "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "clean_up_tokenization_spaces": False}
    write_json(os.path.join(d, "tokenizer_config.json"), cfg)
    sp = spm.SentencePieceProcessor(model_file=path)
    hf = AutoTokenizer.from_pretrained(d)
    conv = json.loads(hf.backend_tokenizer.to_str())
    legacy = legacy_llama_json(conv)
    gen_spm(sp, legacy, "tok_spm_tiny.json", "test/fixtures/tok_spm_tiny/tokenizer.model", corpus,
            SPECIAL_CASES_SPM, other_hf=hf)
    # tokenizer.json variants for the HF-directory loader
    dj = os.path.join(FIX, "tok_spm_tiny_json")
    legacy_pp = copy.deepcopy(legacy)
    legacy_pp["post_processor"] = conv["post_processor"]
    write_json(os.path.join(dj, "tokenizer.json"), legacy_pp)
    write_json(os.path.join(dj, "tokenizer_config.json"), cfg)
    dm = os.path.join(FIX, "tok_spm_tiny_meta")
    write_json(os.path.join(dm, "tokenizer.json"), conv)
    write_json(os.path.join(dm, "tokenizer_config.json"), cfg)
    for name, tj in [("tok_spm_tiny_json.json", legacy_pp), ("tok_spm_tiny_meta.json", conv)]:
        gen_hf_json_fixture(tj, name, corpus, SPECIAL_CASES_SPM, add_bos_cases=True)


def gen_hf_json_fixture(tj, name, corpus, special_cases, add_bos_cases=False):
    from tokenizers import Tokenizer
    t = Tokenizer.from_str(json.dumps(tj))
    ts = Tokenizer.from_str(json.dumps(tj))
    ts.encode_special_tokens = True

    def ids_of(s, ps):
        return (t if ps else ts).encode(s, add_special_tokens=False).ids

    def dec(ids):
        return t.decode(ids, skip_special_tokens=True)
    cases = hf_case_list(ids_of, dec, corpus, special_cases)
    if add_bos_cases:
        for s in ["Hello world", "", " x"]:
            ids = t.encode(s, add_special_tokens=True).ids
            cases.append({"text": s, "ids": ids, "parse_special": 1, "add_bos": 1, "decoded": dec(ids)})
    rng = random.Random(5)
    specials = [a["id"] for a in tj["added_tokens"] if a["special"]]
    dcs = [{"ids": ids, "text": dec(ids)} for ids in decode_cases(rng, t.get_vocab_size(), specials, [])]
    write_json(os.path.join(FIX, name), {
        "reference": "HF tokenizers %s" % __import__("tokenizers").__version__,
        "vocab": "test/fixtures/" + name[:-5] + "/tokenizer.json", "cases": cases, "decode_cases": dcs,
        "notes": []})


LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")


def gen_bpe_tiny(retrain, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors, Regex
    for kind in ["digits", "l3"]:
        d = os.path.join(FIX, "tok_bpe_tiny_" + kind)
        path = os.path.join(d, "tokenizer.json")
        if retrain or not os.path.exists(path):
            tk = Tokenizer(models.BPE(ignore_merges=(kind == "l3")))
            if kind == "digits":
                tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                            pre_tokenizers.ByteLevel(add_prefix_space=False)])
                specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            else:
                tk.pre_tokenizer = pre_tokenizers.Sequence([
                    pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
                specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                            "<|end_header_id|>"]
            tk.decoder = decoders.ByteLevel()
            tr = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            tk.train_from_iterator(tiny_training_text().split("\n"), trainer=tr)
            if kind == "l3":
                tk.post_processor = processors.TemplateProcessing(
                    single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                    special_tokens=[("<|begin_of_text|>", tk.token_to_id("<|begin_of_text|>"))])
                # a non-special added token: always matched, kept by decode; and a
                # special one that swallows the whitespace around it
                tk.add_tokens(["<tool>"])
                from tokenizers import AddedToken
                tk.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, special=True,
                                                  normalized=False)])
            os.makedirs(d, exist_ok=True)
            tk.save(path)
            if kind == "digits":
                cfg = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
                       "clean_up_tokenization_spaces": False}
            else:
                cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                       "clean_up_tokenization_spaces": True}
            write_json(os.path.join(d, "tokenizer_config.json"), cfg)
        tj = json.load(open(path, encoding="utf-8"))
        extra = SPECIAL_CASES_BPE + ["<|begin_of_text|>hi<|eot_id|>", "x <tool> y", "<tool><tool>",
                                     "a  <mask>  b", "<mask>\n\tc", " \t<mask>"]
        name = "tok_bpe_tiny_%s.json" % kind
        gen_hf_json_fixture(tj, name, corpus, extra, add_bos_cases=True)
        if kind == "l3":
            # transformers-level decode with clean_up_tokenization_spaces=True in the config
            # (transformers 5.x ignores it for BPE tokenizers; older versions applied it)
            from transformers import PreTrainedTokenizerFast
            pt = PreTrainedTokenizerFast(tokenizer_file=path, clean_up_tokenization_spaces=True)
            fx = json.load(open(os.path.join(FIX, name), encoding="utf-8"))
            for cs in fx["cases"]:
                cs["decoded"] = pt.decode(cs["ids"], skip_special_tokens=True)
            for cs in fx["decode_cases"]:
                cs["text"] = pt.decode(cs["ids"], skip_special_tokens=True)
            fx["reference"] += " + transformers %s decode (config clean_up_tokenization_spaces=True)" % \
                __import__("transformers").__version__
            write_json(os.path.join(FIX, name), fx)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--retrain", action="store_true", help="retrain the tiny SPM/BPE models")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--vocab-dir", default=os.path.join(ROOT, "..", "shared", "vocab"))
    a = ap.parse_args()
    import sentencepiece as spm
    corpus = build_corpus()
    print("corpus:", len(corpus), "strings")
    assert len(corpus) >= 200

    small = [s for s in corpus if len(s) < 2000]  # the tiny models skip the 10 KB text
    gen_bpe_tiny(a.retrain, small)
    gen_spm_tiny(a.retrain, small)

    if os.path.exists(a.model):
        gen_bpe_gguf(a.model, "tok_smollm2.json", True, corpus)
    else:
        print("skip SmolLM2: %s missing" % a.model)

    gpt2 = os.path.join(a.vocab_dir, "ggml-vocab-gpt-2.gguf")
    if os.path.exists(gpt2):
        gen_bpe_gguf(gpt2, "tok_gpt2.json", False, corpus)
    else:
        print("skip GPT-2: %s missing" % gpt2)

    llama = os.path.join(a.vocab_dir, "ggml-vocab-llama-spm.gguf")
    if os.path.exists(llama):
        m = spm_proto_from_gguf(llama)
        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(m.SerializeToString())
        hf = load_hf_gguf(llama)
        legacy = legacy_llama_json(json.loads(hf.backend_tokenizer.to_str()))
        bad = check_vocab_test_files(sp, legacy, llama + ".inp", llama + ".out")
        if bad:
            sys.exit("reference disagrees with %s.out" % llama)
        gen_spm(sp, legacy, "tok_llama_spm.json", "../shared/vocab/ggml-vocab-llama-spm.gguf", corpus,
                SPECIAL_CASES_SPM, other_hf=hf)
        if os.path.exists(gpt2):
            hf2 = load_hf_gguf(gpt2)
            bad = check_vocab_test_files(None, json.loads(hf2.backend_tokenizer.to_str()), gpt2 + ".inp",
                                         gpt2 + ".out")
            if bad:
                sys.exit("reference disagrees with %s.out" % gpt2)
    else:
        print("skip LLaMA SPM: %s missing" % llama)


if __name__ == "__main__":
    main()

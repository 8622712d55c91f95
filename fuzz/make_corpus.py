#!/usr/bin/env python3
"""Regenerates the seed corpora in fuzz/corpus/<target>/ (small, deterministic; checked in).

  .venv/bin/python fuzz/make_corpus.py [--shared ../shared]

fuzz_tokenizer: the golden stress strings (../shared/data/golden/tokenizer/stress.jsonl, 58 texts and
  10 pairs) and a few SST-2 dev sentences, behind the target's 4-byte header (flags, max_length, split),
  plus a few invalid UTF-8 texts.
fuzz_safetensors: small valid files made here (F32/F16/BF16/I64, scalar, empty tensor, metadata, a
  micro BERT checkpoint layout) and a few broken ones.
fuzz_tokenizer_json: small tokenizer.json files from Hugging Face's tokenizers library (WordPiece
  variants, and a BPE file and a broken one that must be refused).
fuzz_model_config: the golden tiny-cls/tiny-qa config.json and tokenizer_config.json and pruning.yaml
  files in the layout training/schedule.py writes.
Only files named seed-* are replaced; files libFuzzer adds to the corpus directories are left alone.
"""

import argparse
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Truncation modes of fuzz_tokenizer's header byte 0.
NONE, LONGEST_FIRST, ONLY_FIRST, ONLY_SECOND = 0, 1, 2, 3
PAIR = 4


def tok_seed(text_a, text_b=None, truncation=NONE, max_length=255, config=0):
    a = text_a.encode("utf-8") if isinstance(text_a, str) else text_a
    b = b""
    flags = truncation | (config << 3)
    if text_b is not None:
        b = text_b.encode("utf-8") if isinstance(text_b, str) else text_b
        flags |= PAIR
    split = len(a)
    return bytes([flags, max_length, split & 0xFF, (split >> 8) & 0xFF]) + a + b


def safetensors(tensors, metadata=None, pad_header=0):
    """tensors: list of (name, dtype, shape, raw bytes). Returns the file's bytes."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode() + b" " * pad_header
    return struct.pack("<Q", len(text)) + text + data


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def f16(values):
    return struct.pack(f"<{len(values)}e", *values)


def bf16(values):
    return b"".join(struct.pack("<f", v)[2:] for v in values)


def write(target, name, content):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(content)


def clear(target):
    d = os.path.join(HERE, "corpus", target)
    if os.path.isdir(d):
        for f in os.listdir(d):
            if f.startswith("seed-"):
                os.remove(os.path.join(d, f))


def tokenizer_seeds(shared):
    clear("fuzz_tokenizer")
    golden = os.path.join(shared, "data", "golden", "tokenizer")
    with open(os.path.join(golden, "stress.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    modes = [NONE, LONGEST_FIRST, ONLY_FIRST, ONLY_SECOND]
    for i, row in enumerate(rows):
        pair = row.get("text_pair")
        # Mostly the golden setting (config 0 = uncased, no truncation); every fourth seed truncates to
        # a small max_length and every fifth uses another tokenizer config.
        truncation = modes[i % 4] if i % 4 else (LONGEST_FIRST if pair is not None else NONE)
        max_length = 255 if i % 4 == 0 else 5 + i % 11
        config = (i // 5) % 12 if i % 5 == 0 else 0
        write("fuzz_tokenizer", f"stress-{i:02d}", tok_seed(row["text"], pair, truncation, max_length, config))
    with open(os.path.join(golden, "sst2-dev.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == 4:
                break
            write("fuzz_tokenizer", f"sst2-{i}", tok_seed(json.loads(line)["text"], None, LONGEST_FIRST, 12))
    invalid = [b"caf\xc3", b"\xc0\xafoverlong", b"surrogate \xed\xa0\x80", b"big \xf4\x90\x80\x80", b"\xff\xfe",
               b"ok [CLS] \x80 continuation"]
    for i, text in enumerate(invalid):
        write("fuzz_tokenizer", f"invalid-{i}", tok_seed(text, None, NONE, 64))
    write("fuzz_tokenizer", "invalid-second", tok_seed("valid first", b"bad \xe2\x82 second", ONLY_SECOND, 8))


def safetensors_seeds():
    clear("fuzz_safetensors")
    write("fuzz_safetensors", "empty-header", safetensors([]))
    write("fuzz_safetensors", "f32", safetensors([("w", "F32", [2, 3], f32([0, 1, -2, 3.5, 1e30, -0.0]))]))
    write("fuzz_safetensors", "mixed",
          safetensors([("a.f16", "F16", [4], f16([1, -2, 65504, 6e-8])),
                       ("b.bf16", "BF16", [2, 2], bf16([1, -2, 3.0e38, 1e-38])),
                       ("c.ids", "I64", [3], struct.pack("<3q", 0, 1, 2)),
                       ("d.scalar", "F32", [], f32([42])),
                       ("e.empty", "F16", [0, 4], b""),
                       ("f.bool", "BOOL", [2], b"\x00\x01"),
                       ("g.f8", "F8_E4M3", [1], b"\x38")],
                      metadata={"format": "pt", "note": "seed"}, pad_header=3))
    # The layout of a BERT checkpoint, with tiny shapes (hidden 4, 1 layer, vocab 8).
    h, f, v = 4, 8, 8
    names = [("bert.embeddings.word_embeddings.weight", [v, h]),
             ("bert.embeddings.position_embeddings.weight", [4, h]),
             ("bert.embeddings.token_type_embeddings.weight", [2, h]),
             ("bert.embeddings.LayerNorm.weight", [h]), ("bert.embeddings.LayerNorm.bias", [h]),
             ("bert.encoder.layer.0.attention.self.query.weight", [h, h]),
             ("bert.encoder.layer.0.attention.self.query.bias", [h]),
             ("bert.encoder.layer.0.intermediate.dense.weight", [f, h]),
             ("bert.encoder.layer.0.output.dense.weight", [h, f]),
             ("classifier.weight", [2, h]), ("classifier.bias", [2])]
    tensors = []
    for k, (name, shape) in enumerate(names):
        n = 1
        for d in shape:
            n *= d
        vals = [((k * 31 + j * 7) % 17 - 8) / 8.0 for j in range(n)]
        tensors.append((name, "F16" if k % 2 else "F32", shape, (f16 if k % 2 else f32)(vals)))
    tensors.append(("bert.embeddings.position_ids", "I64", [1, 4], struct.pack("<4q", 0, 1, 2, 3)))
    write("fuzz_safetensors", "micro-bert", safetensors(tensors, metadata={"format": "pt"}))
    # Broken files: each must be an error, never a crash.
    good = safetensors([("w", "F32", [2], f32([1, 2]))])
    write("fuzz_safetensors", "truncated", good[:-3])
    write("fuzz_safetensors", "short", b"\x05\x00\x00")
    write("fuzz_safetensors", "header-too-long", struct.pack("<Q", 1 << 40) + b"{}")
    overlap = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    write("fuzz_safetensors", "overlap", struct.pack("<Q", len(overlap)) + overlap + bytes(8))
    dup = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    write("fuzz_safetensors", "duplicate", struct.pack("<Q", len(dup)) + dup + bytes(8))
    big = b'{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}'
    write("fuzz_safetensors", "huge-shape", struct.pack("<Q", len(big)) + big + bytes(8))


def config_seeds(shared):
    clear("fuzz_model_config")
    golden = os.path.join(shared, "data", "golden")
    for model in ("tiny-cls", "tiny-qa"):
        for name in ("config.json", "tokenizer_config.json"):
            with open(os.path.join(golden, model, name), "rb") as f:
                write("fuzz_model_config", f"{model}-{name}", f.read())
    write("fuzz_model_config", "tokenizer-config-cased.json",
          b'{"do_lower_case": false, "strip_accents": null, "tokenize_chinese_chars": false, '
          b'"model_max_length": 1000000000000000019884624838656, "tokenizer_class": "BertTokenizer"}')
    write("fuzz_model_config", "config-labels.json",
          json.dumps({"architectures": ["Other", "BertForSequenceClassification"], "vocab_size": 100,
                      "hidden_size": 12, "num_hidden_layers": 1, "num_attention_heads": 3,
                      "intermediate_size": 24, "hidden_act": "gelu_new", "num_labels": 3,
                      "id2label": {"0": "a", "1": "b", "2": "c"}, "pad_token_id": None,
                      "position_embedding_type": "absolute", "layer_norm_eps": 1e-5}).encode())
    write("fuzz_model_config", "pruning-2.yaml",
          b"version: 1\nplacement: between_layers\nkeep_ratios: [1, 0.5]\ntarget_flops: 0.25\nmethod: top\n")
    write("fuzz_model_config", "pruning-12.yaml",
          b"# written by training/schedule.py\nversion: 1\nplacement: after_mha\n"
          b"keep_ratios: [1.0, 1.0, 0.8, 0.7, 0.7, 0.6, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5]\n"
          b"target_flops: 0.25\nmethod: top\nstart_layer: 2\nnotes: seed\n")
    write("fuzz_model_config", "pruning-block.yaml",
          b"version: 1\nkeep_ratios:\n  - 1.0\n  - 0.9\nmethod: topk-untrained\n")
    write("fuzz_model_config", "pruning-flow.json",
          b'{"version": 1, "placement": "after_mha", "keep_ratios": [0.9, 0.1], "target_flops": 1}')


def tokenizer_json_seeds():
    """Small tokenizer.json files written by Hugging Face's tokenizers library (a 40-token vocab):
    the WordPiece variants docs/models.md supports, and a few the loader must refuse."""
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE, WordPiece

    clear("fuzz_tokenizer_json")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "x", "y", "hello", "world",
             "!", ",", ".", "'", "s", "it", "3", "14", "un", "##aff", "##able", "caf", "##e", "##é",
             "é", "中", "文", "##s", "the", "##x", "##y", "Hello", "World", "CAF", "##E", "##É",
             "super", "bowl"]
    vocab = {w: i for i, w in enumerate(words)}

    def wordpiece(lowercase=True, strip_accents=None, bert_processing=False, added=False,
                  chinese=True):
        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=chinese, strip_accents=strip_accents,
            lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        if bert_processing:
            tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
        else:
            tok.post_processor = processors.TemplateProcessing(
                single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
                special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        if added:
            tok.add_tokens([AddedToken("super bowl", normalized=True),
                            AddedToken("NFL", normalized=False)])
        return tok.to_str()

    write("fuzz_tokenizer_json", "uncased.json", wordpiece().encode())
    write("fuzz_tokenizer_json", "cased.json", wordpiece(lowercase=False).encode())
    write("fuzz_tokenizer_json", "accents.json", wordpiece(strip_accents=False).encode())
    write("fuzz_tokenizer_json", "bertproc.json", wordpiece(bert_processing=True).encode())
    write("fuzz_tokenizer_json", "added.json", wordpiece(added=True, chinese=False).encode())
    bpe = Tokenizer(BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    write("fuzz_tokenizer_json", "bpe-refused.json", bpe.to_str().encode())
    write("fuzz_tokenizer_json", "not-json.json", b'{"model": {"type": "WordPiece", "vocab": {')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared"))
    args = ap.parse_args()
    tokenizer_seeds(args.shared)
    safetensors_seeds()
    config_seeds(args.shared)
    tokenizer_json_seeds()
    total = 0
    for root, _, files in os.walk(os.path.join(HERE, "corpus")):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files if f.startswith("seed-"))
    print(f"seed corpora written ({total} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()

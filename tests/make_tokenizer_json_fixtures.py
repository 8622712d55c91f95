#!/usr/bin/env python3
"""Makes tokenizer.json files with Hugging Face's `tokenizers` package and that package's own output
for them, as the oracle for tests/tokenizer_json_test.cc (engine/tokenizer_json.cc).

Nothing here uses topserve's code: the files are built with the `tokenizers` API and the expected ids,
type ids and offsets are what `Tokenizer.encode` returns.

Tokenizers (WordPiece over ../shared/data/bert-base-uncased/vocab.txt, BertNormalizer +
BertPreTokenizer + TemplateProcessing "[CLS] $A [SEP] ($B [SEP])", the five BERT special tokens):
  wordpiece-uncased         lowercase=True,  strip_accents=None (follows lowercase: strips)
  wordpiece-cased           lowercase=False, strip_accents=None (follows lowercase: keeps accents)
  wordpiece-uncased-accents lowercase=True,  strip_accents=False
  wordpiece-bertproc        as uncased, with BertProcessing instead of TemplateProcessing
  wordpiece-added           as uncased, plus added tokens: "NFL" (normalized=False, matched in the
                            original text) and "super bowl", "Denver", "naïve", "ing" (normalized=True)

Texts (texts.json: {"texts": [...], "sweep_from": index of the first code-point sweep}): every SST-2 dev sentence, every SQuAD v1.1 dev question and
context, the stress strings of ../shared/data/golden/tokenizer/stress.jsonl, a few hand-written ones
(special tokens inside text, accents in both forms, CJK, control characters), and code-point sweeps
(every assigned-or-not code point of planes 0-3 and 14 except surrogates, 32 per text, each between
letters and alone).

Expected output, one file per tokenizer, <name>.expected.json:
  {"cases": [{"a": i, "b": j or null, "ids": [...], "type_ids": [...], "offsets": [s0, e0, s1, e1, ...]}]}
with character (code point) offsets into text a or b as the package reports them ((0, 0) for the
template's special tokens). Cases: every text alone, and every SQuAD question with its context as a
pair (for the uncased and cased files; the other two get the singles and 1000 pairs).

  make_tokenizer_json_fixtures.py --shared ../shared --out build/tests/data/tokjson
"""

import argparse
import hashlib
import json
import os
import sys

from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def load_vocab(path):
    vocab = {}
    with open(path, encoding="utf-8", newline="") as f:
        for i, line in enumerate(f.read().split("\n")):
            if line or i == 0:
                vocab[line] = i  # a repeated line: the later id, as WordPiece.read_file does
    return vocab


def make_wordpiece(vocab, lowercase, strip_accents, bert_processing=False, added=False):
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    if bert_processing:
        tok.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.add_special_tokens(SPECIALS)
    if added:
        tok.add_tokens([AddedToken("NFL", normalized=False), AddedToken("super bowl", normalized=True),
                        AddedToken("Denver", normalized=True), AddedToken("naïve", normalized=True),
                        AddedToken("ing", normalized=True)])
    return tok


def collect_texts(shared):
    texts = []
    with open(os.path.join(shared, "data/sst2/dev.tsv"), encoding="utf-8") as f:
        rows = f.read().split("\n")
    for row in rows[1:]:
        if row:
            texts.append(row.rsplit("\t", 1)[0])
    n_sst2 = len(texts)
    pairs = []
    with open(os.path.join(shared, "data/squad/dev-v1.1.json"), encoding="utf-8") as f:
        squad = json.load(f)
    for article in squad["data"]:
        for para in article["paragraphs"]:
            c = len(texts)
            texts.append(para["context"])
            for qa in para["qas"]:
                pairs.append((len(texts), c))
                texts.append(qa["question"])
    n_squad = len(texts) - n_sst2
    with open(os.path.join(shared, "data/golden/tokenizer/stress.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                for key in ("text", "text_pair"):
                    if isinstance(row.get(key), str):
                        texts.append(row[key])
    texts += [
        "", " ", "\t\n", "[CLS]", "a[CLS]b", "[SEP][SEP]", "[cls] [Cls]", "x [MASK] y[PAD]z", "[UNK]nown",
        "[CLS", "CLS]", "[[CLS]]", "café CAFÉ cafe\u0301 CAFE\u0301", "İstanbul ǅ ß ẞ Σσς", "中文字 日本語 한국어",
        "a\u0000b\u0007c\u200bd\ufffde\u00a0f\u3000g\u2028h", "e\u0301\u0301 \u0301x \u0301", "x" * 101, "x" * 100,
        "unaffable " * 20, "Hello, World! It's 3.14 — “quoted” ‘single’ …", "ｆｕｌｌ ｗｉｄｔｈ ①②",
        "\U0001F600 emoji \U0001F923 \U0001F970 \U0001FAE8", "Ǆemo ǆ ǅ ﬁ ﬂ", "Å Å Å", "ℌ ℍ Ω Ω K K",
    ]
    sweep_start = len(texts)
    cps = [c for c in list(range(0x80, 0x40000)) + list(range(0xE0000, 0xE1000)) if not 0xD800 <= c <= 0xDFFF]
    for i in range(0, len(cps), 32):
        group = cps[i:i + 32]
        texts.append(" ".join("a" + chr(c) + "b" for c in group) + " " + " ".join(chr(c) for c in group))
    return texts, pairs, n_sst2, n_squad, len(texts) - sweep_start


def expected(tok, texts, pairs):
    cases = []
    singles = tok.encode_batch(texts)
    for i, e in enumerate(singles):
        cases.append({"a": i, "b": None, "ids": e.ids, "type_ids": e.type_ids,
                      "offsets": [x for o in e.offsets for x in o]})
    encs = tok.encode_batch([(texts[q], texts[c]) for q, c in pairs])
    for (q, c), e in zip(pairs, encs):
        # For a pair the package reports each token's offsets into its own sequence.
        cases.append({"a": q, "b": c, "ids": e.ids, "type_ids": e.type_ids,
                      "offsets": [x for o in e.offsets for x in o]})
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    # The outputs depend only on this script, the data files and the package version: reuse them when
    # none changed (regenerating takes minutes on a busy machine).
    import tokenizers
    key = hashlib.sha256()
    key.update(tokenizers.__version__.encode())
    for path in [__file__] + [os.path.join(args.shared, "data", p) for p in (
            "bert-base-uncased/vocab.txt", "sst2/dev.tsv", "squad/dev-v1.1.json", "golden/tokenizer/stress.jsonl")]:
        with open(path, "rb") as f:
            key.update(hashlib.sha256(f.read()).digest())
    stamp = os.path.join(args.out, "stamp")
    if os.path.exists(stamp) and open(stamp).read() == key.hexdigest():
        print(f"{args.out}: up to date")
        return 0
    if os.path.exists(stamp):
        os.remove(stamp)
    vocab = load_vocab(os.path.join(args.shared, "data/bert-base-uncased/vocab.txt"))
    texts, pairs, n_sst2, n_squad, n_sweep = collect_texts(args.shared)
    with open(os.path.join(args.out, "texts.json"), "w", encoding="utf-8") as f:
        json.dump({"texts": texts, "sweep_from": len(texts) - n_sweep}, f, ensure_ascii=False)
    variants = {
        "wordpiece-uncased": (make_wordpiece(vocab, True, None), pairs),
        "wordpiece-cased": (make_wordpiece(vocab, False, None), pairs),
        "wordpiece-uncased-accents": (make_wordpiece(vocab, True, False), pairs[:1000]),
        "wordpiece-bertproc": (make_wordpiece(vocab, True, None, bert_processing=True), pairs[:1000]),
        "wordpiece-added": (make_wordpiece(vocab, True, None, added=True), pairs[:1000]),
    }
    for name, (tok, use_pairs) in variants.items():
        tok.save(os.path.join(args.out, name + ".json"))
        # The saved file is what the engine reads: the expected output comes from loading it back.
        reloaded = Tokenizer.from_file(os.path.join(args.out, name + ".json"))
        cases = expected(reloaded, texts, use_pairs)
        with open(os.path.join(args.out, name + ".expected.json"), "w", encoding="utf-8") as f:
            json.dump({"cases": cases}, f, separators=(",", ":"))
        print(f"{name}: {len(cases)} cases ({len(texts)} texts: {n_sst2} SST-2 dev, {n_squad} SQuAD dev "
              f"questions and contexts, {n_sweep} code-point sweeps, the rest stress/hand-written; "
              f"{len(use_pairs)} question/context pairs)")
    with open(stamp, "w") as f:
        f.write(key.hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())

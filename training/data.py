"""Data: SST-2 / SQuAD loading, tokenization with the shared reference tokenizer, caching, batching.

Tokenized data is cached under training/.cache/ (git-ignored), keyed by the input file, the vocabulary
and the tokenizer's source, so a changed tokenizer re-tokenizes.
"""
import hashlib
import json
import os
import pickle
import random
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TOOLS = os.path.join(REPO, "tools")
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)
CACHE = os.path.join(HERE, ".cache")
DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))


def _md5_file(path, limit=None):
    h = hashlib.md5()
    with open(path, "rb") as f:
        h.update(f.read() if limit is None else f.read(limit))
    return h.hexdigest()


class Tokenizer:
    """Wraps tools/ref_tokenizer.py (HF-identical BERT WordPiece)."""

    def __init__(self, vocab_path, do_lower_case=True):
        import ref_tokenizer
        self.vocab = ref_tokenizer.load_vocab(vocab_path)
        self.impl = ref_tokenizer.RefTokenizer(self.vocab, do_lower_case=do_lower_case)
        self.vocab_path = vocab_path
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.pad_id = self.vocab["[PAD]"]
        self.mask_id = self.vocab["[MASK]"]
        self.unk_id = self.vocab["[UNK]"]
        src = getattr(ref_tokenizer, "__file__", "") or ""
        self.tag = _md5_file(src) if os.path.exists(src) else "unknown"
        self.tag = hashlib.md5((self.tag + _md5_file(vocab_path) + str(do_lower_case))
                               .encode()).hexdigest()[:12]

    def pieces(self, text):
        vocab = self.vocab
        return [vocab[p[0]] for p in self.impl.tokenize(text)]

    def encode(self, text, max_len):
        ids = self.pieces(text)[: max_len - 2]
        return [self.cls_id] + ids + [self.sep_id]


def _cached(name, key, build):
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, f"{name}-{hashlib.md5(key.encode()).hexdigest()[:16]}.pkl")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    obj = build()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=4)
    os.replace(tmp, path)
    return obj


def read_tsv(path):
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        ti, li = header.index("text"), header.index("label")
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) <= max(ti, li):
                continue
            texts.append(parts[ti])
            labels.append(int(parts[li]))
    return texts, labels


def load_classification(path, tok, max_len):
    """[(ids list, label)] for a text<TAB>label file, tokenized once and cached."""
    key = f"{os.path.abspath(path)}:{_md5_file(path)}:{tok.tag}:{max_len}"

    def build():
        texts, labels = read_tsv(path)
        return [(np.asarray(tok.encode(t, max_len), dtype=np.int32), y)
                for t, y in zip(texts, labels)]
    return _cached("cls", key, build)


def maximal_sentences(texts, keep_single_words=False):
    """SST-2 train holds every sentence plus its sub-phrases; keep the texts that are not a
    contiguous word span of a longer text (the full sentences).

    keep_single_words=True keeps one-word texts whatever they are (how the MLM corpus of the demo
    model was built; a few thousand extra words of MLM text)."""
    uniq = sorted(set(t.strip() for t in texts), key=lambda s: (-len(s.split()), s))
    index = {}
    words = set()
    kept = []
    for s in uniq:
        w = s.split()
        if not w:
            continue
        if len(w) == 1 and not keep_single_words and w[0] in words:
            continue
        head = tuple(w[:2])
        padded = " " + s + " "
        if any(padded in " " + kept[i] + " " for i in index.get(head, ())):
            continue
        kept.append(s)
        words.update(w)
        k = len(kept) - 1
        for j in range(len(w) - len(head) + 1):
            index.setdefault(tuple(w[j:j + len(head)]), set()).add(k)
    return kept


def load_mlm_corpus(tok, sst2_train, squad_json, seq_len=128):
    """Token id sequences of length <= seq_len for masked-LM pre-training: SQuAD contexts chunked into
    [CLS] chunk [SEP], SST-2 sentences packed as [CLS] s1 [SEP] s2 [SEP] ..."""
    key = f"{_md5_file(sst2_train)}:{_md5_file(squad_json)}:{tok.tag}:{seq_len}"

    def build():
        seqs = []
        with open(squad_json, encoding="utf-8") as f:
            squad = json.load(f)
        body = seq_len - 2
        for art in squad["data"]:
            for p in art["paragraphs"]:
                ids = tok.pieces(p["context"])
                for s in range(0, len(ids), body):
                    chunk = ids[s:s + body]
                    if len(chunk) >= 16:
                        seqs.append([tok.cls_id] + chunk + [tok.sep_id])
        texts, _ = read_tsv(sst2_train)
        sents = maximal_sentences(texts, keep_single_words=True)
        random.Random(0).shuffle(sents)
        cur = [tok.cls_id]
        for s in sents:
            ids = tok.pieces(s)[: seq_len - 2] + [tok.sep_id]
            if len(cur) + len(ids) > seq_len:
                seqs.append(cur)
                cur = [tok.cls_id]
            cur += ids
        if len(cur) > 1:
            seqs.append(cur)
        return [np.asarray(s, dtype=np.int32) for s in seqs]
    return _cached("mlm", key, build)


def pad_batch(seqs, pad_id=0):
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    presence = torch.zeros(len(seqs), n)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        presence[i, :len(s)] = 1.0
    return ids, presence


def bucketed_batches(lengths, batch_size, rng, bucket_mult=50):
    """Index batches of similar lengths (little padding), in random order."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    batches = []
    span = batch_size * bucket_mult
    for s in range(0, len(idx), span):
        chunk = sorted(idx[s:s + span], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths, batch_size):
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[j:j + batch_size] for j in range(0, len(order), batch_size)]

#!/usr/bin/env python3
"""Pure-Python reference of the BERT WordPiece tokenizer (Hugging Face BertTokenizer semantics).

Standard library only (unicodedata), so it runs with any Python 3 (the project's is .venv/bin/python). It exists to produce
expected outputs for the C++ tokenizer (engine/tokenizer.cc) on data that has no golden file, e.g. the
SQuAD dev set, including byte offsets.

Two independent paths are implemented:
  * `tokenize_literal`: a string-level transcription of what BertTokenizer.tokenize does (split on the
    special tokens, the per-character lower-casing pre-pass of PreTrainedTokenizer.tokenize, then
    BasicTokenizer: clean, CJK spacing, NFC, whitespace split, lower, NFD + drop Mn, punctuation split;
    then greedy longest-match WordPiece). Tokens only, no offsets.
  * `tokenize`: the same algorithm written over characters that carry the span of the original text
    they came from, so every piece gets [begin, end) offsets.
Every run cross-checks the two paths on all texts it tokenizes.

Commands (all print a short summary; exit status 1 on any mismatch):
  selfcheck --golden-dir DIR --vocab V      compare against DIR/sst2-dev.jsonl and DIR/stress.jsonl
  squad --squad dev-v1.1.json --vocab V --out OUT.jsonl
                                            one line per context and per question (ids, byte offsets)
                                            and per question+context pair the truncation lengths
  texts --input IN.jsonl --vocab V --out OUT.jsonl [--cased] [--strip-accents {unset,true,false}]
        [--no-chinese-chars]
                                            IN lines: {"text": ...} or a JSON string; OUT: ids, offsets
  codepoints --vocab V --out OUT.jsonl      tokenizes every code point in a few contexts (see below)
"""

import argparse
import json
import os
import sys
import tempfile
import unicodedata

SPECIAL_TOKENS = ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")
MAX_INPUT_CHARS_PER_WORD = 100

# ----------------------------------------------------------------------------------------------
# Character classes, as Hugging Face's tokenization_bert.py / tokenization_utils.py define them.


def is_whitespace(ch):
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(ch) == "Zs"


def is_control(ch):
    if ch in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(ch).startswith("C")


def is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def is_chinese_char(cp):
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def is_separator(ch):
    """Characters str.split() splits on once the text is cleaned (includes U+2028/U+2029)."""
    return is_whitespace(ch) or ch.isspace()


def load_vocab(path):
    """Like transformers.load_vocab: universal newlines, rstrip('\\n'), the last duplicate wins."""
    vocab = {}
    with open(path, "r", encoding="utf-8") as f:
        for index, line in enumerate(f.readlines()):
            vocab[line.rstrip("\n")] = index
    return vocab


def split_specials(text, specials):
    """Splits on literal special tokens (leftmost, longest). Yields (begin, end, is_special)."""
    out = []
    start = 0
    i = text.find("[")
    while i != -1:
        best = None
        for s in specials:
            if text.startswith(s, i) and (best is None or len(s) > len(best)):
                best = s
        if best is None:
            i = text.find("[", i + 1)
            continue
        if start < i:
            out.append((start, i, False))
        out.append((i, i + len(best), True))
        start = i + len(best)
        i = text.find("[", start)
    if start < len(text):
        out.append((start, len(text), False))
    return out


class RefTokenizer:
    def __init__(self, vocab, do_lower_case=True, strip_accents=None, tokenize_chinese_chars=True):
        self.vocab = vocab
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.specials = tuple(s for s in SPECIAL_TOKENS if s in vocab)
        for s in ("[UNK]", "[CLS]", "[SEP]"):
            if s not in vocab:
                raise ValueError("vocab has no " + s)
        self.unk_id = vocab["[UNK]"]
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]

    def _strips(self):
        # BasicTokenizer: strip_accents unset follows do_lower_case.
        if self.do_lower_case:
            return self.strip_accents is not False
        return bool(self.strip_accents)

    # ------------------------------------------------------------------------------------------
    # Literal path: strings only, structured like the Hugging Face code.

    def _wordpiece_literal(self, token):
        chars = list(token)
        if len(chars) > MAX_INPUT_CHARS_PER_WORD:
            return ["[UNK]"]
        start = 0
        sub_tokens = []
        while start < len(chars):
            end = len(chars)
            cur = None
            while start < end:
                substr = "".join(chars[start:end])
                if start > 0:
                    substr = "##" + substr
                if substr in self.vocab:
                    cur = substr
                    break
                end -= 1
            if cur is None:
                return ["[UNK]"]
            sub_tokens.append(cur)
            start = end
        return sub_tokens

    def _basic_literal(self, text):
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or is_control(ch):
                continue
            out.append(" " if is_whitespace(ch) else ch)
        text = "".join(out)
        if self.tokenize_chinese_chars:
            out = []
            for ch in text:
                if is_chinese_char(ord(ch)):
                    out.extend((" ", ch, " "))
                else:
                    out.append(ch)
            text = "".join(out)
        text = unicodedata.normalize("NFC", text)
        split_tokens = []
        for token in text.strip().split():
            if token not in self.specials:
                if self.do_lower_case:
                    token = token.lower()
                if self._strips():
                    token = "".join(
                        c for c in unicodedata.normalize("NFD", token) if unicodedata.category(c) != "Mn"
                    )
                words = []
                start_new = True
                for ch in token:
                    if is_punctuation(ch):
                        words.append([ch])
                        start_new = True
                    else:
                        if start_new:
                            words.append([])
                        start_new = False
                        words[-1].append(ch)
                split_tokens.extend("".join(w) for w in words)
            else:
                split_tokens.append(token)
        return " ".join(split_tokens).strip().split()

    def tokenize_literal(self, text):
        tokens = []
        for b, e, special in split_specials(text, self.specials):
            chunk = text[b:e]
            if special:
                tokens.append(chunk)
                continue
            if self.do_lower_case:  # PreTrainedTokenizer.tokenize: re.sub(...(.+?)..., m.lower()), char by char
                chunk = "".join(c.lower() for c in chunk)
            for word in self._basic_literal(chunk):
                tokens.extend(self._wordpiece_literal(word))
        return tokens

    # ------------------------------------------------------------------------------------------
    # Tracked path: characters carry the [begin, end) character span of the original text.

    @staticmethod
    def _nfd(chars):
        """chars: list of (ch, b, e). Full canonical decomposition + canonical ordering."""
        out = []
        for ch, b, e in chars:
            for d in unicodedata.normalize("NFD", ch):
                out.append((d, b, e))
        # canonical ordering: stable sort of each run of non-starters by combining class
        i = 0
        n = len(out)
        while i < n:
            if unicodedata.combining(out[i][0]) == 0:
                i += 1
                continue
            j = i
            while j < n and unicodedata.combining(out[j][0]) != 0:
                j += 1
            out[i:j] = sorted(out[i:j], key=lambda t: unicodedata.combining(t[0]))
            i = j
        return out

    @staticmethod
    def _compose_pair(a, b):
        s = unicodedata.normalize("NFC", a + b)
        return s if len(s) == 1 else None

    def _nfc(self, chars):
        # Below U+0300 nothing decomposes or composes (combining marks start at U+0300).
        if all(ord(c) < 0x300 for c, _, _ in chars):
            return chars
        out = []
        starter = -1  # index in out of the last starter
        max_class = -1  # highest combining class appended since that starter (-1: none)
        for ch, b, e in self._nfd(chars):
            cc = unicodedata.combining(ch)
            if starter >= 0 and cc > max_class:  # not blocked from the starter
                comp = self._compose_pair(out[starter][0], ch)
                if comp is not None:
                    _, s_b, s_e = out[starter]
                    out[starter] = (comp, min(s_b, b), max(s_e, e))
                    continue
            out.append((ch, b, e))
            if cc == 0:
                starter = len(out) - 1
                max_class = -1
            else:
                max_class = max(max_class, cc)
        return out

    def _wordpiece(self, chars, pieces):
        """chars: list of (ch, b, e); appends (token, b, e) to pieces."""
        n = len(chars)
        if n > MAX_INPUT_CHARS_PER_WORD:
            pieces.append(("[UNK]", min(c[1] for c in chars), max(c[2] for c in chars)))
            return
        text = "".join(c[0] for c in chars)
        out = []
        start = 0
        while start < n:
            end = n
            found = None
            while end > start:
                sub = text[start:end] if start == 0 else "##" + text[start:end]
                if sub in self.vocab:
                    found = sub
                    break
                end -= 1
            if found is None:
                pieces.append(("[UNK]", min(c[1] for c in chars), max(c[2] for c in chars)))
                return
            span = chars[start:end]
            out.append((found, min(c[1] for c in span), max(c[2] for c in span)))
            start = end
        pieces.extend(out)

    def _word(self, chars, pieces):
        if not chars:
            return
        if self.do_lower_case:
            chars = [(lc, b, e) for c, b, e in chars for lc in c.lower()]
        nfc = self._nfc(chars)
        if "".join(c[0] for c in nfc) in self.specials:  # BasicTokenizer never_split
            pieces.append(("".join(c[0] for c in nfc), min(c[1] for c in nfc), max(c[2] for c in nfc)))
            return
        if self._strips():
            # NFD(NFC(x)) == NFD(x). A dropped mark's span joins the character before it (if any), so a
            # decomposed "e" + U+0301 maps to all of its bytes, like a precomposed "é".
            kept = []
            for ch, b, e in self._nfd(chars):
                if unicodedata.category(ch) != "Mn":
                    kept.append((ch, b, e))
                elif kept:
                    pch, pb, pe = kept[-1]
                    kept[-1] = (pch, min(pb, b), max(pe, e))
            chars = kept
        else:
            chars = nfc
        cur = []
        for t in chars:
            if is_punctuation(t[0]):
                if cur:
                    self._wordpiece(cur, pieces)
                    cur = []
                self._wordpiece([t], pieces)
            else:
                cur.append(t)
        if cur:
            self._wordpiece(cur, pieces)

    def tokenize(self, text):
        """-> list of (token, begin_char, end_char)."""
        pieces = []
        for b0, e0, special in split_specials(text, self.specials):
            if special:
                pieces.append((text[b0:e0], b0, e0))
                continue
            word = []
            for i in range(b0, e0):
                ch = text[i]
                cp = ord(ch)
                if cp == 0 or cp == 0xFFFD or is_control(ch):
                    continue
                if is_separator(ch):
                    self._word(word, pieces)
                    word = []
                elif self.tokenize_chinese_chars and is_chinese_char(cp):
                    self._word(word, pieces)
                    self._word([(ch, i, i + 1)], pieces)
                    word = []
                else:
                    word.append((ch, i, i + 1))
            self._word(word, pieces)
        return pieces

    def encode_pieces(self, text):
        """-> (ids, byte_begins, byte_ends); cross-checks the literal path."""
        pieces = self.tokenize(text)
        literal = self.tokenize_literal(text)
        tracked = [p[0] for p in pieces]
        if tracked != literal:
            raise AssertionError("tracked and literal paths disagree on %r:\n%r\n%r" % (text, tracked, literal))
        byte_pos = [0]
        for ch in text:
            byte_pos.append(byte_pos[-1] + len(ch.encode("utf-8", "surrogatepass")))
        ids = [self.vocab[p[0]] for p in pieces]
        return ids, [byte_pos[p[1]] for p in pieces], [byte_pos[p[2]] for p in pieces]


def truncate_lengths(la, lb, max_length, strategy):
    """HF truncate_sequences on lengths (lb None = single sequence) -> (la, lb), or None where Hugging
    Face refuses (it logs an error and returns the input untruncated): a max_length below the number of
    special tokens, only_first/only_second (or longest_first on a single sequence) that would have to
    remove the whole sequence, or strategy "none"."""
    specials = 2 if lb is None else 3
    total = la + (lb or 0) + specials
    if total <= max_length:
        return la, lb
    if max_length < specials:
        return None
    remove = total - max_length
    if strategy == "longest_first" and lb is not None:
        for _ in range(remove):  # one token at a time, from the longer one, the second when equal
            if la > lb:
                la -= 1
            else:
                lb -= 1
        return la, lb
    if strategy == "only_first" or (strategy == "longest_first" and lb is None):
        return (la - remove, lb) if la > remove else None
    if strategy == "only_second":
        return (la, lb - remove) if lb is not None and lb > remove else None
    return None


def encode_pair_tokens(tok, a_ids, b_ids):
    """[CLS] a [SEP] (b [SEP]) -> (ids, type_ids)."""
    ids = [tok.cls_id] + a_ids + [tok.sep_id]
    types = [0] * len(ids)
    if b_ids is not None:
        ids += b_ids + [tok.sep_id]
        types += [1] * (len(b_ids) + 1)
    return ids, types


# ----------------------------------------------------------------------------------------------
# Commands


def write_atomically(path, lines):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".jsonl")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False))
            f.write("\n")
    os.replace(tmp, path)


def cmd_selfcheck(args):
    tok = RefTokenizer(load_vocab(args.vocab))
    checked = 0
    failures = 0
    id_to_token = {}
    for t, i in tok.vocab.items():
        id_to_token.setdefault(i, t)
    for name in ("sst2-dev.jsonl", "stress.jsonl"):
        with open(os.path.join(args.golden_dir, name), encoding="utf-8") as f:
            for line in f:
                g = json.loads(line)
                a_ids, _, _ = tok.encode_pieces(g["text"])
                b_ids = tok.encode_pieces(g["text_pair"])[0] if "text_pair" in g else None
                ids, types = encode_pair_tokens(tok, a_ids, b_ids)
                tokens = [id_to_token[i] for i in ids]
                ok = ids == g["input_ids"] and tokens == g["tokens"]
                if "token_type_ids" in g:
                    ok = ok and types == g["token_type_ids"]
                checked += 1
                if not ok:
                    failures += 1
                    print("MISMATCH %s: %r\n  got      %r\n  expected %r" % (name, g["text"], tokens, g["tokens"]))
    print("selfcheck: %d golden entries, %d mismatches" % (checked, failures))
    return 1 if failures or checked == 0 else 0


def cmd_squad(args):
    tok = RefTokenizer(load_vocab(args.vocab))
    with open(args.squad, encoding="utf-8") as f:
        data = json.load(f)
    lines = []
    n_ctx = n_q = 0
    for article in data["data"]:
        for para in article["paragraphs"]:
            c_ids, c_b, c_e = tok.encode_pieces(para["context"])
            lines.append({"kind": "context", "text": para["context"], "ids": c_ids, "begin": c_b, "end": c_e})
            n_ctx += 1
            for qa in para["qas"]:
                q_ids, q_b, q_e = tok.encode_pieces(qa["question"])
                lines.append({"kind": "question", "text": qa["question"], "ids": q_ids, "begin": q_b, "end": q_e})
                n_q += 1
                pair = {"kind": "pair", "question": n_q - 1, "context": n_ctx - 1}
                for strategy, max_len in (("only_second", 384), ("longest_first", 128)):
                    r = truncate_lengths(len(q_ids), len(c_ids), max_len, strategy)
                    pair["%s_%d" % (strategy, max_len)] = list(r) if r is not None else None
                lines.append(pair)
    write_atomically(args.out, lines)
    print("squad: %d contexts, %d questions" % (n_ctx, n_q))
    return 0


def cmd_texts(args):
    strip = {"unset": None, "true": True, "false": False}[args.strip_accents]
    tok = RefTokenizer(
        load_vocab(args.vocab),
        do_lower_case=not args.cased,
        strip_accents=strip,
        tokenize_chinese_chars=not args.no_chinese_chars,
    )
    lines = []
    with open(args.input, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            item = json.loads(line)
            text = item["text"] if isinstance(item, dict) else item
            ids, b, e = tok.encode_pieces(text)
            lines.append({"text": text, "ids": ids, "begin": b, "end": e})
    write_atomically(args.out, lines)
    print("texts: %d" % len(lines))
    return 0


def codepoint_texts():
    """Every code point of planes 0-3 and 14 (every 97th elsewhere), no surrogates, 64 per text, in two
    contexts: alone between spaces, and inside a word ("q" + c + "u")."""
    cps = [cp for cp in range(0x40000) if not 0xD800 <= cp <= 0xDFFF]
    cps += list(range(0xE0000, 0xE1000)) + list(range(0x40000, 0xE0000, 97)) + list(range(0xE1000, 0x110000, 97))
    for i in range(0, len(cps), 64):
        chunk = [chr(cp) for cp in cps[i : i + 64]]
        yield cps[i], " ".join(chunk) + " " + " ".join("q" + c + "u" for c in chunk)


def cmd_codepoints(args):
    tok = RefTokenizer(load_vocab(args.vocab))
    lines = []
    for first, text in codepoint_texts():
        ids, b, e = tok.encode_pieces(text)
        lines.append({"first": first, "text": text, "ids": ids, "begin": b, "end": e})
    write_atomically(args.out, lines)
    print("codepoints: %d texts" % len(lines))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("selfcheck")
    s.add_argument("--golden-dir", required=True)
    s.add_argument("--vocab", required=True)
    s = sub.add_parser("squad")
    s.add_argument("--squad", required=True)
    s.add_argument("--vocab", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("texts")
    s.add_argument("--input", required=True)
    s.add_argument("--vocab", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--cased", action="store_true")
    s.add_argument("--strip-accents", choices=("unset", "true", "false"), default="unset")
    s.add_argument("--no-chinese-chars", action="store_true", help="tokenize_chinese_chars=False")
    s = sub.add_parser("codepoints")
    s.add_argument("--vocab", required=True)
    s.add_argument("--out", required=True)
    args = p.parse_args()
    return {"selfcheck": cmd_selfcheck, "squad": cmd_squad, "texts": cmd_texts, "codepoints": cmd_codepoints}[
        args.cmd
    ](args)


if __name__ == "__main__":
    sys.exit(main())

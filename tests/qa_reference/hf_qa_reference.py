"""An independent reference for extractive question answering, built only on Hugging Face code.

Written from the algorithm of transformers' question-answering example
(examples/pytorch/question-answering: `prepare_validation_features` + `postprocess_qa_predictions`
in utils_qa.py), not from topserve's engine/qa.cc. It imports nothing of topserve (no C++ code, no
tools/ modules): tokenization and windows come from `BertTokenizerFast`, logits from
`BertForQuestionAnswering.from_pretrained(model_dir)`.

The algorithm, per (question, context):
  1. Windows: `tokenizer(question, context, truncation="only_second", max_length=max_length,
     stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)`.
     max_length counts every token of a window ([CLS] question [SEP] context-part [SEP]);
     doc_stride is the number of context tokens consecutive windows share (the `stride` of the
     fast tokenizer), so window k+1 starts (room - doc_stride) context tokens after window k, where
     room = max_length - 3 - question tokens. The question is never truncated (as in the example:
     only_second); a question that leaves no room is an error.
  2. Logits: each window through the model on its own (no padding), in float64 by default.
  3. Per window: the n_best_size (20) highest start logits and the n_best_size highest end logits,
     ranked over every position of the window (specials and question included, as np.argsort in
     the example does); every (start, end) pair of those is a candidate unless a position is not
     a context token (offset None), end < start, or end - start + 1 > max_answer_length.
     Score = start logit + end logit; the span is (offsets[start][0], offsets[end][1]) in
     characters of the original context, and the text is cut from the context with them.
  4. All windows' candidates sorted by score, highest first (a stable sort: ties keep window,
     start-rank, end-rank order).

One deliberate addition to the example: with distinct_spans=True (the default) a candidate whose
character span already appeared with a higher score (the same span found in two overlapping
windows) is dropped before the list is cut to n_best. The example keeps such duplicates in its
n-best list; the first answer is the same either way.

Padding: the example pads windows to max_length in batches, so padded positions take part in the
argsort (with meaningless logits); here every window is scored at its own length, which is what
the example computes with a batch of one.
"""

import os

import torch
from transformers import BertForQuestionAnswering, BertTokenizerFast

N_BEST_SIZE = 20  # the example's default: start and end indexes kept per window


def load_tokenizer(model_dir, vocab=None):
    """BertTokenizerFast for the model directory (vocab.txt and tokenizer_config.json there), or
    an uncased one on `vocab` when the directory has no vocab.txt."""
    if os.path.exists(os.path.join(model_dir, "vocab.txt")):
        return BertTokenizerFast.from_pretrained(model_dir)
    if vocab is None:
        raise ValueError(f"{model_dir} has no vocab.txt and no vocab was given")
    return BertTokenizerFast(vocab_file=vocab, do_lower_case=True)


def make_windows(tokenizer, question, context, max_length, doc_stride):
    """The example's validation features for one (question, context): a list of dicts with
    input_ids, token_type_ids and offsets (a (begin, end) character span for context tokens, None
    for every other position)."""
    enc = tokenizer(question, context, truncation="only_second", max_length=max_length,
                    stride=doc_stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True)
    windows = []
    for i in range(len(enc["input_ids"])):
        seq = enc.sequence_ids(i)
        offsets = [tuple(o) if seq[k] == 1 else None
                   for k, o in enumerate(enc["offset_mapping"][i])]
        windows.append({"input_ids": list(enc["input_ids"][i]),
                        "token_type_ids": list(enc["token_type_ids"][i]),
                        "offsets": offsets})
    return windows


def top_indexes(logits, k):
    """Indexes of the k highest logits, highest first (ties: lower index first)."""
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
    return order[:k]


def postprocess(context, windows, start_logits, end_logits, max_answer_length, n_best,
                n_best_size=N_BEST_SIZE, distinct_spans=True):
    """The example's postprocess_qa_predictions for one example (SQuAD v1: no null answer).
    Returns at most n_best dicts: text, start, end (characters of context), score, window."""
    candidates = []
    for w, (win, sl, el) in enumerate(zip(windows, start_logits, end_logits)):
        offsets = win["offsets"]
        for s in top_indexes(sl, n_best_size):
            for e in top_indexes(el, n_best_size):
                if s >= len(offsets) or e >= len(offsets):
                    continue
                if offsets[s] is None or offsets[e] is None:
                    continue
                if e < s or e - s + 1 > max_answer_length:
                    continue
                candidates.append({"start": offsets[s][0], "end": offsets[e][1],
                                   "score": float(sl[s]) + float(el[e]), "window": w,
                                   "start_index": s, "end_index": e})
    candidates.sort(key=lambda c: c["score"], reverse=True)  # stable, as sorted() in the example
    out, seen = [], set()
    for c in candidates:
        if len(out) >= n_best:
            break
        if distinct_spans:
            if (c["start"], c["end"]) in seen:
                continue
            seen.add((c["start"], c["end"]))
        out.append({**c, "text": context[c["start"]:c["end"]]})
    return out


class QaReference:
    """Tokenizer + model of one model directory; answer() runs the whole example pipeline."""

    def __init__(self, model_dir, vocab=None, dtype=torch.float64):
        self.tokenizer = load_tokenizer(model_dir, vocab)
        self.model = BertForQuestionAnswering.from_pretrained(model_dir, torch_dtype=dtype).eval()
        self.dtype = dtype

    @torch.no_grad()
    def logits(self, windows):
        """(start, end) logits of every window, each run alone; lists of float64 numpy arrays."""
        starts, ends = [], []
        for win in windows:
            ids = torch.tensor([win["input_ids"]])
            out = self.model(input_ids=ids, token_type_ids=torch.tensor([win["token_type_ids"]]),
                             attention_mask=torch.ones_like(ids))
            starts.append(out.start_logits[0].double().numpy())
            ends.append(out.end_logits[0].double().numpy())
        return starts, ends

    def answer(self, question, context, max_length=384, doc_stride=128, max_answer_length=30,
               n_best=1, n_best_size=N_BEST_SIZE):
        windows = make_windows(self.tokenizer, question, context, max_length, doc_stride)
        starts, ends = self.logits(windows)
        answers = postprocess(context, windows, starts, ends, max_answer_length, n_best,
                              n_best_size)
        return {"windows": windows, "start_logits": starts, "end_logits": ends,
                "answers": answers}

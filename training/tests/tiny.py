"""Fixtures for the training tests: a tiny random BERT directory and a tiny sentiment TSV."""
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TRAINING = os.path.dirname(HERE)
sys.path.insert(0, TRAINING)

import torch  # noqa: E402

import common  # noqa: E402
import data  # noqa: E402
from modeling import Bert, BertConfig  # noqa: E402

VOCAB = os.path.join(data.DATA, "bert-base-uncased", "vocab.txt")
POS = ["good", "great", "fine", "lovely", "fun"]
NEG = ["bad", "awful", "dull", "boring", "weak"]
FILL = ["the", "movie", "is", "a", "story", "with", "some", "actors", "and", "plot", "it", "was",
        "very", "quite", "of", "this", "film", "in", "to", "scenes"]


def tiny_model_dir(path, layers=3, hidden=32, heads=2, ffn=64, seed=0, scale=0.0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=64)
    m = Bert(cfg)
    if scale:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * scale)
    common.save_model(m, path, VOCAB)
    return m


def tiny_tsv(path, n=160, seed=0, min_words=10, max_words=24):
    rng = random.Random(seed)
    with open(path, "w") as f:
        f.write("text\tlabel\n")
        for _ in range(n):
            y = rng.randint(0, 1)
            words = [rng.choice(FILL) for _ in range(rng.randint(min_words, max_words))]
            words[rng.randrange(len(words))] = rng.choice(POS if y else NEG)
            f.write(" ".join(words) + f"\t{y}\n")
    return path

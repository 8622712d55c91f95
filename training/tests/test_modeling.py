import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import cost  # noqa: E402
import tiny  # noqa: E402
from modeling import token_importance, topk_pruner  # noqa: E402

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools")
sys.path.insert(0, TOOLS)


def dropped_forward(model, ids, ratios):
    """The engine's rule written with physical token removal (one sequence, no padding)."""
    x = model.bert.embeddings(ids[None])
    keep_idx = torch.arange(ids.shape[0])
    for l, layer in enumerate(model.layers):
        n = x.shape[1]
        x, probs = layer.mha(x, torch.ones(1, n))
        imp = probs[0].mean(0).mean(0)  # heads, then query rows
        k = cost.tokens_kept(n, ratios[l])
        score = imp.clone()
        score[0] = float("inf")
        order = torch.sort(score, descending=True, stable=True).indices[:k]
        order = torch.sort(order).values  # kept tokens keep their order
        x = layer.ffn(x[:, order])         # after MHA: the FFN runs on the kept tokens
        keep_idx = keep_idx[order]
    return model.classify(x)[0], keep_idx


class ModelingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = tiny.tiny_model_dir(os.path.join(cls.tmp.name, "m"), layers=3, scale=0.3)
        cls.model.eval()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def seqs(self):
        g = torch.Generator().manual_seed(1)
        out = []
        for n in (5, 9, 17, 23):
            ids = torch.randint(1000, 30000, (n,), generator=g)
            ids[0], ids[-1] = 101, 102
            out.append(ids)
        return out

    def test_matches_reference_bert(self):
        import reference_bert
        ref = reference_bert.load_model(os.path.join(self.tmp.name, "m"))
        for ids in self.seqs():
            want = torch.tensor(ref.forward(ids.tolist())["logits"])
            got, _, _ = self.model(ids[None], torch.ones(1, len(ids)))
            self.assertLess(float((got[0].double() - want).abs().max()), 1e-5)

    def test_padded_batch_equals_single(self):
        from data import pad_batch
        seqs = self.seqs()
        ids, pres = pad_batch([s.tolist() for s in seqs])
        with torch.no_grad():
            batch, _, _ = self.model(ids, pres)
            for i, s in enumerate(seqs):
                one, _, _ = self.model(s[None], torch.ones(1, len(s)))
                self.assertLess(float((batch[i] - one[0]).abs().max()), 1e-5)

    def test_masked_pruning_equals_dropping_tokens(self):
        from data import pad_batch
        seqs = self.seqs()
        ids, pres = pad_batch([s.tolist() for s in seqs])
        for ratios in ([1.0, 0.5, 0.5], [0.3, 1.0, 0.01], [0.7, 0.7, 0.7]):
            kept_sets = []

            def rec(l, imp, p, base=topk_pruner(ratios)):
                new = base(l, imp, p)
                kept_sets.append(new > 0)
                return new
            with torch.no_grad():
                logits, _, _ = self.model(ids, pres, pruner=rec)
                for i, s in enumerate(seqs):
                    want, keep_idx = dropped_forward(self.model, s, ratios)
                    self.assertLess(float((logits[i] - want).abs().max()), 1e-5, (ratios, i))
                    self.assertEqual(kept_sets[-1][i].nonzero().flatten().tolist(), keep_idx.tolist())
                    self.assertEqual([int(k[i].sum()) for k in kept_sets], cost.schedule_kept(len(s), ratios))

    def test_importance_definition(self):
        probs = torch.rand(1, 2, 4, 4).softmax(-1)
        pres = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
        imp = token_importance(probs, pres)
        want = probs[0, :, :3, :].mean(0).mean(0)
        self.assertTrue(torch.allclose(imp[0], want, atol=1e-6))


if __name__ == "__main__":
    unittest.main()

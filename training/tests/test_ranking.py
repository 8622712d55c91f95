import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import ranking  # noqa: E402


def ndcg(scores, gains, k=None):
    order = torch.argsort(scores, descending=True)
    g = gains[order]
    disc = 1.0 / torch.log2(torch.arange(2, len(g) + 2, dtype=torch.float))
    ideal = torch.sort(gains, descending=True).values
    return float((g * disc).sum() / (ideal * disc).sum())


class RankingTest(unittest.TestCase):
    def test_teacher_gains(self):
        t = torch.tensor([[0.5, 0.1, 0.4, 0.3, 0.2]])
        valid = torch.tensor([[False, True, True, True, True]])
        g = ranking.teacher_gains(t, valid, k=2)
        self.assertEqual(g[0].tolist(), [0.0, 0.0, 1.0, 0.5, 0.0])

    def test_loss_falls_and_ranking_improves_on_toy_case(self):
        torch.manual_seed(0)
        B, n = 4, 12
        teacher = torch.rand(B, n)
        valid = torch.ones(B, n, dtype=torch.bool)
        valid[:, 0] = False
        valid[1, 9:] = False  # a shorter sequence
        gains = ranking.teacher_gains(teacher, valid, k=6)
        scores = torch.randn(B, n, requires_grad=True)
        opt = torch.optim.Adam([scores], lr=0.05)
        first = None
        before = ndcg(scores[0, 1:].detach(), gains[0, 1:])
        for _ in range(200):
            loss = ranking.lambda_loss(scores, gains, valid)
            if first is None:
                first = loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        last = ranking.lambda_loss(scores, gains, valid).item()
        self.assertLess(last, 0.2 * first)
        after = ndcg(scores[0, 1:].detach(), gains[0, 1:])
        self.assertGreater(after, before)
        self.assertGreater(after, 0.99)
        self.assertTrue(bool((scores.grad[1, 9:] == 0).all()))  # invalid tokens get no gradient

    def test_no_pairs_gives_zero(self):
        s = torch.randn(2, 3, requires_grad=True)
        loss = ranking.lambda_loss(s, torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))
        self.assertEqual(loss.item(), 0.0)
        loss.backward()


if __name__ == "__main__":
    unittest.main()

import math
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from gates import BETA, GAMMA, ZETA, HardConcrete, TokenGates  # noqa: E402


class HardConcreteTest(unittest.TestCase):
    def test_constants(self):
        self.assertEqual((GAMMA, ZETA), (-0.1, 1.1))
        self.assertAlmostEqual(BETA, 2.0 / 3.0)

    def test_samples_and_probabilities(self):
        g = HardConcrete((4,), init_log_alpha=0.0)
        with torch.no_grad():
            g.log_alpha.copy_(torch.tensor([-3.0, -0.5, 0.5, 3.0]))
        gen = torch.Generator().manual_seed(0)
        z = torch.stack([g.sample(gen) for _ in range(20000)])
        self.assertTrue(bool(((z >= 0) & (z <= 1)).all()))
        self.assertTrue(bool((z == 0).any()) and bool((z == 1).any()))   # exact zeros and ones
        emp = (z > 0).float().mean(0)
        expect = torch.sigmoid(g.log_alpha - BETA * math.log(-GAMMA / ZETA)).detach()
        self.assertTrue(torch.allclose(emp, expect, atol=0.015), (emp, expect))
        self.assertTrue(torch.allclose(g.prob_nonzero().detach(), expect))
        # the sampling distribution by hand: u = 0.5 -> s = sigmoid(log_alpha / beta)
        s = torch.sigmoid(g.log_alpha / BETA) * (ZETA - GAMMA) + GAMMA
        self.assertTrue(torch.allclose(g.deterministic(), torch.sigmoid(g.log_alpha).mul(ZETA - GAMMA)
                                       .add(GAMMA).clamp(0, 1)))
        self.assertEqual(s.shape, (4,))

    def test_eval_is_deterministic(self):
        g = HardConcrete((3,), 1.0)
        g.eval()
        self.assertTrue(torch.equal(g(), g()))
        g.train()
        self.assertFalse(torch.equal(g(), g()))

    def test_gradient_reaches_log_alpha(self):
        g = HardConcrete((8,), 0.0)
        g.prob_nonzero().sum().backward()
        self.assertTrue(bool((g.log_alpha.grad > 0).all()))


class TokenGatesTest(unittest.TestCase):
    def test_mask_by_rank_bins(self):
        g = TokenGates(2, num_bins=4)
        coarse = torch.tensor([1.0, 0.0])
        fine = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
        # 8 tokens present; importance decreasing with index except token 5 which is the largest
        imp = torch.tensor([[0.0, 0.3, 0.2, 0.15, 0.1, 0.9, 0.05, 0.01]])
        pres = torch.ones(1, 8)
        keep = g.token_mask(0, imp, pres, coarse, fine)
        # ranks: CLS(0) 0, tok5 1, tok1 2, tok2 3 | tok3 4, tok4 5, tok6 6, tok7 7 -> bins 0,0,1,1,2,2,3,3
        self.assertEqual(keep[0].tolist(), [1, 1, 1, 0, 0, 1, 0, 0])
        # coarse gate closed: the layer does not prune
        self.assertEqual(g.token_mask(1, imp, pres, coarse, fine)[0].tolist(), [1.0] * 8)
        # absent tokens stay absent, [CLS] stays with a zero fine gate on bin 0
        pres2 = torch.tensor([[1.0, 1, 1, 1, 0, 0, 0, 0]])
        fine2 = torch.tensor([[0.0, 1.0, 1.0, 1.0]] * 2)
        keep2 = g.token_mask(0, imp, pres2, coarse, fine2)
        self.assertEqual(keep2[0].tolist(), [1, 1, 1, 1, 0, 0, 0, 0])

    def test_ties_broken_by_position(self):
        g = TokenGates(1, num_bins=2)
        imp = torch.full((1, 5), 0.2)
        keep = g.token_mask(0, imp, torch.ones(1, 5), torch.ones(1), torch.tensor([[1.0, 0.0]]))
        self.assertEqual(keep[0].tolist(), [1, 1, 1, 0, 0])

    def test_expected_keep(self):
        g = TokenGates(3, num_bins=5, prune_layers=[1, 2])
        pc = g.coarse.prob_nonzero()
        pf = g.fine.prob_nonzero().mean(-1)
        k = g.expected_keep()
        self.assertEqual(float(k[0]), 1.0)  # layer 0 may not prune
        self.assertAlmostEqual(float(k[1]), float(1 - pc[1] * (1 - pf[1])), places=6)
        with torch.no_grad():
            g.fine.log_alpha.fill_(-20.0)
            g.coarse.log_alpha.fill_(20.0)
        self.assertAlmostEqual(float(g.expected_keep()[2]), 0.0, places=4)


if __name__ == "__main__":
    unittest.main()

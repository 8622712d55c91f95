import math
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import cost  # noqa: E402
import schedule  # noqa: E402


class CostModelTest(unittest.TestCase):
    def test_layer_by_hand(self):
        # n=5 tokens, d=4, f=8, 3 kept after MHA:
        # QKV 3*5*16=240, scores+context 2*25*4=200, out proj 5*16=80, FFN 2*3*4*8=192
        self.assertEqual(cost.layer_macs(5, 3, 4, 8, "after_mha"), 240 + 200 + 80 + 192)
        # between_layers: the FFN still runs on all 5 tokens: 2*5*4*8=320
        self.assertEqual(cost.layer_macs(5, 3, 4, 8, "between_layers"), 240 + 200 + 80 + 320)
        with self.assertRaises(ValueError):
            cost.layer_macs(5, 3, 4, 8, "before_lunch")

    def test_encoder_by_hand(self):
        d, f = 4, 8
        # 2 layers, n=6, layer 0 keeps 3, layer 1 keeps 2; heads: pooler 16 + classifier 8
        l0 = 3 * 6 * 16 + 2 * 36 * 4 + 6 * 16 + 2 * 3 * 4 * 8
        l1 = 3 * 3 * 16 + 2 * 9 * 4 + 3 * 16 + 2 * 2 * 4 * 8
        self.assertEqual(cost.encoder_macs(6, [3, 2], d, f, "after_mha"), l0 + l1 + 16 + 8)
        b0 = 3 * 6 * 16 + 2 * 36 * 4 + 6 * 16 + 2 * 6 * 4 * 8
        b1 = 3 * 3 * 16 + 2 * 9 * 4 + 3 * 16 + 2 * 3 * 4 * 8
        self.assertEqual(cost.encoder_macs(6, [3, 2], d, f, "between_layers"), b0 + b1 + 24)
        full = 2 * (3 * 6 * 16 + 2 * 36 * 4 + 6 * 16 + 2 * 6 * 4 * 8) + 24
        self.assertEqual(cost.unpruned_macs(6, d, f, 2), full)
        # QA heads: 2 d per token of the original length
        self.assertEqual(cost.encoder_macs(6, [6, 6], d, f, qa=True) - cost.encoder_macs(6, [6, 6], d, f),
                         6 * 4 * 2 - 24)

    def test_ceil_rule(self):
        self.assertEqual(cost.tokens_kept(10, 0.7), 7)   # not 8 from 7.000000000000001
        self.assertEqual(cost.tokens_kept(10, 0.71), 8)
        self.assertEqual(cost.tokens_kept(10, 0.01), 1)  # at least [CLS]
        self.assertEqual(cost.tokens_kept(10, 1.0), 10)
        self.assertEqual(cost.schedule_kept(25, [1.0, 0.5, 0.5, 0.1]), [25, 13, 7, 1])

    def test_expected_equals_exact_at_integer_counts(self):
        d, f = 16, 64
        exact = cost.encoder_macs(20, [10, 5, 5], d, f)
        frac = cost.expected_macs(20.0, [0.5, 0.5, 1.0], d, f)
        self.assertAlmostEqual(float(frac), exact)
        t = cost.expected_macs(torch.tensor([20.0]), [torch.tensor(0.5)] * 2 + [torch.tensor(1.0)], d, f)
        self.assertAlmostEqual(float(t), exact, places=3)

    def test_schedule_flops_and_calibration(self):
        d, f = 32, 128
        lengths = [10, 20, 30, 40]
        self.assertAlmostEqual(schedule.flops_ratio([1.0] * 4, lengths, d, f), 1.0)
        shape = [0.9, 0.6, 0.5, 0.5]
        for target in (0.7, 0.5, 0.3):
            ratios, achieved, m = schedule.calibrate(shape, lengths, target, d, f)
            self.assertLessEqual(achieved, target)
            self.assertAlmostEqual(schedule.flops_ratio(ratios, lengths, d, f), achieved)
            self.assertGreater(achieved, target - 0.03)
            # same shape: pruned fractions stay proportional where not clamped
            p = [1 - r for r in ratios]
            if max(p) < 0.999:
                self.assertAlmostEqual(p[0] / p[1], 0.1 / 0.4, places=6)
        # unreachable: everything pruned to [CLS] after layer 0's MHA still costs more
        ratios, achieved, _ = schedule.calibrate(shape, lengths, 0.01, d, f)
        self.assertGreater(achieved, 0.01)
        self.assertEqual([cost.schedule_kept(40, ratios)[0]], [1])

    def test_budget_planner_mirror(self):
        d, f = 32, 128
        shape = [0.9, 0.5, 0.5, 0.2]
        for n in (5, 17, 40):
            full = cost.unpruned_macs(n, d, f, 4)
            self.assertEqual(schedule.planner_kept(n, shape, 1.0, d, f), [n] * 4)
            prev = None
            for b in (0.9, 0.6, 0.4, 0.2):
                kept = schedule.planner_kept(n, shape, b, d, f)
                used = cost.encoder_macs(n, kept, d, f)
                if kept != [1, 1, 1, 1]:
                    self.assertLessEqual(used, b * full)
                if prev is not None:
                    self.assertLessEqual(used, prev)
                prev = used


if __name__ == "__main__":
    unittest.main()

"""End-to-end: the trainer on a tiny model for a few steps (FLOPs constraint, resume, export)."""
import json
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402
import cost  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import schedule  # noqa: E402
import tiny  # noqa: E402
import top_train  # noqa: E402
from gates import TokenGates  # noqa: E402


def read_log(path):
    with open(path) as f:
        return [json.loads(l) for l in f]


class LagrangianTest(unittest.TestCase):
    def test_expected_flops_reach_target(self):
        """Gates + multipliers alone: s follows the warmed-up target and ends close to it."""
        torch.manual_seed(0)
        L, d, f = 4, 64, 256
        lengths = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
        counts = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
        g = TokenGates(L, 10)
        lam = torch.nn.Parameter(torch.zeros(2))
        go = torch.optim.Adam(g.parameters(), lr=0.05)
        lo = torch.optim.Adam([lam], lr=0.05, maximize=True)
        target, steps = 0.4, 600
        hist = []
        for step in range(steps):
            s = top_train.expected_flops_fraction(g.expected_keep().double(), lengths, counts, d, f,
                                                  "after_mha", 2)
            t = top_train.target_at(step, 200, target)
            gap = (s - t).float()
            loss = lam[0] * gap + lam[1] * gap * gap
            go.zero_grad()
            lo.zero_grad()
            loss.backward()
            go.step()
            lo.step()
            hist.append(float(s))
        self.assertGreater(hist[0], 0.9)
        self.assertLess(abs(hist[-1] - target), 0.03, hist[-10:])
        # and the expected fraction is the cost model's, by hand for one length
        k = g.expected_keep().double().detach()
        one = top_train.expected_flops_fraction(k, torch.tensor([20.0], dtype=torch.float64),
                                                torch.tensor([1.0], dtype=torch.float64), d, f, "after_mha", 2)
        kept, n = [], 20.0
        for l in range(L):
            n = max(1.0, n * float(k[l]))
            kept.append(n)
        self.assertAlmostEqual(float(one), cost.encoder_macs(20.0, kept, d, f) / cost.unpruned_macs(20, d, f, L),
                               places=6)


class TrainerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        t = cls.tmp.name
        tiny.tiny_model_dir(os.path.join(t, "teacher"), layers=3, hidden=32, ffn=64, scale=0.05)
        cls.train = tiny.tiny_tsv(os.path.join(t, "train.tsv"), n=96, min_words=20, max_words=40)
        cls.dev = tiny.tiny_tsv(os.path.join(t, "dev.tsv"), n=24, seed=1, min_words=20, max_words=40)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_trainer(self, name, *extra):
        t = self.tmp.name
        argv = ["--teacher", os.path.join(t, "teacher"), "--work", os.path.join(t, name, "work"),
                "--out", os.path.join(t, name, "model"), "--train", self.train, "--dev", self.dev,
                "--batch-size", "8", "--eval-every", "1000", "--ckpt-every", "1000",
                "--gate-lr", "0.2", "--lambda-lr", "0.2", "--target-warmup", "0.3"] + list(extra)
        top_train.main(argv)
        return os.path.join(t, name)

    def test_flops_move_toward_target_and_export(self):
        run = self.run_trainer("a", "--targets", "0.6,0.5", "--default-target", "0.5", "--steps", "40")
        log = [r for r in read_log(os.path.join(run, "work", "log.jsonl")) if "expected_flops" in r]
        first, last = log[0], log[-1]
        self.assertGreater(first["expected_flops"], last["expected_flops"])
        self.assertLess(abs(last["expected_flops"] - last["target"]),
                        abs(first["expected_flops"] - last["target"]))
        self.assertLess(last["expected_flops"], 0.8)
        self.assertIn("rank", last)
        self.assertGreater(last["rank"], 0.0)
        # export: a model directory the shared tools read, fp16, with schedules that validate
        import topserve_model
        model_dir = os.path.join(run, "model")
        config, tensors, tok_cfg = topserve_model.read_model_dir(model_dir)
        self.assertEqual(config["architectures"], ["BertForSequenceClassification"])
        self.assertEqual(set(topserve_model.safetensors_dtypes(os.path.join(model_dir, "model.safetensors"))
                             .values()), {"F16"})
        self.assertEqual(tok_cfg["do_lower_case"], True)
        default = schedule.read(os.path.join(model_dir, "pruning.yaml"), 3)
        s5 = schedule.read(os.path.join(model_dir, "schedules", "top-2x.yaml"), 3)
        self.assertEqual(default["keep_ratios"], s5["keep_ratios"])
        self.assertEqual(default["target_flops"], 0.5)
        self.assertEqual(default["method"], "top")
        s6 = schedule.read(os.path.join(model_dir, "schedules", "top-1.66667x.yaml"), 3)
        self.assertEqual(s6["target_flops"], 0.6)
        with open(os.path.join(run, "work", "result.json")) as f:
            res = json.load(f)
        self.assertEqual(res["targets"]["0.5"]["keep_ratios"], default["keep_ratios"])
        # the exported weights are the student's rounded to fp16; evaluation of the directory gives
        # what the training script reported
        m, _ = common.load_model(model_dir)
        tok = data.Tokenizer(os.path.join(model_dir, "vocab.txt"))
        dev = data.load_classification(self.dev, tok, 64)
        r = evaluate.evaluate(m, dev, default["keep_ratios"])
        self.assertEqual(r["accuracy"], res["targets"]["0.5"]["accuracy"])
        self.assertAlmostEqual(r["flops_fraction"], res["targets"]["0.5"]["flops_fraction"])
        # the unpruned exported model equals the float64 reference forward
        sys.path.insert(0, top_train.common.TOOLS)
        import reference_bert
        ref = reference_bert.load_model(model_dir)
        out = evaluate.evaluate(m, dev[:6], None, return_outputs=True)["outputs"]
        for o in out:
            want = np.array(ref.forward(o["input_ids"])["logits"])
            self.assertLess(float(np.abs(np.array(o["logits"]) - want).max()), 1e-4)

    def test_resume_gives_the_same_result(self):
        common_args = ["--targets", "0.5", "--steps", "12", "--method", "top", "--dtype", "F32"]
        a = self.run_trainer("full", *common_args)
        b = self.run_trainer("resumed", *common_args, "--stop-after", "5")
        self.assertFalse(os.path.exists(os.path.join(b, "model", "model.safetensors")))
        self.run_trainer("resumed", *common_args)
        import topserve_model
        ta, _ = topserve_model.read_safetensors(os.path.join(a, "model", "model.safetensors"))
        tb, _ = topserve_model.read_safetensors(os.path.join(b, "model", "model.safetensors"))
        for k in ta:
            np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)
        with open(os.path.join(a, "model", "pruning.yaml")) as fa, \
                open(os.path.join(b, "model", "pruning.yaml")) as fb:
            self.assertEqual(fa.read(), fb.read())

    def test_no_ranking_baseline(self):
        run = self.run_trainer("nr", "--targets", "0.5", "--steps", "6", "--method", "gates-no-ranking")
        sched = schedule.read(os.path.join(run, "model", "schedules", "gates-no-ranking-2x.yaml"), 3)
        self.assertEqual(sched["method"], "gates-no-ranking")
        log = [r for r in read_log(os.path.join(run, "work", "log.jsonl")) if "rank" in r]
        self.assertTrue(all(r["rank"] == 0.0 for r in log))


class ScheduleFileTest(unittest.TestCase):
    def test_write_read_round_trip(self):
        with tempfile.TemporaryDirectory() as t:
            p = os.path.join(t, "pruning.yaml")
            schedule.write(p, [1.0, 0.7, 0.123456789, 0.05], "between_layers", 0.25, "topk-untrained",
                           comments=["a comment"])
            s = schedule.read(p, 4)
            self.assertEqual(s, {"version": 1, "placement": "between_layers",
                                 "keep_ratios": [1.0, 0.7, 0.123457, 0.05], "target_flops": 0.25,
                                 "method": "topk-untrained"})
            with self.assertRaises(ValueError):
                schedule.read(p, 3)
            with open(p, "w") as f:
                f.write("version: 1\nplacement: after_mha\nkeep_ratios: [1.0, 0.0]\n")
            with self.assertRaises(ValueError):
                schedule.read(p)


if __name__ == "__main__":
    unittest.main()

"""training/from_pretrained.py: a Hugging Face BertModel directory (made here by transformers itself)
becomes our BertForSequenceClassification / BertForQuestionAnswering layout whose encoder computes
what transformers' BertModel computes, with a head drawn as documented."""
import json
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TRAINING = os.path.dirname(HERE)
sys.path.insert(0, TRAINING)
sys.path.insert(0, os.path.join(os.path.dirname(TRAINING), "tools"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

import common  # noqa: E402
import data  # noqa: E402
import from_pretrained  # noqa: E402
import topserve_model  # noqa: E402


class FromPretrainedTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import shutil

        from transformers import BertConfig, BertModel
        cls.tmp = tempfile.TemporaryDirectory()
        cls.src = os.path.join(cls.tmp.name, "src")
        torch.manual_seed(3)
        cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)
        cls.hf = BertModel(cfg).eval()
        cls.hf.save_pretrained(cls.src, safe_serialization=True)
        shutil.copyfile(os.path.join(data.DATA, "bert-base-uncased", "vocab.txt"),
                        os.path.join(cls.src, "vocab.txt"))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def convert(self, task, seed=0):
        out = os.path.join(self.tmp.name, f"{task}-{seed}")
        from_pretrained.main(["--src", self.src, "--out", out, "--task", task, "--seed", str(seed)])
        return out

    def test_cls_encoder_matches_transformers(self):
        out = self.convert("cls")
        with open(os.path.join(out, "config.json")) as f:
            config = json.load(f)
        self.assertEqual(config["architectures"], ["BertForSequenceClassification"])
        self.assertEqual(config["id2label"], {"0": "negative", "1": "positive"})
        model, _ = common.load_model(out)
        model.eval()
        ids = torch.tensor([[101, 2023, 3185, 2003, 2307, 999, 102]])
        with torch.no_grad():
            want = self.hf(input_ids=ids).last_hidden_state.double()
            x = model.bert.embeddings(ids)
            for layer in model.layers:
                x, _ = layer.mha(x, torch.ones(1, ids.shape[1]))
                x = layer.ffn(x)
        self.assertLess(float((x.double() - want).abs().max()), 1e-5)

    def test_head_is_seeded_normal_with_zero_bias(self):
        a = topserve_model.read_model_dir(self.convert("cls", seed=1))[1]
        b = topserve_model.read_model_dir(self.convert("cls", seed=1))[1]
        c = topserve_model.read_model_dir(self.convert("cls", seed=2))[1]
        self.assertTrue((a["classifier.weight"] == b["classifier.weight"]).all())
        self.assertFalse((a["classifier.weight"] == c["classifier.weight"]).all())
        self.assertEqual(float(abs(a["classifier.bias"]).max()), 0.0)
        self.assertLess(abs(float(a["classifier.weight"].std()) - 0.02), 0.01)
        # The pooler came from the source, not the initialiser.
        pooler = self.hf.pooler.dense.weight.detach().numpy()
        self.assertTrue((a["bert.pooler.dense.weight"] == pooler).all())

    def test_qa_layout(self):
        config, tensors, _ = topserve_model.read_model_dir(self.convert("qa"))
        self.assertEqual(topserve_model.config_task(config), "qa")
        self.assertEqual(tuple(tensors["qa_outputs.weight"].shape), (2, 32))
        self.assertNotIn("id2label", config)


if __name__ == "__main__":
    unittest.main()

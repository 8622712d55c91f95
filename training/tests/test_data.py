import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402


class DataTest(unittest.TestCase):
    def test_maximal_sentences(self):
        texts = ["a fine movie , really", "fine movie", "movie", "really", "a fine", "boring",
                 "an awful film", "awful film", "fine movie"]
        self.assertEqual(sorted(data.maximal_sentences(texts)),
                         ["a fine movie , really", "an awful film", "boring"])
        self.assertIn("movie", data.maximal_sentences(texts, keep_single_words=True))

    def test_bucketed_batches_cover_everything_once(self):
        import random
        lengths = [random.Random(i).randint(3, 60) for i in range(103)]
        batches = data.bucketed_batches(lengths, 8, random.Random(0), bucket_mult=3)
        flat = sorted(i for b in batches for i in b)
        self.assertEqual(flat, list(range(103)))
        self.assertTrue(all(len(b) <= 8 for b in batches))


if __name__ == "__main__":
    unittest.main()

"""How long the leakage guard takes on a large training set: 10,000 training texts (two MedQA-style vignettes each)
against 1,000 evaluation questions of the same style, exact matches, 13-gram overlap and changed words included.
Prints the seconds of find_overlap and how many findings it made (random vignettes of one template repeat each
other, so some findings are expected: the figure is the time).

    python bench/leakage_speed.py [--train 10000] [--questions 1000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medqlora.leakage import Item, find_overlap  # noqa: E402

FINDINGS = ["fever", "cough", "weakness", "headache", "rash", "diarrhea", "dyspnea", "jaundice", "syncope"]


def vignette(rng: random.Random) -> str:
    return (f"A {rng.randrange(18, 90)}-year-old {rng.choice(['man', 'woman', 'boy', 'girl'])} presents with "
            f"{rng.randrange(2, 9)} days of {rng.choice(FINDINGS)} and {rng.choice(FINDINGS)} after a history "
            f"of {rng.choice(FINDINGS)}. Which of the following is the most likely diagnosis?")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=10_000)
    p.add_argument("--questions", type=int, default=1_000)
    args = p.parse_args()
    rng = random.Random(0)
    evaluation = [Item("evalset", f"q{i}", vignette(rng)) for i in range(args.questions)]
    train = [Item("0:train.jsonl", None, text, (("instruction", text),), row)
             for row, text in enumerate((f"{vignette(rng)} {vignette(rng)}" for _ in range(args.train)), 1)]
    started = time.perf_counter()
    found = find_overlap(train, evaluation)
    print(f"{args.train} training texts x {args.questions} questions: {time.perf_counter() - started:.2f} s, "
          f"{len(found)} findings")
    return 0


if __name__ == "__main__":
    sys.exit(main())

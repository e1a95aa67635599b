"""Split dev_subset.jsonl into a training part and a held-out evaluation part, once (the files are shipped).

A question goes to heldout.jsonl when sha1(realidx) falls in the first 500/2816 of the hash range, then
every training row that the kit's leakage guard (default settings) matches to a held-out question moves to
heldout.jsonl too, so a run training on train.jsonl and evaluating on heldout.jsonl passes the guard.
Run from the kit's root:  python data/medmcqa/make_split.py
"""

import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELD_OUT = 500


def main() -> None:
    import sys

    sys.path.insert(0, str(HERE.parent.parent))
    from medqlora import leakage
    from medqlora.config import DatasetSpec
    from medqlora.data import format_rows

    lines = (HERE / "dev_subset.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    ranked = sorted(range(len(rows)), key=lambda i: hashlib.sha1(rows[i]["realidx"].encode()).hexdigest())
    held = set(ranked[:HELD_OUT])
    spec = DatasetSpec(source="dev_subset.jsonl", format="multiple_choice")
    examples = format_rows(spec, rows)
    while True:
        train = [leakage.Item("train", str(i), ex.question, ex.guard_texts(), i + 1)
                 for i, ex in enumerate(examples) if i not in held]
        evaluation = [leakage.Item("heldout", str(i), examples[i].question) for i in sorted(held)]
        overlaps = leakage.find_overlap(train, evaluation)
        moved = {int(o.train.uid) for o in overlaps} if overlaps else set()
        if not moved:
            break
        held |= moved
    for name, keep in (("train.jsonl", lambda i: i not in held), ("heldout.jsonl", lambda i: i in held)):
        (HERE / name).write_text("".join(lines[i] + "\n" for i in range(len(rows)) if keep(i)), encoding="utf-8")
    print(f"train.jsonl {len(rows) - len(held)} rows, heldout.jsonl {len(held)} rows")


if __name__ == "__main__":
    main()

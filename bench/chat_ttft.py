"""Time to first token of `--mode chat --prompt`, as a user of the one-shot mode sees it.

The kit runs in a child process; its answer streams to stdout and its messages go to stderr. Each line and
the first answer byte are timestamped: time to first token is the first answer byte after the last message
that precedes it (the model is loaded and the prompt rendered by then), start-up is everything before that.

    python bench/chat_ttft.py --out RESULTS/chat_ttft.json -- --adapter RUN --set backend=unsloth --prompt "..."
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _read(stream, events: list, kind: str) -> None:
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            return
        events.append((time.perf_counter(), kind, chunk))


def measure(kit_args: list[str]) -> dict:
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, str(ROOT / "medical_qlora_finetuning.py"), "--mode", "chat", *kit_args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    events: list = []
    readers = [threading.Thread(target=_read, args=(child.stdout, events, "out")),
               threading.Thread(target=_read, args=(child.stderr, events, "err"))]
    for reader in readers:
        reader.start()
    code = child.wait()
    for reader in readers:
        reader.join()
    events.sort(key=lambda e: e[0])
    first_out = next((i for i, e in enumerate(events) if e[1] == "out"), None)
    answer = b"".join(e[2] for e in events if e[1] == "out").decode(errors="replace")
    result = {"exit_code": code, "total_s": round(time.perf_counter() - started, 3), "answer_chars": len(answer),
              "answer_start": answer[:200]}
    if first_out is not None:
        last_err = max((e[0] for e in events[:first_out] if e[1] == "err"), default=started)
        result["startup_s"] = round(last_err - started, 3)
        result["time_to_first_token_s"] = round(events[first_out][0] - last_err, 3)
        result["first_token_after_start_s"] = round(events[first_out][0] - started, 3)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("kit_args", nargs=argparse.REMAINDER, help="after --: the kit's arguments (without --mode)")
    args = p.parse_args()
    kit_args = args.kit_args[1:] if args.kit_args[:1] == ["--"] else args.kit_args
    result = measure(kit_args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

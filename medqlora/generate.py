"""Answering the sample medical queries with a (fine-tuned) model; every answer carries a disclaimer."""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import backends
from .backends import stop_token_ids
from .config import KIT_ROOT, PATH_SHOWN, KitConfig, has_control_characters, read_yaml_file
from .data import query_prompt, render_prompt
from .distributed import shared_map
from .errors import ConfigError
from .generation_batch import batch_size_for
from .messages import say
from .progress import bar
from .rows import blank_said, invisible
from .secrets import printable
from .shown_paths import quoted_path

QUERY_KEYS = ("id", "question")
MAX_QUERIES = 10_000  # each is generated for: more belongs in an evaluation set, or in several files
TOO_MANY_QUERIES = (f"more than {MAX_QUERIES:,} queries, the most one queries file may hold. Keep at most "
                    f"{MAX_QUERIES:,} in it and answer the others from another file (generation.queries_file)")


EXAMPLE = "(e.g. 'queries:' then '  - id: q1' and '    question: ...')"
YAML_SHAPE = f"the queries file is YAML, a list of {{id, question}} entries under 'queries:' {EXAMPLE}"
YAML_FORM = f"{YAML_SHAPE}; JSONL, one JSON object a line, is not read"
EXPECTED = "expected a list of {id, question} entries under 'queries:'"
# Table files the queries file is not: each is refused by its suffix, with the YAML shape to write instead.
NOT_YAML = {".jsonl": "JSONL", ".csv": "CSV", ".tsv": "TSV", ".parquet": "Parquet", ".arrow": "Arrow",
            ".xlsx": "Excel"}


def load_queries(path_text: str) -> list[dict[str, str]]:
    """The sample queries: a YAML list of ``{id, question}`` entries (under ``queries:``, or at the top
    level), read through the kit's one YAML loader and checked whole: each problem names the file, the
    line and the entry."""
    path = _queries_path(path_text)
    items, lines = read_yaml_file(path, "generation.queries_file", max_values=MAX_QUERIES * 5 + 3,  # 5 per entry
                                  too_many=TOO_MANY_QUERIES)
    shown = printable(path, PATH_SHOWN)
    items, prefix = _query_entries(items, lines, shown)
    queries: list[dict[str, str]] = []
    first_line: dict[str, int] = {}
    for index, item in enumerate(items):
        line = lines.get(prefix + (index,), "?")
        query = _checked_query(item, index, f"{shown}:{line}: entry {index + 1}")
        ident = query["id"]
        if ident in first_line:
            raise ConfigError(f"{shown}:{first_line[ident]} and {shown}:{line}: the id {printable(repr(ident), 80)} "
                              "is used twice; give each query its own id.")
        first_line[ident] = line
        queries.append(query)
    return queries


def _queries_path(path_text: str) -> Path:
    """generation.queries_file found (as given, else under the kit's folder); not JSONL."""
    if has_control_characters(path_text):
        raise ConfigError(f"generation.queries_file: {printable(repr(path_text), PATH_SHOWN)} contains control "
                          "characters; give the file's name.")
    path = Path(path_text)
    if not path.exists():
        path = KIT_ROOT / path_text
    if not path.exists():
        raise ConfigError(f"generation.queries_file: {quoted_path(path_text)} not found.")
    table = NOT_YAML.get(path.suffix.lower())
    if table == "JSONL":
        raise ConfigError(f"generation.queries_file {printable(path, PATH_SHOWN)}: {YAML_FORM}. Write the queries "
                          "as YAML (each JSON line can become one '- {...}' entry) in a .yaml file.")
    if table:
        raise ConfigError(f"generation.queries_file {printable(path, PATH_SHOWN)}: {YAML_SHAPE}; a {table} file is "
                          "not read. Write the queries as YAML (each row one '- id: ...' entry with its "
                          "'question: ...') in a .yaml file.")
    return path


def _query_entries(items: Any, lines: dict, shown: str) -> tuple[list, tuple]:
    """The list of entries (under 'queries:' or at the top level) and the key path to it, for line numbers."""
    prefix: tuple = ()
    if isinstance(items, dict):
        extra = [k for k in items if k != "queries"]
        if extra and all(k in QUERY_KEYS for k in items):  # one {id, question} object: a JSON line, perhaps
            raise ConfigError(f"{shown}:{lines.get((extra[0],), 1)}: one {{id, question}} object, not a list: "
                              f"{YAML_FORM}. Put '- ' before each entry, under 'queries:'.")
        if extra:
            raise ConfigError(f"{shown}:{lines.get((extra[0],), 1)}: unknown key {printable(repr(extra[0]), 80)}; "
                              f"{EXPECTED}.")
        items, prefix = items.get("queries"), ("queries",)
    if not isinstance(items, list):
        holder = "its 'queries:'" if prefix else "it"
        raise ConfigError(f"{shown}: read as YAML, {holder} holds {_kind_of(items)}; the queries file is YAML, "
                          f"{EXPECTED} {EXAMPLE}.")
    if not items:
        raise ConfigError(f"{shown}: no queries; {EXPECTED}.")
    if len(items) > MAX_QUERIES:
        raise ConfigError(f"generation.queries_file {shown}: {TOO_MANY_QUERIES}.")
    return items, prefix


def _kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"one text ({printable(repr(value), 60)})"
    return f"{type(value).__name__} {printable(repr(value), 60)}"


def _checked_query(item: Any, index: int, where: str) -> dict[str, str]:
    """One entry as {id, question}, both checked; ``where``: the file, line and entry, for the message."""
    if not isinstance(item, dict):
        raise ConfigError(f"{where} is {printable(repr(item), 60)}; {EXPECTED} (e.g. '- id: q1' then "
                          "'  question: ...').")
    unknown = [k for k in item if k not in QUERY_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {printable(repr(unknown[0]), 80)}; an entry has "
                          f"{' and '.join(QUERY_KEYS)}.")
    ident = item.get("id", index)
    if isinstance(ident, bool) or not isinstance(ident, (str, int)) or not str(ident).strip():
        raise ConfigError(f"{where}: 'id' is {printable(repr(ident), 60)}; it must be a name or a number.")
    ident = str(ident)
    if has_control_characters(ident) or len(ident) > 200:
        raise ConfigError(f"{where}: 'id' {printable(repr(ident), 60)} must be one line of at most 200 "
                          "characters, without control characters.")
    question = item.get("question")
    if not isinstance(question, str) or invisible(question):  # blank, or only zero-width / format characters
        got = ("no 'question'" if "question" not in item else f"'question' is {blank_said(question)}"
               if isinstance(question, str) else f"'question' is {printable(repr(question), 60)}")
        named = f" (query {printable(repr(ident), 80)})" if "id" in item else ""
        raise ConfigError(f"{where}{named}: {got}; it must be the question to answer, as visible text.")
    control = next((char for char in question if char not in "\n\t" and unicodedata.category(char) == "Cc"), None)
    if control is not None:  # an escape sequence would run in a terminal showing sample_responses.md
        raise ConfigError(f"{where} (query {printable(repr(ident), 80)}): 'question' holds the control character "
                          f"{printable(repr(control), 20)}: it would be written into sample_responses.md and run by "
                          "a terminal that shows it. Remove it (a line break and a tab are kept).")
    return {"id": ident, "question": question}


def check_queries(cfg: KitConfig) -> int:
    """Read and check ``generation.queries_file`` now (before a model loads or a run trains), for the
    modes that answer it; returns how many queries it holds."""
    return len(load_queries(cfg.generation.queries_file))


def with_disclaimer(text: str, disclaimer: str) -> str:
    text = text.strip()
    if disclaimer and not text.endswith(disclaimer):
        text = f"{text}\n\n*{disclaimer}*"
    return text


@dataclass(frozen=True)
class Decoding:
    """How prompts are batched and decoded. by_length: each batch holds prompts of neighbouring token lengths
    (longest first), so a batch pads little; the answers still come back in the caller's order. static_cache: a
    KV cache of fixed shape, which lets transformers compile the decoding step on a GPU."""

    by_length: bool = True
    static_cache: bool = False


ARRIVAL_ORDER = Decoding(by_length=False, static_cache=False)  # batches in the caller's order, growing caches

# Compiling the decoding step took about a minute for a Llama-3.1-8B shape on an H200 and then saved about 35 ms
# per decoding step of a batch of 8 (bf16, about 2.8x the tokens/s): auto compiles only work long enough to gain.
AUTO_STATIC_MIN_STEPS = 2048


def decoding_for(cfg: KitConfig, model: Any, prompts: int, max_new_tokens: int, batch_size: int) -> Decoding:
    """How this generation decodes: length-ordered batches, and the static cache where generation.static_cache
    resolves on; auto also asks for at least AUTO_STATIC_MIN_STEPS decoding steps (batches x max_new_tokens)."""
    steps = -(-prompts // batch_size) * max_new_tokens
    setting = cfg.generation.static_cache
    wanted = static_cache_on(setting, model) and (setting is True or steps >= AUTO_STATIC_MIN_STEPS)
    return Decoding(by_length=True, static_cache=wanted)


def static_cache_on(setting: bool | str, model: Any) -> bool:
    """generation.static_cache resolved for this model: auto is on where transformers compiles the decoding step
    (hf backend, NVIDIA GPU, a model that is not quantized by a method it cannot compile, such as bitsandbytes)."""
    if backends.generation_backend(model) == "unsloth":
        if setting is True:  # to be checked on NVIDIA + Unsloth: its for_inference path decodes with its own cache
            say("generation.static_cache: Unsloth generates with its own fast decoding; the static cache is for "
                "backend: hf.")
        return False
    if setting != "auto":
        return bool(setting)
    quantizer = getattr(model, "hf_quantizer", None)
    return model.device.type == "cuda" and (quantizer is None or bool(quantizer.is_compileable))


def generate_texts(cfg: KitConfig, model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                   batch_size: int | str) -> list[str]:
    """Replies to already chat-templated prompts, in order."""
    return [text for text, _ in _generate(cfg, model, tokenizer, prompts, max_new_tokens, batch_size)]


def _generate(cfg: KitConfig, model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
              batch_size: int | str, decoding: Decoding | None = None) -> list[tuple[str, int]]:
    """(reply, generated tokens) for each prompt, in the prompts' order, from left-padded batches. Each batch stops
    once every row has produced a stop token (transformers' generate ends there)."""
    import torch

    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    batch_size = batch_size_for(batch_size, model, max(lengths, default=1), max_new_tokens, len(prompts),
                                cfg.training.gpu_memory_gib)
    decoding = decoding or decoding_for(cfg, model, len(prompts), max_new_tokens, batch_size)
    g = cfg.generation
    stops = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": g.temperature, "top_p": g.top_p} if g.temperature > 0 else {
        "do_sample": False}
    cache = {"cache_implementation": "static"} if decoding.static_cache else {}
    batches = _batches(lengths, batch_size, decoding.by_length)
    # A static cache is sized prompt + max_new_tokens: a batch of another prompt length would compile the decoding
    # step again (and past torch's recompile limit run it uncompiled), so every batch is padded to one length.
    padding = {"padding": "max_length", "max_length": _padded_length(max(lengths, default=1))} \
        if decoding.static_cache else {"padding": True}
    out: list[Any] = [None] * len(prompts)
    tokenizer.padding_side = "left"
    try:
        with bar(len(prompts), "generating") as progress, _seeded(g.temperature > 0, cfg.training.seed, device):
            for rows in batches:
                texts = [prompts[i] for i in rows]
                if decoding.static_cache and len(batches) > 1:
                    # a batch of another size would compile the decoding step once more, which costs far more
                    # than the repeated rows
                    texts += texts[-1:] * (batch_size - len(texts))
                encoded = tokenizer(texts, return_tensors="pt", add_special_tokens=False, **padding).to(device)
                with torch.inference_mode():
                    output = model.generate(**encoded, max_new_tokens=max_new_tokens,
                                            repetition_penalty=g.repetition_penalty, eos_token_id=stops,
                                            pad_token_id=tokenizer.pad_token_id, **sampling, **cache)
                for index, tokens in zip(rows, output[: len(rows), encoded["input_ids"].shape[1] :], strict=True):
                    n = int(sum(1 for t in tokens.tolist() if t not in stops and t != tokenizer.pad_token_id))
                    out[index] = (tokenizer.decode(tokens, skip_special_tokens=True), n)
                progress.update(len(rows))
    finally:
        tokenizer.padding_side = "right"
    return out


def _batches(lengths: list[int], batch_size: int, by_length: bool) -> list[list[int]]:
    """The prompts' indices (by their token ``lengths``) in batches: in the given order, or longest first (ties in
    the given order)."""
    order = list(range(len(lengths)))
    if by_length:
        order.sort(key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


STATIC_PROMPT_MULTIPLE = 64  # prompts padded to a multiple of this: calls with close longest prompts share a compile


def _padded_length(longest: int) -> int:
    return -(-longest // STATIC_PROMPT_MULTIPLE) * STATIC_PROMPT_MULTIPLE


@contextmanager
def _seeded(sampling: bool, seed: int, device: Any) -> Iterator[None]:
    """Sampling draws from a generator seeded with training.seed (the same answers on every run), leaving the
    process's own random state as it was."""
    if not sampling:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


MIN_PROMPT_TOKENS = 64  # the least a prompt needs: a chat template and a short question


def model_context(config: Any) -> int | None:
    """The model's context length (max_position_embeddings) from its config: the loaded model's, or config.json's
    dict (read for --dry-run); None when it does not say."""
    if isinstance(config, dict):
        text = config.get("text_config")
        context = (text if isinstance(text, dict) else config).get("max_position_embeddings")
    else:
        context = getattr(config, "max_position_embeddings", None)
    return context if isinstance(context, int) and not isinstance(context, bool) and context > 0 else None


def prompt_room(cfg: KitConfig, context: int) -> int:
    """Tokens a prompt may use: the model's context less generation.max_new_tokens. A generation.max_new_tokens
    that leaves less than MIN_PROMPT_TOKENS is refused: test, chat and their --dry-run call this same check."""
    room = context - cfg.generation.max_new_tokens
    if room < MIN_PROMPT_TOKENS:
        raise ConfigError(f"generation.max_new_tokens={cfg.generation.max_new_tokens:,} leaves no room for a prompt "
                          f"in the model's context of {context:,} tokens (the answer and its prompt share it). Lower "
                          f"generation.max_new_tokens to at most {max(context - 4 * MIN_PROMPT_TOKENS, 1):,}.")
    return room


def answer(cfg: KitConfig, model: Any, tokenizer: Any, questions: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Each query answered; a question too long for the model's context (with room for max_new_tokens) is cut to
    fit, and its result says so (``cut``)."""
    g = cfg.generation
    context = model_context(model.config)
    if context is not None:
        prompt_room(cfg, context)
    check_query_texts(cfg, tokenizer, questions)
    questions = [fit_query(cfg, tokenizer, q, context) for q in questions]
    prompts = [render_prompt(tokenizer, *query_prompt(cfg.data, q["question"])) for q in questions]
    began = time.perf_counter()
    replies = shared_map(lambda part: _generate(cfg, model, tokenizer, part, g.max_new_tokens, g.batch_size), prompts)
    seconds = round(time.perf_counter() - began, 2)
    return [{**q, "response": with_disclaimer(text, g.disclaimer), "new_tokens": n, "seconds_all_queries": seconds}
            for q, (text, n) in zip(questions, replies, strict=True)]


def check_query_texts(cfg: KitConfig, tokenizer: Any, questions: list[dict[str, str]]) -> None:
    """The config's prompt texts and each query's question hold no control token of the tokenizer as text (each
    would end its turn inside the prompt): refused, naming the setting or the query."""
    from .data.control_tokens import prompt_settings, refuse_control_text

    shown = printable(cfg.generation.queries_file, PATH_SHOWN)
    refuse_control_text(tokenizer, [*prompt_settings(cfg.data), *(
        (f"generation.queries_file {shown}: query {printable(repr(q['id']), 80)}", q["question"]) for q in questions)],
        ConfigError)


def fit_query(cfg: KitConfig, tokenizer: Any, query: dict[str, str], context: int | None) -> dict[str, Any]:
    """The query as it will be asked: its question cut (the end replaced by ' ...') when the prompt and
    generation.max_new_tokens do not fit the model's context; refused when not even the chat template fits."""
    if not context:
        return query
    budget = context - cfg.generation.max_new_tokens
    prompt = render_prompt(tokenizer, cfg.data.system_prompt, query["question"])
    overflow = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) - budget
    if overflow <= 0:
        return query
    ids = tokenizer(query["question"], add_special_tokens=False)["input_ids"]
    keep = len(ids) - overflow - 8
    if keep <= 0:
        raise ConfigError(f"generation.queries_file: query {printable(query['id'], 80)}: the model's context of "
                          f"{context:,} tokens leaves no room for it with generation.max_new_tokens="
                          f"{cfg.generation.max_new_tokens}. Lower generation.max_new_tokens, or shorten the system "
                          "prompt.")
    note = (f"question cut from {len(ids):,} to {keep:,} tokens: the model's context holds {context:,} tokens, "
            f"generation.max_new_tokens={cfg.generation.max_new_tokens} of them for the answer. Shorten the question "
            "in the queries file to ask it whole.")
    return {**query, "question": tokenizer.decode(ids[:keep]) + " ...", "cut": note}


def to_jsonl(results: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)

"""The tokenizer: loaded, given the chat template model.chat_template asks for (checked to render a conversation in
time), a pad token and right padding; and the token ids that end an answer."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any

from ..config import KitConfig
from ..errors import ModelError
from ..messages import say
from ..secrets import printable
from .hf import tokenizer_load_errors

CHAT_TEMPLATES = {
    # model.chat_template: false (base models): plain text. The system prompt and a blank line, the user text as
    # written (a prompt_template such as "MEDICAL QUESTION: {question}\nANSWER: " ends where the answer starts),
    # the answer, then the end-of-text token; nothing marks the turns.
    "none": (
        "{{ bos_token if bos_token else '' }}{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{ message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
    ),
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
        "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
        "{% endif %}"
    ),
    "llama-3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'] + eos_token }}{% else %}"
        "{{ raise_exception('This template has no system role') }}{% endif %}{% endfor %}"
    ),
}


def use_chat_template(tokenizer: Any, cfg: KitConfig) -> Any:
    """The tokenizer with the chat template model.chat_template chooses: the plain one for false (no turn markers),
    a named one, or the tokenizer's own (ChatML where it has none). Everything that renders a prompt (training,
    the kit's scorer, lm-eval's apply_chat_template) goes through it, so all render alike."""
    choice = cfg.model.chat_template
    if choice is False:
        tokenizer.chat_template = CHAT_TEMPLATES["none"]
    elif choice != "auto":
        tokenizer.chat_template = CHAT_TEMPLATES[choice]
    elif tokenizer.chat_template is None:
        say("the tokenizer has no chat template: using ChatML (set model.chat_template to choose).")
        tokenizer.chat_template = CHAT_TEMPLATES["chatml"]
    return tokenizer


# The special tokens a named template writes as turn markers (Mistral's [INST] is text in its own tokenizer too).
TEMPLATE_TOKENS = {"chatml": ("<|im_start|>", "<|im_end|>"),
                   "llama-3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}


def _pieces(tokenizer: Any, marker: str) -> int:
    return len(tokenizer.encode(marker, add_special_tokens=False))


def check_template_tokens(tokenizer: Any, cfg: KitConfig, own_template: str | None = None) -> None:
    """A named template whose turn markers the tokenizer lacks as single tokens is refused: they would be trained as
    text pieces (longer rows, answers cut), and the model would learn to end a reply with the marker's text while
    generation stops at the tokenizer's end-of-turn token, so its replies would not stop."""
    choice = cfg.model.chat_template
    markers = TEMPLATE_TOKENS.get(choice) if isinstance(choice, str) else None
    split = {m: n for m in markers or () if (n := _pieces(tokenizer, m)) != 1}
    if not split:
        return
    fits = [name for name, tokens in TEMPLATE_TOKENS.items()
            if name != choice and all(_pieces(tokenizer, m) == 1 for m in tokens)]
    advice = (f"model.chat_template: {fits[0]} (its markers are this tokenizer's tokens)" if fits else
              "model.chat_template: false (plain text, for a base model)")
    if own_template:
        advice = f"model.chat_template: auto (the model's own template), or {advice}"
    shown = ", ".join(f"{m} ({n} pieces)" for m, n in split.items())
    raise ModelError(f"model.chat_template: {choice} writes turn markers that the tokenizer of "
                     f"{printable(cfg.model.name)} lacks as tokens: {shown}. They would be trained as text pieces, and "
                     f"the model would learn to end its replies with that text, not with the end-of-turn token "
                     f"generation stops at. Use {advice}.")


def prepare_tokenizer(tokenizer: Any, cfg: KitConfig) -> Any:
    _no_ignored_cleanup(tokenizer)
    own_template = getattr(tokenizer, "chat_template", None)
    use_chat_template(tokenizer, cfg)
    check_template_tokens(tokenizer, cfg, own_template)
    check_end_token(tokenizer, cfg)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    _check_chat_template(tokenizer, cfg)
    return tokenizer


def _no_ignored_cleanup(tokenizer: Any) -> None:
    """A BPE tokenizer whose config asks for clean_up_tokenization_spaces: transformers ignores it when decoding
    (it would strip real spaces) and warns of that on the first answer of every run; set off, the text decoded is
    the same and the warning is not shown."""
    backend = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if (getattr(tokenizer, "clean_up_tokenization_spaces", False) and type(backend).__name__ == "BPE"
            and not getattr(tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output",
                            False)):
        tokenizer.clean_up_tokenization_spaces = False


# Tokens that end a text in common vocabularies, offered where a tokenizer names none
END_TOKENS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", "<|eot_id|>")


def check_end_token(tokenizer: Any, cfg: KitConfig) -> None:
    """A tokenizer without an end-of-sequence token is refused (every mode that loads one, --dry-run too): training
    ends each answer with it, so that the model learns to stop; generation stops at it; and a tokenizer without a
    padding token pads with it. Without one, training failed inside the trainer ("The specified pad_token ('None')
    is not found in the vocabulary") and answers would never stop."""
    if tokenizer.eos_token is not None and tokenizer.eos_token_id is not None:
        return
    vocabulary = tokenizer.get_vocab()
    known = [t for t in END_TOKENS if t in vocabulary]
    example = f'"eos_token": "{known[0]}"' if known else '"eos_token": "<the token that ends a text>"'
    raise ModelError(f"model.name: the tokenizer of {printable(cfg.model.name)} has no end-of-sequence token "
                     "(eos_token is not set): training ends every answer with it so that the model learns to stop, "
                     "generation stops at it, and padding uses it where no pad_token is set. Set eos_token in the "
                     "model's tokenizer_config.json to the token it was trained to end a text with "
                     f"(e.g. {example}"
                     + (", a token of its vocabulary" if known else "") + ").")


CHAT_TEMPLATE_SECONDS = 10.0  # rendering a two-turn probe takes milliseconds; a template looping for ever is refused


class _TemplateTooSlow(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Any:
    """Raise _TemplateTooSlow in the code run under it after ``seconds`` (a model's chat template is code from
    outside: jinja2's sandbox stops what it may touch, not how long it loops). Main thread of a POSIX process
    only (a signal's handler runs there); elsewhere the code runs unbounded."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise _TemplateTooSlow

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_chat_template(tokenizer: Any, cfg: KitConfig) -> None:
    """The chat template must render a conversation (with or without a system turn) that holds what it was
    given: a template that does not compile or drops the messages would train on the wrong text, and one that
    does not finish rendering a two-turn conversation in CHAT_TEMPLATE_SECONDS would hang every command."""
    probe = [{"role": "user", "content": "Is aspirin useful?"}, {"role": "assistant", "content": "Often."}]
    try:
        with _time_limit(CHAT_TEMPLATE_SECONDS):
            try:
                text = tokenizer.apply_chat_template([{"role": "system", "content": "Be careful."}] + probe,
                                                     tokenize=False)
            except _TemplateTooSlow:
                raise
            except Exception:  # templates without a system role (Mistral's) raise: the kit then merges it
                text = tokenizer.apply_chat_template(probe, tokenize=False)
    except _TemplateTooSlow:
        origin, advice = _template_origin(tokenizer, cfg)
        raise ModelError(f"The chat template of {origin} did not finish rendering a two-turn conversation in "
                         f"{CHAT_TEMPLATE_SECONDS:g} seconds (it loops for too long). {advice}.") from None
    except Exception as err:  # jinja2's TemplateSyntaxError, TemplateError, TypeError...
        origin, advice = _template_origin(tokenizer, cfg)
        raise ModelError(f"The chat template of {origin} cannot render a conversation "
                         f"({type(err).__name__}: {printable(str(err), 200)}). {advice}.") from None
    if not isinstance(text, str) or "Is aspirin useful?" not in text or "Often." not in text:
        origin, advice = _template_origin(tokenizer, cfg)
        raise ModelError(f"The chat template of {origin} leaves out the messages it is given. {advice}.")
    _check_generation_prompt(tokenizer, cfg, probe[:1])


def _check_generation_prompt(tokenizer: Any, cfg: KitConfig, question: list[dict[str, str]]) -> None:
    """The template must render a question followed by the start of the answer (add_generation_prompt): every
    prompt the kit trains on (the part left out of the loss), scores and answers is rendered so."""
    try:
        with _time_limit(CHAT_TEMPLATE_SECONDS):
            tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    except _TemplateTooSlow:
        origin, advice = _template_origin(tokenizer, cfg)
        raise ModelError(f"The chat template of {origin} did not finish rendering a question in "
                         f"{CHAT_TEMPLATE_SECONDS:g} seconds (it loops for too long). {advice}.") from None
    except Exception as err:  # jinja2's TemplateError raised by the template itself
        origin, advice = _template_origin(tokenizer, cfg)
        raise ModelError(f"The chat template of {origin} refuses to render a question followed by the start of "
                         f"the answer (add_generation_prompt: {type(err).__name__}: {printable(str(err), 200)}), "
                         f"which every prompt the kit trains on, scores and answers is. {advice}.") from None


def _template_origin(tokenizer: Any, cfg: KitConfig) -> tuple[str, str]:
    """Whose chat template the tokenizer renders with, and what to change: an adapter's own (saved with it, the one
    it was trained with: a cut or edited copy is restored, not replaced), else the model's."""
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if cfg.model.chat_template == "auto" and folder.is_dir() and (folder / "adapter_config.json").is_file():
        file = next((f for f in ("chat_template.jinja", "tokenizer_config.json") if (folder / f).is_file()),
                    "tokenizer_config.json")
        return (f"the adapter in {printable(str(folder))} (its {file}, saved with it)",
                f"The adapter answers with the template it was trained with: restore {file} from the run folder "
                "it came from (a copy cut short or edited?), or copy that run folder again")
    return printable(cfg.model.name), "Set model.chat_template to chatml, llama-3 or mistral"


def load_tokenizer(cfg: KitConfig, source: str) -> Any:
    """The tokenizer alone (the data is tokenized before the model loads, so auto-fit knows the lengths)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as err:
        raise tokenizer_load_errors(source, err) from None
    check_vocabulary_fits(tokenizer, config_rows(source, cfg.model.trust_remote_code), source, "its config.json gives")
    return prepare_tokenizer(tokenizer, cfg)


def config_rows(source: str, trust_remote_code: bool = False) -> int | None:
    """The rows of the model's embedding as its config.json (read locally) gives them (vocab_size); None: unknown."""
    from ..adapter_base import base_config, text_config

    config = base_config(source, trust_remote_code)
    rows = text_config(config).get("vocab_size") if config is not None else None
    return rows if isinstance(rows, int) and not isinstance(rows, bool) and rows > 0 else None


def embedding_rows(model: Any) -> int | None:
    """The rows of a loaded model's input embedding (None where the model does not say)."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embedding, "num_embeddings", None)
    return rows if isinstance(rows, int) else None


def check_vocabulary_fits(tokenizer: Any, rows: int | None, source: str, told: str = "its config.json gives") -> None:
    """Every id the tokenizer can produce is a row of the model's embedding: a tokenizer copied from another model,
    with more ids than the embedding has rows, stopped training (or generation) at the first token beyond them with
    an IndexError. Checked from config.json when the tokenizer loads (--dry-run too) and on the loaded model (a hub
    model, an adapter saved with its own tokenizer). Embeddings padded beyond the tokenizer (usual) pass."""
    if rows is None:
        return
    ids = max(tokenizer.get_vocab().values(), default=-1) + 1
    if ids > rows:
        raise ModelError(f"model.name: {printable(source)}: {told} the embedding {rows} rows (vocab_size {rows}), but "
                         f"its tokenizer has {ids} token ids (0 to {ids - 1}): a tokenizer of another model? Training "
                         "or generation would stop at the first token id beyond the embedding. Put the tokenizer "
                         "files the model was trained with beside its weights.")


def stop_token_ids(tokenizer: Any) -> list[int]:
    """eos plus the token that ends an assistant turn, when the template uses a different one."""
    from ..data import turn_end

    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end = turn_end(tokenizer).strip()
    end_ids = tokenizer(end, add_special_tokens=False)["input_ids"] if end else []
    if len(end_ids) == 1 and end_ids[0] not in ids:
        ids.append(end_ids[0])
    return ids

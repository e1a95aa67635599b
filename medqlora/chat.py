"""--mode chat: talk to a model you trained, with its training chat template and system prompt.

    python medical_qlora_finetuning.py --mode chat                    # base + the newest run's adapter
    python medical_qlora_finetuning.py --mode chat --adapter outputs/<run>
    python medical_qlora_finetuning.py --mode chat --adapter none     # the base model alone
    python medical_qlora_finetuning.py --mode chat --prompt "What causes iron-deficiency anaemia?"

The conversation keeps its history (the oldest turns are dropped when it outgrows the model's context) and
the reply streams as it is generated. `/reset` starts over, `/exit` (or end of input) leaves. With --prompt the
answer alone goes to stdout (scriptable); the disclaimer and the kit's messages go to stderr.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from jinja2.exceptions import TemplateError

from . import generate
from .backends import stop_token_ids
from .config import KitConfig
from .data import query_prompt
from .data.control_tokens import control_token_in, control_token_said, prompt_settings, refuse_control_text
from .errors import ConfigError
from .rows import invisible
from .secrets import printable
from .system_turn import with_system


def chat_messages(tokenizer: Any, system_prompt: str | None, turns: list[tuple[str, str]],
                  user: str) -> list[dict[str, str]]:
    """The conversation as chat messages: the system prompt (folded into the first user message for templates
    without a system role or that drop it, as training does: system_turn.with_system), the earlier turns, then
    ``user``."""
    messages = [m for question, answer in turns
                for m in ({"role": "user", "content": question}, {"role": "assistant", "content": answer})]
    messages.append({"role": "user", "content": user})
    return with_system(tokenizer, system_prompt, messages)


HELP = "Type a question and press Enter. /reset starts a new conversation, /exit leaves."
NO_HISTORY = ("(model.chat_template is false: the model knows no turn markers, so earlier turns would be glued to "
              "the question; each question is answered on its own, without the conversation's history)")
NOT_TEXT = "(that line is not UTF-8 text (binary input?): it was skipped. Type or pipe text.)"


def is_text(line: str) -> bool:
    """Whether ``line`` is text the tokenizer can take: undecodable bytes read from stdin or argv arrive as lone
    surrogates (Python's surrogateescape), which the tokenizer refuses."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class Conversation:
    """The turns so far, rendered with the training chat template and system prompt."""

    tokenizer: Any
    system_prompt: str | None
    limit: int  # tokens the prompt may use: the model's context less the reply's budget
    turns: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0  # turns left out because the history outgrew the context
    asked: str = ""  # the last user message as it went into the prompt (cut when it alone did not fit)
    cut: str | None = None  # why and how much of the last user message was cut, for stderr
    keep_history: bool = True  # False: each question alone (a model trained without turn markers)
    note: str | None = None  # what changed in how the conversation is kept, for stderr once

    def _render(self, user: str) -> tuple[str, int]:
        try:
            text = self._templated(user)
        except TemplateError as err:  # raised by the template itself: one that takes one question at a time
            if not self.turns:
                raise
            self.reset()
            self.keep_history = False
            self.note = (f"(the chat template refuses a conversation with earlier turns ({printable(str(err), 160)}): "
                         "each question is answered on its own from here)")
            text = self._templated(user)
        return text, len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _templated(self, user: str) -> str:
        return self.tokenizer.apply_chat_template(
            chat_messages(self.tokenizer, self.system_prompt, self.turns, user), tokenize=False,
            add_generation_prompt=True)

    def prompt(self, user: str) -> str:
        """The templated prompt for ``user`` after the history, oldest turns dropped until it fits; when the
        message alone does not fit, its start is kept (the end replaced by ' ...') and ``cut`` says so."""
        self.asked, self.cut = user, None
        while True:
            text, size = self._render(user)
            if size <= self.limit:
                return text
            if not self.turns:
                break
            self.turns.pop(0)
            self.dropped += 1
        ids = self.tokenizer(user, add_special_tokens=False)["input_ids"]
        keep = len(ids) - (size - self.limit) - 8
        while keep > 0:
            asked = self.tokenizer.decode(ids[:keep]) + " ..."
            text, size = self._render(asked)
            if size <= self.limit:
                self.asked = asked
                self.cut = (f"(your message was cut from {len(ids):,} to {keep:,} tokens, its start kept and its end "
                            f"left out: the prompt may use {self.limit:,} tokens of the model's context, the rest "
                            "is kept for generation.max_new_tokens. Shorten the message to ask it whole.)")
                return text
            keep -= size - self.limit + 8
        raise ConfigError(f"The system prompt and chat template alone take more than the {self.limit:,} tokens a "
                          "prompt may use (the model's context less generation.max_new_tokens): no message fits. "
                          "Lower generation.max_new_tokens, or shorten the system prompt.")

    def add(self, user: str, reply: str) -> None:
        if self.keep_history:
            self.turns.append((user, reply))

    def reset(self) -> None:
        self.turns.clear()
        self.dropped = 0


@dataclass
class Reply:
    text: str
    tokens: int
    first_token_s: float | None
    seconds: float

    def stats(self) -> str:
        first = f"first after {self.first_token_s:.2f} s, " if self.first_token_s is not None else ""
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        return f"({self.tokens} tokens, {first}{rate:.1f} tokens/s)"


def stream_reply(cfg: KitConfig, model: Any, tokenizer: Any, prompt: str, out: TextIO) -> Reply:
    """Generate a reply to an already templated prompt, writing its text to ``out`` as it comes."""
    import torch
    from transformers import TextIteratorStreamer

    g = cfg.generation
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True,
                                    clean_up_tokenization_spaces=False)
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(next(model.parameters()).device)
    sampling = {"do_sample": True, "temperature": g.temperature, "top_p": g.top_p} if g.temperature > 0 else {
        "do_sample": False}
    produced: dict[str, Any] = {}
    stop = threading.Event()

    def work() -> None:
        try:
            with torch.inference_mode():
                produced["ids"] = model.generate(
                    **encoded, streamer=streamer, max_new_tokens=g.max_new_tokens,
                    repetition_penalty=g.repetition_penalty, eos_token_id=stop_token_ids(tokenizer),
                    pad_token_id=tokenizer.pad_token_id, stopping_criteria=_stopped_by(stop), **sampling)
        except BaseException as err:  # re-raised in the caller's thread, where the kit reports it
            produced["error"] = err
            streamer.end()

    began = time.perf_counter()
    first = None
    pieces = []
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        for piece in streamer:
            if first is None and piece:
                first = time.perf_counter() - began
            pieces.append(piece)
            out.write(piece)
            out.flush()
    except BaseException:
        # a write that failed (the reader of stdout went away), Ctrl-C: the generation stops at its next token and
        # its thread ends here, never left inside the model when Python exits (which aborted the process)
        stop.set()
        worker.join()
        raise
    worker.join()
    if "error" in produced:
        raise produced["error"]
    new = produced["ids"][0, encoded["input_ids"].shape[1]:]
    stops = set(stop_token_ids(tokenizer))
    tokens = sum(1 for t in new.tolist() if t not in stops and t != tokenizer.pad_token_id)
    return Reply("".join(pieces).strip(), tokens, first, time.perf_counter() - began)


def _stopped_by(stop: threading.Event) -> Any:
    """A stopping criterion of generate: the whole batch stops once ``stop`` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenSet()])


def reply_budget(cfg: KitConfig, model: Any) -> int:
    """Prompt tokens a turn may use: the model's context less generation.max_new_tokens."""
    return generate.prompt_room(cfg, chat_context(cfg, getattr(model, "config", None)))


def chat_context(cfg: KitConfig, config: Any) -> int:
    """The context a conversation fits in: the model's (``config``: its config, or config.json's dict), else
    model.max_seq_length."""
    return generate.model_context(config) or cfg.model.max_seq_length


def one_shot(cfg: KitConfig, model: Any, tokenizer: Any, question: str, out: TextIO, err: TextIO) -> Reply:
    """--prompt: one answer to stdout, the disclaimer to stderr."""
    if not is_text(question):
        raise ConfigError("--prompt is not UTF-8 text (it holds undecodable bytes): give the question as text.")
    refuse_control_text(tokenizer, [*prompt_settings(cfg.data), ("--prompt", question)], ConfigError)
    conversation = Conversation(tokenizer, query_prompt(cfg.data, "")[0], reply_budget(cfg, model))
    prompt = conversation.prompt(question)
    if conversation.cut:
        err.write(f"{conversation.cut}\n")
    if conversation.note:
        err.write(f"{conversation.note}\n")
        conversation.note = None
        err.flush()
    reply = stream_reply(cfg, model, tokenizer, prompt, out)
    out.write("\n")
    out.flush()
    if cfg.generation.disclaimer:
        err.write(f"{cfg.generation.disclaimer}\n")
    return reply


def interactive(cfg: KitConfig, model: Any, tokenizer: Any, inp: TextIO, out: TextIO, err: TextIO,
                title: str) -> int:
    """The conversation loop; returns how many replies were given."""
    tty = inp.isatty()
    conversation = _start_conversation(cfg, model, tokenizer, inp, out, err, title)
    replies = 0
    while True:
        line = _read_line(inp, out, err, tty)
        if line is None:
            break
        user = line.strip()
        action = _command(user, conversation, out, err)
        if action == "stop":
            break
        if action == "ask":
            _answer(cfg, model, tokenizer, conversation, user, out, err)
            replies += 1
    out.write("\n")
    out.flush()
    return replies


def _start_conversation(cfg: KitConfig, model: Any, tokenizer: Any, inp: TextIO, out: TextIO, err: TextIO,
                        title: str) -> Conversation:
    """A new conversation, the input told to keep undecodable bytes, and the title, help and disclaimer shown."""
    refuse_control_text(tokenizer, prompt_settings(cfg.data), ConfigError)
    conversation = Conversation(tokenizer, query_prompt(cfg.data, "")[0], reply_budget(cfg, model),
                                keep_history=cfg.model.chat_template is not False)
    with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
        inp.reconfigure(errors="surrogateescape")  # an undecodable line is then skipped, not the end of the chat
    out.write(f"{title}\n{HELP}\n")
    if not conversation.keep_history:
        err.write(f"{NO_HISTORY}\n")
    if cfg.generation.disclaimer:
        out.write(f"{cfg.generation.disclaimer}\n")
    return conversation


MAX_LINE_CHARS = 1_000_000  # far beyond any model's context (the reply cuts the conversation to fit it)


def _read_line(inp: TextIO, out: TextIO, err: TextIO, tty: bool) -> str | None:
    """The next line typed (after a prompt on a terminal); None at the end of the input."""
    if tty:
        out.write("\nyou> ")
    out.flush()
    try:
        line = inp.readline(MAX_LINE_CHARS + 1)  # bounded: an endless input without a newline must not fill memory
    except UnicodeDecodeError:  # a stream that could not be told to keep undecodable bytes
        err.write("(the input is not UTF-8 text (binary input?): the conversation ends.)\n")
        return None
    if len(line) > MAX_LINE_CHARS:
        err.write(f"(a line longer than {MAX_LINE_CHARS:,} characters (binary input?): the conversation ends. "
                  "Ask shorter questions, one a line.)\n")
        return None
    return line or None  # an empty string: end of input


def _command(user: str, conversation: Conversation, out: TextIO, err: TextIO) -> str:
    """What a line asks for: "stop" (/exit, /quit), "next" (a command done, or nothing to answer), or "ask"."""
    if not is_text(user):
        err.write(f"{NOT_TEXT}\n")
        return "next"
    if invisible(user):  # blank, or only zero-width / format characters: nothing asked
        return "next"
    if hit := control_token_in(conversation.tokenizer, [("that line", user)]):
        err.write(f"({control_token_said(*hit)} The line was skipped.)\n")
        return "next"
    if user in ("/exit", "/quit"):
        return "stop"
    if user == "/reset":
        conversation.reset()
        out.write("(new conversation)\n")
        return "next"
    if user.startswith("/"):
        out.write(f"Unknown command {user.split()[0]!r}. {HELP}\n")
        return "next"
    return "ask"


def _answer(cfg: KitConfig, model: Any, tokenizer: Any, conversation: Conversation, user: str, out: TextIO,
            err: TextIO) -> None:
    """The reply to ``user``, streamed, with what no longer fit the context and the reply's figures on stderr."""
    before = conversation.dropped
    prompt = conversation.prompt(user)
    if conversation.dropped > before:
        err.write(f"(the {conversation.dropped - before} oldest turns no longer fit the model's context and "
                  "were left out)\n")
    if conversation.cut:
        err.write(f"{conversation.cut}\n")
    if conversation.note:
        err.write(f"{conversation.note}\n")
        conversation.note = None
    out.write("model> ")
    reply = stream_reply(cfg, model, tokenizer, prompt, out)
    out.write("\n")
    err.write(f"{reply.stats()}\n")
    conversation.add(conversation.asked, reply.text)

"""The Ollama Modelfile written beside every GGUF export: FROM the GGUF file, a TEMPLATE that reproduces the
training chat template, the end-of-turn stop tokens and the system prompt.

    ollama create medqa -f outputs/<run>/export/gguf/Modelfile && ollama run medqa

The TEMPLATE (Go text/template, as Ollama reads it) is derived from the tokenizer's own chat template by
rendering a conversation with marker texts and cutting it at the markers; before it is written, it is rendered
here for several conversations and must give exactly what the chat template gives, or no Modelfile is written
(the report says why: Ollama then falls back to the template it reads from the GGUF file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .data import turn_end
from .system_turn import system_kept, with_system

# Marker texts: private-use characters, which no template strips as whitespace or changes.
_SYSTEM, _USER1, _ASSISTANT1, _USER2 = "\ue000S\ue000", "\ue000U1\ue000", "\ue000A1\ue000", "\ue000U2\ue000"


class TemplateNotPortable(ValueError):
    """The chat template cannot be written as an Ollama TEMPLATE that renders the same text."""


@dataclass(frozen=True)
class Pieces:
    """The fixed text between the parts of a conversation, as the chat template writes it."""

    start_with_system: str  # before the system prompt
    after_system: str  # between the system prompt and the first user message
    start_without_system: str  # before the first user message when there is no system prompt
    user_to_assistant: str  # after a user message, before the assistant's reply (the generation prompt included)
    assistant_to_user: str  # after an assistant reply, before the next user message
    generation_prompt: str  # after the last user message: where the model's reply begins


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _cut(text: str, markers: list[str]) -> list[str]:
    parts = []
    for marker in markers:
        if text.count(marker) != 1:
            raise TemplateNotPortable("the chat template changes or repeats message text")
        before, text = text.split(marker)
        parts.append(before)
    return [*parts, text]


def added_bos(tokenizer: Any) -> str:
    """The BOS text when the tokenizer adds BOS itself on encoding; llama.cpp then adds it too (the GGUF records
    it), so the TEMPLATE must not write it a second time. Empty otherwise."""
    bos = tokenizer.bos_token
    ids = tokenizer("x")["input_ids"]
    return bos if bos and len(ids) > 1 and ids[0] == tokenizer.bos_token_id else ""


def _without(prefix: str, text: str) -> str:
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def pieces(tokenizer: Any) -> Pieces:
    """The template's fixed texts, read from two renderings (with and without a system prompt)."""
    bos = added_bos(tokenizer)
    turns = [{"role": "user", "content": _USER1}, {"role": "assistant", "content": _ASSISTANT1},
             {"role": "user", "content": _USER2}]
    plain_start, *plain = _cut(_render(tokenizer, turns), [_USER1, _ASSISTANT1, _USER2])
    if not _has_system_role(tokenizer):  # the system prompt opens the first user message, as in training
        return Pieces(_without(bos, plain_start), "\n\n", _without(bos, plain_start), *plain)
    rendered = _render(tokenizer, [{"role": "system", "content": _SYSTEM}, *turns])
    start, after_system, user_to_assistant, assistant_to_user, tail = _cut(
        rendered, [_SYSTEM, _USER1, _ASSISTANT1, _USER2])
    if plain != [user_to_assistant, assistant_to_user, tail]:
        raise TemplateNotPortable("the text between messages depends on the system prompt")
    return Pieces(_without(bos, start), after_system, _without(bos, plain_start), user_to_assistant,
                  assistant_to_user, tail)


def _has_system_role(tokenizer: Any) -> bool:
    """Whether the template writes a system turn (one that raises on it, or drops its text, has none: training
    then folds the system prompt into the first user message, system_turn.with_system)."""
    return system_kept(tokenizer, _SYSTEM)


def go_template(p: Pieces) -> str:
    """One line of Go text/template (no whitespace trimming, so every character of the pieces is kept)."""
    for text in (p.start_with_system, p.after_system, p.start_without_system, p.user_to_assistant,
                 p.assistant_to_user, p.generation_prompt):
        if "{{" in text or "}}" in text or '"""' in text:
            raise TemplateNotPortable("the chat template's text contains '{{', '}}' or '\"\"\"'")
    return ("{{ $started := false }}{{ range .Messages }}{{ if eq .Role \"user\" }}"
            f"{{{{ if $started }}}}{p.assistant_to_user}{{{{ else if $.System }}}}{p.start_with_system}"
            f"{{{{ $.System }}}}{p.after_system}{{{{ else }}}}{p.start_without_system}{{{{ end }}}}"
            "{{ $started = true }}{{ .Content }}{{ else if eq .Role \"assistant\" }}"
            f"{p.user_to_assistant}{{{{ .Content }}}}{{{{ end }}}}{{{{ end }}}}{p.generation_prompt}")


# ---------------------------------------------------------------- rendering the Go template (the subset used)

_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)


def render_go(template: str, system: str, messages: list[dict[str, str]]) -> str:
    """Render ``template`` as Ollama would for a conversation; only the constructs go_template writes are
    understood (range over .Messages, if / else if / else, eq, variables), anything else is an error."""
    tokens = []
    position = 0
    for match in _ACTION.finditer(template):
        tokens.append(("text", template[position:match.start()]))
        tokens.append(("action", match.group(1).strip()))
        position = match.end()
    tokens.append(("text", template[position:]))
    tree, rest = _parse(tokens, 0)
    if rest != len(tokens):
        raise ValueError("unbalanced {{ end }}")
    out: list[str] = []
    fields = [{"Role": m["role"], "Content": m["content"]} for m in messages]  # Ollama's message fields
    _run(tree, {"System": system, "Messages": fields}, None, {}, out)
    return "".join(out)


def _parse(tokens: list[tuple[str, str]], i: int) -> tuple[list, int]:
    nodes: list = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
        elif value == "end" or value == "else" or value.startswith("else if "):
            return nodes, i
        elif value.startswith("if ") or value.startswith("range "):
            node, i = _parse_block(tokens, i)
            nodes.append(node)
        else:
            nodes.append(("action", value))
            i += 1
    return nodes, i


def _parse_block(tokens: list[tuple[str, str]], i: int) -> tuple[tuple, int]:
    head = tokens[i][1]
    if head.startswith("range "):
        body, i = _parse(tokens, i + 1)
        if tokens[i][1] != "end":
            raise ValueError("range without end")
        return ("range", head[6:].strip(), body), i + 1
    branches = []
    condition = head[3:].strip()
    i += 1
    while True:
        body, i = _parse(tokens, i)
        branches.append((condition, body))
        value = tokens[i][1]
        if value == "end":
            return ("if", branches), i + 1
        condition = value[8:].strip() if value.startswith("else if ") else "true"
        i += 1


def _value(expr: str, root: dict, dot: Any, variables: dict) -> Any:
    expr = expr.strip()
    if expr.startswith("eq "):
        left, right = _split_args(expr[3:])
        return _value(left, root, dot, variables) == _value(right, root, dot, variables)
    if expr in ("true", "false"):
        return expr == "true"
    if expr.startswith('"') and expr.endswith('"'):
        return expr[1:-1]
    if expr.startswith("$."):
        return root[expr[2:]]
    if expr.startswith("$"):
        return variables[expr]
    if expr.startswith("."):
        return (dot or root)[expr[1:]]
    raise ValueError(f"unsupported expression {expr!r}")


def _split_args(text: str) -> tuple[str, str]:
    parts = re.findall(r'"[^"]*"|\S+', text)
    if len(parts) != 2:
        raise ValueError(f"eq needs two arguments: {text!r}")
    return parts[0], parts[1]


def _run(nodes: list, root: dict, dot: Any, variables: dict, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "range":
            for item in _value(node[1], root, dot, variables):
                _run(node[2], root, item, variables, out)
        elif node[0] == "if":
            for condition, body in node[1]:
                if _value(condition, root, dot, variables):
                    _run(body, root, dot, variables, out)
                    break
        else:
            _action(node[1], root, dot, variables, out)


def _action(action: str, root: dict, dot: Any, variables: dict, out: list[str]) -> None:
    assignment = re.fullmatch(r"(\$\w+)\s*(:?=)\s*(.+)", action)
    if assignment:
        name, operator, expr = assignment.groups()
        if operator == "=" and name not in variables:
            raise ValueError(f"{name} assigned before it is declared")
        variables[name] = _value(expr, root, dot, variables)
        return
    out.append(str(_value(action, root, dot, variables)))


# ---------------------------------------------------------------- the Modelfile

_CHECK_CONVERSATIONS = [
    [{"role": "user", "content": "What is anaemia?"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
    [{"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"},
     {"role": "assistant", "content": "e"}, {"role": "user", "content": "f"}],
]


def check_template(template: str, tokenizer: Any, system_prompt: str | None) -> None:
    """The TEMPLATE must render what the chat template renders, with and without the system prompt (less a BOS
    that llama.cpp adds itself)."""
    for system in {s for s in (system_prompt, "You are a medical assistant.") if s} | {""}:
        for conversation in _CHECK_CONVERSATIONS:
            expected = _without(added_bos(tokenizer), _render(tokenizer, with_system(tokenizer, system, conversation)))
            if render_go(template, system, conversation) != expected:
                raise TemplateNotPortable("the derived template renders a different text than the chat template")


def trims_messages(tokenizer: Any) -> bool:
    """Whether the chat template strips the whitespace around message text (Llama 3's does); Ollama's templates
    cannot, so a message that starts or ends with spaces renders with them there."""
    padded = _render(tokenizer, [{"role": "user", "content": f"  {_USER1}  "}])
    return f"  {_USER1}  " not in padded


def stop_words(tokenizer: Any) -> list[str]:
    """The texts that end an assistant turn: the template's own turn end, and the eos token."""
    words = [turn_end(tokenizer).strip(), tokenizer.eos_token or ""]
    return [w for w in dict.fromkeys(words) if w]


def modelfile(gguf_name: str, tokenizer: Any, system_prompt: str | None) -> str:
    """The Modelfile text; raises TemplateNotPortable when the chat template cannot be reproduced."""
    template = go_template(pieces(tokenizer))
    check_template(template, tokenizer, system_prompt)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{word}"' for word in stop_words(tokenizer) if '"' not in word]
    if system_prompt:
        lines.append(system_line(system_prompt))
    return "\n".join(lines) + "\n"


SYSTEM_NOT_WRITTEN = "# SYSTEM not written:"


def system_line(system_prompt: str) -> str:
    """The Modelfile's SYSTEM: in triple quotes; one holding triple quotes, as one unquoted line where it is one
    line; else a comment that says how to give it (Ollama would answer without the system prompt trained with)."""
    if '"""' not in system_prompt:
        return f'SYSTEM """{system_prompt}"""'
    if "\n" not in system_prompt and not system_prompt.lstrip().startswith('"'):
        return f"SYSTEM {system_prompt.strip()}"
    return (f"{SYSTEM_NOT_WRITTEN} the system prompt the adapter was trained with holds triple quotes and line breaks, "
            "which a Modelfile cannot hold; give it in each conversation (/set system in ollama run, or the API's "
            "system field), or the model answers without it")

"""Where the system prompt goes in a conversation: its own system turn where the chat template writes that turn's
text, else the start of the first message (as the kit trains, evaluates, chats and exports every prompt).

A template may lack a system role in two ways: it raises on one (Mistral's), or it skips the turn without a word
(a loop over the messages that leaves out role system). Either way the text is folded into the first message, so
data.system_prompt (or a chat row's own system turn) reaches the model.
"""

from __future__ import annotations

from typing import Any

_PROBE_USER = "MEDQLORA-PROBE-QUESTION"


def system_kept(tokenizer: Any, system: str) -> bool:
    """Whether the tokenizer's chat template renders a system turn of ``system`` with its text (before a user turn,
    with the generation prompt): False where it raises on a system turn, and where the text is not in what it
    writes."""
    conversation = [{"role": "system", "content": system}, {"role": "user", "content": _PROBE_USER}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates without a system role (e.g. Mistral's) raise a TemplateError
        return False
    return isinstance(text, str) and system.strip() in text


def with_system(tokenizer: Any, system: str | None, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` with ``system`` first: as a system turn where the template keeps it, else folded into the
    start of the first user message (None or '': the messages as they are)."""
    if not system:
        return messages
    if system_kept(tokenizer, system):
        return [{"role": "system", "content": system}, *messages]
    # into the first user turn: a conversation the assistant opens (a greeting) keeps its greeting as written
    at = next((i for i, m in enumerate(messages) if m["role"] == "user"), 0)
    folded = {"role": messages[at]["role"], "content": f"{system}\n\n{messages[at]['content']}"}
    return [*messages[:at], folded, *messages[at + 1:]]

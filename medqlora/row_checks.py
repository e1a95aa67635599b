"""Checks of the training rows that need more than one row, or the run's settings, to see (each row's own checks
are its format's): a run and its --dry-run call them on the collected rows before any model or tokenizer loads."""

from __future__ import annotations

from .config import KitConfig
from .data import Collected
from .errors import DataError
from .secrets import printable


def check_training_rows(cfg: KitConfig, collected: list[Collected]) -> None:
    _conversations_have_a_template(cfg, collected)
    for c in collected:
        if c.spec.format == "multiple_choice":
            _answer_stated_once(c)


def _first_rows(rows: list[int | None]) -> str:
    numbered = sorted(r for r in rows if r is not None)
    return f"{len(rows)} row(s) (row {numbered[0]} first)" if numbered else f"{len(rows)} row(s)"


def _conversations_have_a_template(cfg: KitConfig, collected: list[Collected]) -> None:
    """Multi-turn preference conversations with model.chat_template: false are refused, as chat rows are: their
    earlier turns would be glued into the prompt with nothing to tell one speaker from the next."""
    if cfg.model.chat_template is not False:
        return
    for c in collected:
        rows = [ex.row for ex in c.examples if getattr(ex, "multi_turn", False)]
        if rows:
            raise DataError(f"{printable(c.spec.source, 200)}: {_first_rows(rows)} hold multi-turn preference "
                            "conversations, and model.chat_template: false renders a conversation as its turns glued "
                            "together, with nothing to tell one speaker from the next. Conversations need a chat "
                            "template: set model.chat_template to auto, chatml, llama-3 or mistral (or keep one "
                            "question and its replies per row).")


def _same_text(a: str, b: str) -> bool:
    return a.casefold().split() == b.casefold().split()


def answer_twin(options: dict[str, str], gold: str) -> str | None:
    """Another option whose text is the answer's (case and spacing aside), or None: with it, a multiple-choice
    question's answer is a coin toss. Training rows and benchmark items are both checked with it."""
    if gold not in options:
        return None
    return next((k for k, text in options.items() if k != gold and _same_text(text, options[gold])), None)


def twin_said(options: dict[str, str], gold: str, twin: str) -> str:
    return f"options {gold} and {twin} are both {printable(options[gold], 60)!r}, and the answer is {gold}"


def _answer_stated_once(c: Collected) -> None:
    """A multiple-choice row whose answer's text is also another option's: the row teaches one letter where another
    says the same (a duplicated wrong option, as real exam sets hold, changes nothing and passes)."""
    found = []
    for ex in c.examples:
        options = {name.removeprefix("options."): text for name, text in ex.texts if name.startswith("options.")}
        gold = ex.response.split(".", 1)[0]
        twin = answer_twin(options, gold)
        if twin:
            found.append((ex.row, twin_said(options, gold, twin)))
    if found:
        _, shown = min(found, key=lambda hit: hit[0] or 0)
        raise DataError(f"{printable(c.spec.source, 200)}: {_first_rows([row for row, _ in found])} state the answer "
                        f"in two options ({shown}): the row teaches one letter where another says the same, so its "
                        "answer is a coin toss. Make the options differ (or correct answer_idx), or leave those rows "
                        "out.")

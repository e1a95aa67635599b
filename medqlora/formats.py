"""The dataset formats and benchmark kinds the kit reads, one registry entry each: the source of truth for
the config's allowed values (``data.datasets[].format``, ``eval.benchmarks[].kind``), the placeholders a
``prompt_template`` may use, the row shape a refusal shows, and the tables of docs/formats.md
(``python -m medqlora.formats`` prints them; tests/test_formats.py checks the page matches).

Adding a dataset format is one decorated function here (or in a module imported at the end of this one):

    @dataset_format("my_format", placeholders=("question",), columns="...", target="...", shape="...")
    def format_my_format(row, spec) -> Example: ...
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .choices import mc_answer, read_choices
from .errors import DataError
from .rows import (KNOWN_COLUMNS, Example, _column, _field, _kind, _optional_column, _question, _response, _text, _uid,
                   invisible)
from .secrets import printable

if TYPE_CHECKING:
    from .config import DatasetSpec

Formatter = Callable[[dict[str, Any], "DatasetSpec"], Example]


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    handler: Formatter  # one row -> its Example, or a DataError naming the field
    columns: str  # the columns a row has (docs)
    target: str  # what the model learns from a row (docs)
    shape: str  # a row's JSON shape, shown when a row does not have it
    placeholders: tuple[str, ...] | None  # what a prompt_template may use; None: the format takes no template
    required: dict[str, str]  # placeholder -> what it brings, which a prompt_template of this format must hold
    fields: tuple[tuple[str, ...], ...] = ()  # the fields ``columns:`` may map, each with its other names


DATASET_FORMATS: dict[str, DatasetFormat] = {}
FORMATS: dict[str, Formatter] = {}  # name -> handler, the view format_rows dispatches on
FORMAT_SHAPES: dict[str, str] = {}


def dataset_format(name: str, *, columns: str, target: str, shape: str, placeholders: tuple[str, ...] | None,
                   required: dict[str, str] | None = None,
                   fields: tuple[tuple[str, ...], ...] = ()) -> Callable[[Formatter], Formatter]:
    """Registers a row format under ``name``: the config accepts it, format_rows uses it, the docs list it.
    ``required``: the placeholders a prompt_template must hold, each with what it brings (default: {question}).
    ``fields``: the names a row's fields are read under, one tuple per field (its names in the order tried): the
    keys ``columns:`` may map."""
    needed = required if required is not None else {"question": "the question"} if placeholders else {}

    def add(handler: Formatter) -> Formatter:
        if name in DATASET_FORMATS:
            raise ValueError(f"dataset format {name!r} is registered twice")
        DATASET_FORMATS[name] = DatasetFormat(name, handler, columns, target, shape, placeholders, needed, fields)
        KNOWN_COLUMNS.update(column for names in fields for column in names)
        FORMATS[name] = handler
        FORMAT_SHAPES[name] = shape
        return handler

    return add


@dataclass(frozen=True)
class BenchmarkKind:
    name: str
    reads: str  # the dataset format its items are read in
    scores: str  # how an answer is scored (docs)
    source: str  # where its items come from (docs)


BENCHMARK_KINDS: dict[str, BenchmarkKind] = {kind.name: kind for kind in (
    BenchmarkKind("pubmedqa", "pubmedqa", "the yes/no/maybe label (likelihood of each, or parsed from a reply)",
                  "default: the official 500-question test split shipped in data/pubmedqa"),
    BenchmarkKind("multiple_choice", "multiple_choice", "the option letter (likelihood of each, or parsed from a "
                  "reply)", "a `source` (hub id or local file) in the multiple_choice row shape"),
    BenchmarkKind("cot", "medical_o1", "generated: the reasoning format, its length and ROUGE-L against the "
                  "reference answer", "a `source` of medical-o1 rows (`cot_style` as trained)"),
)}


# ---------------------------------------------------------------- the SFT formats


PUBMEDQA_PROMPT = (
    "Answer the biomedical research question using the abstract below. Start with yes, no or "
    "maybe.\n\nAbstract:\n{context}\n\nQuestion: {question}"
)


@dataset_format(
    "pubmedqa", placeholders=("question", "context"),
    fields=(("question", "QUESTION"), ("context", "CONTEXTS"), ("final_decision",), ("long_answer", "LONG_ANSWER")),
    columns="question, context (or PubMedQA's original QUESTION/CONTEXTS layout), final_decision, long_answer",
    target="`yes`/`no`/`maybe`, then the long answer (`long_answer: false` for the label alone)",
    shape='{"pubid", "question", "context": {"contexts": [...]} or [...], "final_decision", "long_answer"}')
def format_pubmedqa(row: dict[str, Any], spec: DatasetSpec) -> Example:
    q_name, question = _field(row, spec, "question", "QUESTION")
    _question(question, q_name)
    c_name, context = _column(row, spec, "context", "CONTEXTS",
                              content=lambda value: value.get("contexts") if isinstance(value, dict) else value)
    if isinstance(context, dict):
        if "contexts" not in context:
            raise DataError(f"field '{printable(c_name, 60)}' is an object without 'contexts' (the abstract's "
                            "paragraphs).")
        c_name, context = f"{c_name}.contexts", context["contexts"]
    if isinstance(context, str):
        context = [context]
    if not isinstance(context, list):
        raise DataError(f"field '{printable(c_name, 60)}' is {_kind(context)}, expected the abstract's paragraphs "
                        "(a list of texts).")
    paragraphs = [_text(p, f"{c_name}[{i}]") for i, p in enumerate(context)]
    l_name, label = _field(row, spec, "final_decision")
    label = label.strip().lower()
    if label not in {"yes", "no", "maybe"}:
        raise DataError(f"field '{printable(l_name, 60)}': {printable(repr(label), 60)} is not yes/no/maybe.")
    response = label
    answer_texts = ((l_name, label),)
    if spec.long_answer:
        la_name, long_answer = _field(row, spec, "long_answer", "LONG_ANSWER")
        response = f"{label}. {_response(long_answer, la_name)}"
        answer_texts += ((la_name, long_answer),)
    return Example(
        prompt="",
        response=response,
        context="\n".join(paragraphs),
        prompt_template=PUBMEDQA_PROMPT.replace("{question}", question.replace("{", "{{").replace("}", "}}")),
        uid=_uid(row.get("pubid"), "pubid"),
        question=question,
        texts=((q_name, question),) + tuple((f"{c_name}[{i}]", p) for i, p in enumerate(paragraphs)),
        answer_texts=answer_texts,
        fields={"question": question, "context": "\n".join(paragraphs)},
    )


# The headings and tags a reasoning reply is split by (evaluation, GRPO rewards): the format writes them itself.
_SECTION_MARKER = re.compile(r"##[ \t]*(?:Final Response|Thinking)\b|</?(?:think|response)>", re.IGNORECASE)


def _refuse_section_markers(name: str, text: str) -> None:
    """A medical-o1 field holding its own '## Final Response' (or <response> tag): the target would hold two, and
    the evaluation and the GRPO rewards read the first as the answer."""
    marker = _SECTION_MARKER.search(text)
    if marker:
        raise DataError(f"field '{printable(name, 60)}' holds its own {printable(marker.group(), 30)!r}: the format "
                        "writes the reasoning and final-response sections itself, so the target would hold two, and "
                        "the evaluation and the GRPO rewards would read the wrong one as the answer. Remove that "
                        "heading or tag from the field, or leave the row out.")


@dataset_format(
    "medical_o1", placeholders=("question",), fields=(("Question",), ("Complex_CoT",), ("Response",)),
    columns="Question, Complex_CoT, Response",
    target="`## Thinking\\n\\n{CoT}\\n\\n## Final Response\\n\\n{Response}` (`cot_style: huatuo`) or "
           "`<think>...</think>` + `<response>...</response>` (`cot_style: tags`)",
    shape='{"Question", "Complex_CoT", "Response"} (strings)')
def format_medical_o1(row: dict[str, Any], spec: DatasetSpec) -> Example:
    q_name, question = _field(row, spec, "Question")
    _question(question, q_name)
    t_name, thinking = _field(row, spec, "Complex_CoT")
    a_name, answer = _field(row, spec, "Response")
    _response(answer, a_name)
    if invisible(thinking):
        raise DataError(f"field '{printable(t_name, 60)}' is {'empty' if not thinking else 'blank'}, expected the reasoning "
                        "that comes before the final response (a medical_o1 target holds both: an empty one would "
                        "teach an empty reasoning section). Fill it in or leave the row out (to train on the responses alone, use "
                        "format: instruction with columns: {instruction: Question, output: Response}).")
    for name, text in ((t_name, thinking), (a_name, answer)):
        _refuse_section_markers(name, text)
    if spec.cot_style == "tags":
        response = f"<think>\n{thinking}\n</think>\n<response>\n{answer}\n</response>"
    else:
        response = f"## Thinking\n\n{thinking}\n\n## Final Response\n\n{answer}"
    return Example(prompt=question, response=response, texts=((q_name, question),),
                   answer_texts=((t_name, thinking), (a_name, answer)), fields={"question": question})


@dataset_format(
    "multiple_choice", placeholders=("question", "options"),
    required={"question": "the question", "options": "the lettered options"},
    fields=(("question",), ("options",), ("answer_idx",)),
    columns="question, options {A..E} (or a list; keys a..e or 1..5 are read as A..E), answer_idx; or one column "
            "per option (CSV too; names in any case): A, B, C, D with answer_idx, or MedMCQA's hub layout opa, opb, "
            "opc, opd with cop (0-3)",
    target="`B. <option text>`; the prompt lists the options as `A. ...` lines",
    shape='{"question", "options": {"A": ..., "B": ...} or [...], "answer_idx": "A"}')
def format_multiple_choice(row: dict[str, Any], spec: DatasetSpec) -> Example:
    q_name, question = _field(row, spec, "question")
    _question(question, q_name)
    choices = read_choices(row, spec)
    options = choices.texts
    a_name, answer = mc_answer(row, spec, choices)
    if answer not in options:
        raise DataError(f"{printable(a_name, 60)} {printable(repr(answer), 40)} is not one of the options "
                        f"{printable(sorted(options), 200)}.")
    _refuse_contradicting_answer(row, a_name, answer, options)
    lines = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    prompt = f"{question}\n\n{lines}\n\nAnswer with the letter of the correct option."
    uid = row.get("realidx", row.get("id"))
    return Example(prompt=prompt, response=f"{answer}. {options[answer]}", question=question,
                   uid=_uid(uid, "realidx" if "realidx" in row else "id"),
                   texts=((q_name, question),) + tuple((f"options.{k}", v) for k, v in options.items())
                   + tuple((f"options key {k!r}", k) for k in options),  # a key is printed in the prompt too
                   fields={"question": question, "options": lines})


def _refuse_contradicting_answer(row: dict[str, Any], a_name: str, answer: str, options: dict[str, str]) -> None:
    """MedQA's layout carries the right option twice: answer_idx (its letter) and answer (its text). Where the
    answer column names another option, the row contradicts itself: it would be trained on (or scored by) one of
    them without a word."""
    text = row.get("answer")
    if a_name == "answer" or not isinstance(text, str) or not text.strip():
        return
    folded = " ".join(text.split()).casefold()
    named = [letter for letter, option in options.items() if " ".join(str(option).split()).casefold() == folded]
    if not named and folded.upper() in options:
        named = [folded.upper()]  # the answer column holding a letter
    if named and answer not in named:
        other = named[0]
        raise DataError(f"{printable(a_name, 60)} is {answer!r} ({printable(options[answer], 80)}) but the 'answer' "
                        f"column names option {other} ({printable(options[other], 80)}): the row contradicts itself. "
                        f"Correct one of them, or leave the row out.")


@dataset_format(
    "instruction", placeholders=("question", "context"),
    fields=(("instruction", "question"), ("input",), ("output", "answer", "response")),
    columns="instruction (or question), optional input, output (or answer)",
    target="the output",
    shape='{"instruction" or "question", optional "input", "output" or "answer"}')
def format_instruction(row: dict[str, Any], spec: DatasetSpec) -> Example:
    i_name, instruction = _field(row, spec, "instruction", "question")
    _question(instruction, i_name)
    x_name, extra = _optional_column(row, spec, "input")
    texts = ((i_name, instruction),)
    if extra is not None:
        extra = _text(extra, x_name)
        texts += ((x_name, extra),)
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    o_name, output = _field(row, spec, "output", "answer", "response")
    return Example(prompt=prompt, response=_response(output, o_name), question=instruction, texts=texts,
                   answer_texts=((o_name, output),), fields={"question": instruction, "context": extra or ""})


CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant",
              "human": "user", "gpt": "assistant"}  # ShareGPT's {"from": "human", "value": ...} too


REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")  # DeepSeek-R1 / Qwen3, gpt-oss, others' exports


def _reasoning(message: dict[str, Any], role: str, where: str, field: str) -> str | None:
    """The reasoning an assistant message carries beside its content (DeepSeek-R1 / Qwen3's ``reasoning_content``,
    or ``thinking`` / ``reasoning``), or None when it carries none (absent, null or empty). Refused on another
    speaker's turn, or given under two keys."""
    keys = [key for key in REASONING_KEYS if message.get(key) not in (None, "")]
    if not keys:
        return None
    if len(keys) > 1:
        raise DataError(f"{where} has both '{keys[0]}' and '{keys[1]}': which one holds its reasoning is not the kit's "
                        "to guess. Keep one of them.")
    if role != "assistant":
        raise DataError(f"{where} is a {role} turn with '{keys[0]}': only an assistant's reply carries reasoning, "
                        "which the kit trains as its <think> section. Move it into the content, or drop the field.")
    return _text(message[keys[0]], f"{field}.{keys[0]}")


def _with_reasoning(content: str, reasoning: str | None, where: str) -> str:
    """An assistant reply with its reasoning as the think section before it, as DeepSeek-R1 and Qwen3 write it
    (their chat templates read it back into reasoning_content)."""
    if reasoning is None:
        return content
    if _THINK_TAG.search(content):
        raise DataError(f"{where} has reasoning beside a content that holds its own <think> section: the target would "
                        "hold two. Keep the reasoning in one place (the content's <think> section, or the field).")
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{content}"


_THINK_TAG = re.compile(r"</?think>", re.IGNORECASE)


def _chat_turn(message: Any, i: int, name: str) -> tuple[str, str, str]:
    """(role, text as trained, content alone) of turn ``i`` of a chat row: role/content or ShareGPT's from/value,
    an assistant's reasoning (_reasoning) put before its content."""
    where = f"field '{printable(name, 60)}' turn {i + 1}"
    if not isinstance(message, dict):
        raise DataError(f"{where} is {_kind(message)}, expected {{\"role\": ..., \"content\": ...}}.")
    role_key = "role" if "role" in message else "from" if "from" in message else None
    content_key = "content" if "content" in message else "value" if "value" in message else None
    if role_key is None or content_key is None:
        missing = "role" if role_key is None else "content"
        raise DataError(f"{where} has no '{missing}'; its keys are {printable(sorted(map(str, message)), 120)}.")
    role = message[role_key]
    if not isinstance(role, str) or role.strip().lower() not in CHAT_ROLES:
        raise DataError(f"{where} has role {printable(repr(role), 40)}; expected system, user or assistant.")
    role = CHAT_ROLES[role.strip().lower()]
    content = _text(message[content_key], f"{name}[{i + 1}].content")
    return role, _with_reasoning(content, _reasoning(message, role, where, f"{name}[{i + 1}]"), where), content


def _chat_as_text_advice(spec: DatasetSpec) -> str:
    """What to do about a conversation stored as one text: a CSV cannot hold a list; JSON and Parquet can."""
    if str(spec.source).lower().endswith((".csv", ".tsv")):
        return " A CSV cell holds text only: save conversations as JSONL or Parquet."
    return (" Store each conversation as a list of turns, not as one text: "
            "\"messages\": [{\"role\": \"user\", \"content\": \"...\"}, {\"role\": \"assistant\", \"content\": \"...\"}].")


@dataset_format(
    "chat", placeholders=None, fields=(("messages", "conversations"),),
    columns="messages (role/content; a system turn of its own is kept, else the dataset's system prompt), ending "
            "with an assistant turn; an assistant turn's `reasoning_content` (or `thinking`) is trained as its "
            "`<think>` section",
    target="every assistant turn, each in its place in the conversation (all other tokens masked; a template that "
           "rewrites earlier replies, as reasoning models' do, learns the last one and counts it in data_stats)",
    shape='{"messages": [{"role": "user", "content": ...}, ..., {"role": "assistant", "content": ...}]}')
def format_chat(row: dict[str, Any], spec: DatasetSpec) -> Example:
    name, messages = _column(row, spec, "messages", "conversations")
    if not isinstance(messages, list):
        text = _chat_as_text_advice(spec) if isinstance(messages, str) else ""
        raise DataError(f"field '{printable(name, 60)}' is {_kind(messages)}, expected a list of "
                        "{\"role\": ..., \"content\": ...} turns." + text)
    read = [_chat_turn(message, i, name) for i, message in enumerate(messages)]
    for i, (role, _, content) in enumerate(read):  # blank: a reply to no question, or an empty reply
        if role == "user":
            _question(content, f"{name}[{i + 1}].content")
        elif role == "assistant":
            _response(content, f"{name}[{i + 1}].content")
    turns = [(role, text) for role, text, _ in read]
    if not turns or turns[-1][0] != "assistant":
        raise DataError("each 'messages' list must end with an assistant turn (the response to learn).")
    if not any(role == "user" for role, _ in turns[:-1]):
        raise DataError(f"field '{printable(name, 60)}' has no user turn before its last assistant turn.")
    history = "\n\n".join(content for role, content in turns[:-1] if role != "system")
    last_user = next(content for role, content in reversed(turns) if role == "user")
    texts = tuple((f"{name}[{i + 1}] ({role})", content) for i, (role, content) in enumerate(turns))
    users = [(field, content) for (field, content), (role, _) in zip(texts[:-1], turns) if role == "user"]
    joins = (("user turns (joined)", "\n\n".join(content for _, content in users)),) \
        if 1 < len(users) < len(turns) - 1 else ()  # a question split over user turns with answers between
    return Example(prompt=history, response=turns[-1][1], question=last_user, texts=texts[:-1],
                   answer_texts=texts[-1:], joins=joins, turns=tuple(turns))


def columns_problem(fmt: str, columns: dict[str, str]) -> str | None:
    """Why a dataset's ``columns:`` mapping cannot be right for format ``fmt`` (a key the format does not read,
    two fields read from one column), else None."""
    import difflib

    fields = DATASET_FORMATS[fmt].fields
    known = [name for names in fields for name in names]
    if not known:
        return None
    for key in columns:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            return (f"unknown key {printable(repr(key), 60)}: the {fmt} format reads {', '.join(known)}. {hint}"
                    "Map those names to your file's columns, e.g. columns: {" + known[0] + ": your_column}")
    read_from = [(names[0], {columns.get(n, n) for n in names}) for names in fields]
    for i, (first, sources) in enumerate(read_from):
        for second, others in read_from[i + 1:]:
            shared = sources & others
            if shared:
                return (f"'{first}' and '{second}' would both be read from the column "
                        f"{printable(repr(sorted(shared)[0]), 60)}, so both would hold the same text (trained on, "
                        "the model learns to echo it). Map each to its own column")
    return None


# ---------------------------------------------------------------- docs


def markdown_tables() -> str:
    """The tables of docs/formats.md, from the registries."""
    lines = ["## Dataset formats (`data.datasets[].format`)", "",
             "| format | columns | target the model learns | `prompt_template` placeholders |", "|---|---|---|---|"]
    for f in DATASET_FORMATS.values():
        names = "none: the prompt is the row's own" if not f.placeholders else ", ".join(
            f"`{{{n}}}`" for n in f.placeholders)
        lines.append(f"| `{f.name}` | {f.columns} | {f.target} | {names} |")
    lines += ["", "## Benchmark kinds (`eval.benchmarks[].kind`)", "",
              "| kind | rows read as | items | scored by |", "|---|---|---|---|"]
    lines += [f"| `{k.name}` | `{k.reads}` | {k.source} | {k.scores} |" for k in BENCHMARK_KINDS.values()]
    return "\n".join(lines) + "\n"


from . import rl_formats  # noqa: E402,F401  (registers the prompt_answer and preference formats)

if __name__ == "__main__":  # run as a script, this file is a second copy: the registered one holds every format
    from medqlora.formats import markdown_tables as registered_tables

    print(registered_tables(), end="")

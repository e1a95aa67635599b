"""Datasets -> chat-formatted, tokenized training examples with the prompt masked out of the loss.

Pipeline: ``load_rows`` (hub or local file) -> a format turns each row into an ``Example``
(user prompt + target response) -> ``tokenize_examples`` renders it with the model's own chat
template and masks every prompt token to -100.

The data boundary: every row is checked as it is formatted (``format_rows``). A value that is not
text where text is expected (a number, list, object, boolean or null), a chat of the wrong shape, a
field longer than ``MAX_FIELD_CHARS``, an empty or corrupt file: each is refused with the file, the
row and the field (``data/my.jsonl row 17: field 'output' is a number (42), expected text.``).
Values from the data are shown through ``secrets.printable`` (control characters escaped).

Modules: ``sources`` (rows from the hub or local files), ``source_sets`` (the datasets taken together), ``examples`` (rows -> checked, templated, held-out,
guarded examples), ``tokenize`` (examples -> masked token ids, ``prepare``). The row formats themselves live in
``medqlora.formats`` (their registry) and ``medqlora.rows`` (one row's checks); every name is importable from
here as before.
"""

from __future__ import annotations

from .. import leakage  # noqa: F401  (medqlora.data.leakage, as callers use it)
from ..config import KIT_ROOT, DataSection, DatasetSpec  # noqa: F401
from ..errors import DataError  # noqa: F401
from ..formats import (  # noqa: F401
    CHAT_ROLES, DATASET_FORMATS, FORMAT_SHAPES, FORMATS, PUBMEDQA_PROMPT, Formatter, dataset_format, format_chat,
    format_instruction, format_medical_o1, format_multiple_choice, format_pubmedqa)
from ..choices import mc_options, read_choices  # noqa: F401
from ..rows import MAX_FIELD_CHARS, Example, pmid_of  # noqa: F401
from .sources import (  # noqa: F401
    LOCAL_SUFFIXES, Rows, looks_local, resolve_local, load_rows, fingerprint, with_anchored_sources)
from .examples import (  # noqa: F401
    PUBMEDQA_TEST_FILE, PUBMEDQA_DIR, pubmedqa_test_ids, pubmedqa_folds, format_rows, apply_template,
    system_prompt_of, dataset_of_format, query_prompt, build_examples, Collected, collect, guard_items, guard_warnings,
    evaluation_items, padding_report)
from .source_sets import refuse_output_inside_data, refuse_repeated_datasets  # noqa: F401
from .tokenize import (  # noqa: F401
    IGNORE_INDEX, PreparedData, render_prompt, turn_end, chat_turn_messages, tokenize_example, length_stats,
    tokenize_collected, refuse_no_training_examples, prepare, count_rows, val_ratio_rows)

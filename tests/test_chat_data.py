"""The chat format keeps roles and system turns and learns every assistant turn, every other token masked:
checked token by token on SmolLM2's real tokenizer and chat template."""

from __future__ import annotations

import copy

from medqlora.backends import CHAT_TEMPLATES
from medqlora.config import DatasetSpec
from medqlora.data import IGNORE_INDEX, format_chat, tokenize_example, turn_end

ROW = {"messages": [
    {"role": "system", "content": "You are a paediatric nurse."},
    {"role": "user", "content": "My child has a fever of 38.5."},
    {"role": "assistant", "content": "How old is your child?"},
    {"role": "user", "content": "Two years old."},
    {"role": "assistant", "content": "Give paracetamol by weight and watch for warning signs."},
]}
SPEC = DatasetSpec(source="x.jsonl", format="chat")


def _learned_spans(ids, labels, tokenizer):
    spans, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                spans.append(tokenizer.decode(current))
                current = []
        else:
            assert label == token
            current.append(token)
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_every_assistant_turn_is_learned_and_the_rows_own_system_turn_kept(smol_tokenizer):
    example = format_chat(ROW, SPEC)
    end = turn_end(smol_tokenizer)
    fitted, outcome = tokenize_example(example, smol_tokenizer, "The dataset's system prompt.", 4096, "truncate", end)
    assert outcome == "fits"
    whole = smol_tokenizer.apply_chat_template(ROW["messages"], tokenize=False)
    assert fitted["input_ids"] == smol_tokenizer(whole, add_special_tokens=False)["input_ids"]  # token by token
    assert _learned_spans(fitted["input_ids"], fitted["labels"], smol_tokenizer) == [
        "How old is your child?<|im_end|>\n", "Give paracetamol by weight and watch for warning signs.<|im_end|>\n"]
    text = smol_tokenizer.decode(fitted["input_ids"])
    assert "You are a paediatric nurse." in text and "The dataset's system prompt." not in text


def test_a_chat_without_a_system_turn_gets_the_datasets_system_prompt(smol_tokenizer):
    row = {"messages": ROW["messages"][1:]}
    fitted, _ = tokenize_example(format_chat(row, SPEC), smol_tokenizer, "Be brief.", 4096, "truncate",
                                 turn_end(smol_tokenizer))
    expected = smol_tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, *row["messages"]],
                                                  tokenize=False)
    assert fitted["input_ids"] == smol_tokenizer(expected, add_special_tokens=False)["input_ids"]


def test_a_template_without_a_system_role_gets_it_in_the_first_user_turn(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATES["mistral"]
    fitted, outcome = tokenize_example(format_chat(ROW, SPEC), tokenizer, None, 4096, "truncate", turn_end(tokenizer))
    text = tokenizer.decode(fitted["input_ids"])
    assert outcome == "fits" and "[INST] You are a paediatric nurse.\n\nMy child has a fever of 38.5. [/INST]" in text
    assert len(_learned_spans(fitted["input_ids"], fitted["labels"], tokenizer)) == 2


def test_a_template_that_rewrites_earlier_replies_learns_the_last_one(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)  # like reasoning models' templates, which drop earlier thoughts
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}<|im_start|>assistant\n"
        "[earlier]<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fitted, outcome = tokenize_example(format_chat(ROW, SPEC), tokenizer, None, 4096, "truncate", turn_end(tokenizer))
    assert outcome == "last_turn_only"
    assert _learned_spans(fitted["input_ids"], fitted["labels"], tokenizer) == [
        "Give paracetamol by weight and watch for warning signs.<|im_end|>\n"]
    assert "[earlier]" in tokenizer.decode(fitted["input_ids"])


def test_a_long_conversation_is_cut_or_dropped(smol_tokenizer):
    example = format_chat(ROW, SPEC)
    end = turn_end(smol_tokenizer)
    full, _ = tokenize_example(example, smol_tokenizer, None, 4096, "truncate", end)
    cut, outcome = tokenize_example(example, smol_tokenizer, None, len(full["input_ids"]) - 3, "truncate", end)
    assert outcome == "response_truncated" and cut["input_ids"] == full["input_ids"][:-3]
    assert tokenize_example(example, smol_tokenizer, None, len(full["input_ids"]) - 3, "drop", end) == (None, "dropped")
    first_reply_starts = next(i for i, label in enumerate(full["labels"]) if label != IGNORE_INDEX)
    assert tokenize_example(example, smol_tokenizer, None, first_reply_starts, "truncate", end) == (None, "dropped")

import json

import pytest

from medqlora.config import DataSection, DatasetSpec, load_config
from medqlora.data import (
    FORMATS,
    IGNORE_INDEX,
    Example,
    build_examples,
    load_rows,
    prepare,
    pubmedqa_test_ids,
    tokenize_example,
    turn_end,
)
from medqlora.errors import DataError

from .conftest import SHARED_DATA


def spec(**kw) -> DatasetSpec:
    return DatasetSpec(**{"source": "x.jsonl", "format": "instruction", **kw})


def test_shipped_pubmedqa_is_the_official_data():
    rows = load_rows(spec(source="data/pubmedqa/ori_pqal.json", format="pubmedqa"))
    assert len(rows) == 1000
    labels = [r["final_decision"] for r in rows]
    assert (labels.count("yes"), labels.count("no"), labels.count("maybe")) == (552, 338, 110)
    test = json.loads(open("data/pubmedqa/test_ground_truth.json").read())
    assert pubmedqa_test_ids() == set(test) and len(test) == 500
    test_labels = list(test.values())
    assert (test_labels.count("yes"), test_labels.count("no"), test_labels.count("maybe")) == (276, 169, 55)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs the shared medical data checkout")
def test_shipped_pubmedqa_test_split_equals_the_shared_copy():
    shipped = json.loads(open("data/pubmedqa/test_ground_truth.json").read())
    assert shipped == json.loads((SHARED_DATA / "pubmedqa" / "test_ground_truth.json").read_text())


@pytest.mark.slow
def test_pubmedqa_official_test_questions_are_never_trained_on(smol_tokenizer):
    data = DataSection(datasets=[spec(source="data/pubmedqa/ori_pqal.json", format="pubmedqa")], val_ratio=0.1)
    prepared = prepare(data, smol_tokenizer, max_len=512, seed=1)
    used = {r["uid"] for r in prepared.train + prepared.validation}
    assert len(used) == 500
    assert not used & pubmedqa_test_ids()
    assert prepared.stats["0:data/pubmedqa/ori_pqal.json"]["held_out_pubmedqa_test"] == 500
    assert len(prepared.validation) == 50


def test_pubmedqa_rows_in_hub_layout_are_held_out_too(tmp_path):
    test_pmid = sorted(pubmedqa_test_ids())[0]
    rows = [
        {"pubid": int(pmid), "question": "Q?", "context": {"contexts": ["a", "b"]}, "long_answer": "L.",
         "final_decision": "yes"}
        for pmid in (test_pmid, "1")
    ]
    examples, info = build_examples(spec(format="pubmedqa"), rows, seed=0)
    assert info["held_out_pubmedqa_test"] == 1
    assert [e.uid for e in examples] == ["1"]
    assert examples[0].response == "yes. L."
    assert examples[0].prompt_template.format(context=examples[0].context).endswith("Abstract:\na\nb\n\nQuestion: Q?")


@pytest.mark.parametrize("style, expected", [
    ("huatuo", "## Thinking\n\nWhy.\n\n## Final Response\n\nBecause."),
    ("tags", "<think>\nWhy.\n</think>\n<response>\nBecause.\n</response>"),
])
def test_medical_o1_formats(style, expected):
    row = {"Question": "Q?", "Complex_CoT": "Why.", "Response": "Because."}
    example = FORMATS["medical_o1"](row, spec(format="medical_o1", cot_style=style))
    assert (example.prompt, example.response) == ("Q?", expected)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs the shared medical data checkout")
def test_medical_o1_real_rows_load():
    rows = load_rows(spec(source=str(SHARED_DATA / "medical_o1" / "demo_data.json"), format="medical_o1"))
    examples, _ = build_examples(spec(format="medical_o1"), rows, seed=0)
    assert len(examples) == 198
    assert all(e.response.startswith("## Thinking\n\n") and "## Final Response" in e.response for e in examples)


def test_multiple_choice_lists_options_and_targets_the_letter():
    row = {"question": "Which?", "options": {"A": "one", "B": "two"}, "answer_idx": "B"}
    example = FORMATS["multiple_choice"](row, spec(format="multiple_choice"))
    assert "A. one\nB. two" in example.prompt
    assert example.response == "B. two"


def test_instruction_columns_can_be_mapped():
    row = {"q": "What?", "a": "That."}
    example = FORMATS["instruction"](row, spec(columns={"instruction": "q", "output": "a"}))
    assert (example.prompt, example.response) == ("What?", "That.")


def test_missing_column_names_the_columns_and_the_fix():
    with pytest.raises(DataError) as err:
        FORMATS["medical_o1"]({"Question": "Q", "Response": "R"}, spec(format="medical_o1"))
    message = str(err.value)
    assert "no column 'Complex_CoT'" in message and "['Question', 'Response']" in message and "columns:" in message


def test_local_jsonl_csv_and_missing_file(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n')
    csv = tmp_path / "d.csv"
    csv.write_text("question,answer\na,b\n")
    assert len(load_rows(spec(source=str(jsonl)))) == 2
    assert load_rows(spec(source=str(csv))) == [{"question": "a", "answer": "b"}]
    with pytest.raises(DataError, match="not found"):
        load_rows(spec(source=str(tmp_path / "nope.jsonl")))


def test_turn_end_of_the_chatml_template(smol_tokenizer):
    assert turn_end(smol_tokenizer) == "<|im_end|>\n"


def test_only_the_response_is_trained_on(smol_tokenizer):
    example = Example(prompt="What is HbA1c?", response="Glycated haemoglobin.")
    out, outcome = tokenize_example(example, smol_tokenizer, "Be careful.", 512, "truncate", "<|im_end|>\n")
    ids, labels = out["input_ids"], out["labels"]
    n_prompt = labels.index(next(x for x in labels if x != IGNORE_INDEX))
    assert outcome == "fits"
    assert all(x == IGNORE_INDEX for x in labels[:n_prompt])
    assert labels[n_prompt:] == ids[n_prompt:]
    assert smol_tokenizer.decode(ids[:n_prompt]).endswith("<|im_start|>assistant\n")
    assert "What is HbA1c?" in smol_tokenizer.decode(ids[:n_prompt])
    assert smol_tokenizer.decode(ids[n_prompt:]) == "Glycated haemoglobin.<|im_end|>\n"


def test_too_long_shortens_the_abstract_never_the_answer(smol_tokenizer):
    example = Example(prompt="", response="yes. The answer.", context="word " * 400,
                      prompt_template="Abstract: {context}\nQuestion: Q?")
    out, outcome = tokenize_example(example, smol_tokenizer, None, 128, "truncate", "<|im_end|>\n")
    assert outcome == "context_truncated"
    assert len(out["input_ids"]) <= 128
    response = [t for t in out["labels"] if t != IGNORE_INDEX]
    assert smol_tokenizer.decode(response) == "yes. The answer.<|im_end|>\n"
    assert "Question: Q?" in smol_tokenizer.decode(out["input_ids"])
    dropped, outcome = tokenize_example(example, smol_tokenizer, None, 128, "drop", "<|im_end|>\n")
    assert (dropped, outcome) == (None, "dropped")


def test_answers_cut_to_fit_are_counted_and_warned_about(tmp_path, smol_tokenizer):
    import logging

    from medqlora.data import tokenize_collected

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    own = tmp_path / "long.jsonl"
    own.write_text(json.dumps({"instruction": "Explain.", "output": "word " * 300}) + "\n"
                   + json.dumps({"instruction": "Short?", "output": "Yes."}) * 1 + "\n")
    data = DataSection(datasets=[spec(source=str(own))], too_long="truncate", val_ratio=0)
    keep, log = Keep(), logging.getLogger("medqlora")
    log.addHandler(keep)
    try:
        prepared = tokenize_collected(collect(data, seed=0), data, smol_tokenizer, 128, seed=0)
    finally:
        log.removeHandler(keep)
    total = prepared.stats["total"]
    assert total["answers_truncated"] == 1
    [warning] = total["warnings"]
    assert warning.startswith("1 of 2 answers were cut to fit model.max_seq_length=128")
    assert "Raise model.max_seq_length, or set data.too_long: drop" in warning
    assert keep.messages == [warning]  # run.log gets it too
    roomy = tokenize_collected(collect(data, seed=0), data, smol_tokenizer, 1024, seed=0)
    assert roomy.stats["total"]["answers_truncated"] == 0 and roomy.stats["total"]["warnings"] == []


def test_examples_whose_prompt_alone_is_too_long_are_counted_and_warned_about(tmp_path, smol_tokenizer):
    import logging

    from medqlora.data import tokenize_collected

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    own = tmp_path / "longprompt.jsonl"
    rows = [{"instruction": f"Short question {i}?", "output": "Yes."} for i in range(4)]
    rows += [{"instruction": "word " * 300 + f"{i}?", "output": "No."} for i in range(2)]
    own.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataSection(datasets=[spec(source=str(own))], too_long="truncate", val_ratio=0)
    keep, log = Keep(), logging.getLogger("medqlora")
    log.addHandler(keep)
    try:
        prepared = tokenize_collected(collect(data, seed=0), data, smol_tokenizer, 128, seed=0)
    finally:
        log.removeHandler(keep)
    total = prepared.stats["total"]
    assert total["train"] == 4 and total["prompts_too_long"] == 2
    [warning] = total["warnings"]
    assert warning.startswith("2 of 6 examples were left out: the prompt alone")
    assert "model.max_seq_length=128" in warning and "Raise model.max_seq_length" in warning
    assert keep.messages == [warning]
    data_drop = DataSection(datasets=[spec(source=str(own))], too_long="drop", val_ratio=0)
    chosen = tokenize_collected(collect(data_drop, seed=0), data_drop, smol_tokenizer, 128, seed=0)
    assert chosen.stats["total"]["warnings"] == []  # data.too_long: drop asked for it


def test_length_statistics_are_recorded(smol_tokenizer):
    cfg = load_config(None, ["data.datasets.0.max_samples=40"])
    prepared = prepare(cfg.data, smol_tokenizer, max_len=256, seed=0)
    stats = prepared.stats["0:data/pubmedqa/ori_pqal.json"]
    lengths = stats["tokens_before_fitting"]
    assert lengths["count"] == 40 and lengths["min"] <= lengths["median"] <= lengths["p95"] <= lengths["max"]
    assert lengths["over_max_seq_length"] == stats["fitting"].get("context_truncated", 0)
    assert all(len(r["input_ids"]) <= 256 for r in prepared.train)
    assert prepared.fingerprints["0:data/pubmedqa/ori_pqal.json"].startswith("sha256:")


# ---------------------------------------------------------------- leakage guard, mixing, folds, bad input

from medqlora.data import collect, padding_report  # noqa: E402


def pubmedqa_test_question() -> tuple[str, str]:
    rows = json.loads(open("data/pubmedqa/ori_pqal.json").read())
    pmid = sorted(pubmedqa_test_ids())[0]
    return pmid, rows[pmid]["QUESTION"]


def test_guard_refuses_a_copied_evaluation_question_and_lists_it(tmp_path):
    pmid, question = pubmedqa_test_question()
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"question": "Is aspirin useful?", "answer": "Sometimes."}) + "\n"
                   + json.dumps({"question": "  " + question.upper() + "!! ", "answer": "yes"}) + "\n")
    data = DataSection(datasets=[spec(source=str(own))])
    with pytest.raises(DataError) as err:
        collect(data, seed=0)
    message = str(err.value)
    assert "1 training examples contain evaluation questions (1 exact, 0 near duplicates)" in message
    assert f"row 2 field 'question' contains evaluation 'pubmedqa-test' item {pmid}" in message
    assert "allow_eval_overlap" in message
    allowed = collect(data.model_copy(update={"allow_eval_overlap": True}), seed=0)
    guard = allowed[0].info["leakage_guard"]
    assert (guard["evaluation_items_checked"], guard["overlapping_training_items"]) == (500, 1)
    assert (guard["exact"], guard["near_duplicates"]) == (1, 0)
    assert guard["overlaps"][0]["evaluation_uid"] == pmid and guard["overlaps"][0]["row"] == 2


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs the shared medical data checkout")
def test_guard_checks_the_configured_evaluation_sets_on_real_medmcqa_rows(tmp_path):
    dev = SHARED_DATA / "medmcqa" / "dev_subset.jsonl"
    lines = dev.read_text().splitlines()
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines[:3]) + "\n")
    mc = spec(source=str(train), format="multiple_choice")
    data = DataSection(datasets=[mc], eval_sets=[spec(source=str(dev), format="multiple_choice")])
    with pytest.raises(DataError, match="3 training examples contain evaluation questions"):
        collect(data, seed=0)
    clean = DataSection(datasets=[mc], eval_sets=[])
    [collected] = collect(clean, seed=0)
    assert collected.info["leakage_guard"]["overlapping_training_items"] == 0
    first = collected.examples[0]
    assert first.response[0] in "ABCD" and "\nA. " in first.prompt


def test_weights_set_the_mixing_proportions(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"question": f"a{i}", "answer": "x"}) + "\n" for i in range(40)))
    b.write_text("".join(json.dumps({"question": f"b{i}", "answer": "y"}) + "\n" for i in range(40)))
    data = DataSection(datasets=[spec(source=str(a), max_samples=20), spec(source=str(b), weight=2.5)])
    first, second = collect(data, seed=5)
    assert (first.info["used"], second.info["used"]) == (20, 100)
    assert len({e.prompt for e in second.examples}) == 40  # every example at least twice, half a third time
    assert [e.prompt for e in collect(data, seed=5)[1].examples] == [e.prompt for e in second.examples]


@pytest.mark.slow
def test_cv_fold_validates_on_the_official_fold(smol_tokenizer):
    folds = json.loads(open("data/pubmedqa/pqal_split_pmids.json").read())["folds"]
    data = DataSection(datasets=[spec(source="data/pubmedqa/ori_pqal.json", format="pubmedqa", cv_fold=3,
                                      long_answer=False)])
    prepared = prepare(data, smol_tokenizer, max_len=512, seed=0)
    assert {r["uid"] for r in prepared.validation} == set(folds[3])
    assert len(prepared.train) == 450 and not {r["uid"] for r in prepared.train} & set(folds[3])


@pytest.mark.parametrize("content, fragment", [
    ('{"question": "a", "answer": "b"}\n{"question": "c", "answer": \n', "bad.jsonl:2: not valid JSON"),
    ("", "is empty"),
    ("\n\n", "has no records"),
    ('["a", "b"]\n', "bad.jsonl:1: expected a JSON object"),
])
def test_malformed_files_name_file_and_line(tmp_path, content, fragment):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(DataError, match=fragment):
        load_rows(spec(source=str(bad)))


def test_unknown_answer_label_names_the_record():
    rows = [{"pubid": "1", "question": "Q", "context": ["c"], "final_decision": "probably", "long_answer": "L"}]
    with pytest.raises(DataError, match=r"x.jsonl row 1: field 'final_decision': 'probably' is not yes/no/maybe"):
        build_examples(spec(format="pubmedqa"), rows, seed=0)


def test_dataset_emptied_by_holding_out_test_questions_is_reported():
    pmid, _ = pubmedqa_test_question()
    rows = [{"pubid": pmid, "question": "Q", "context": ["c"], "final_decision": "yes", "long_answer": "L"}]
    with pytest.raises(DataError, match="no examples left"):
        build_examples(spec(format="pubmedqa"), rows, seed=0)


def test_padding_report_hand_computed():
    report = padding_report([10, 2, 8, 4], micro_batch=2, max_len=12, seed=0)
    # length-grouped batches [10, 8] and [4, 2]: 24 real tokens in 20 + 8 slots
    assert report["length_grouped_batches"] == round(1 - 24 / 28, 4)
    # first-fit decreasing into rows of 12: [10, 2], [8, 4]: no padding
    assert (report["packed_rows"], report["packed_rows_count"]) == (0.0, 2)
    assert report["random_batches"] >= report["length_grouped_batches"]


def test_a_validation_set_can_be_given_explicitly(tmp_path, smol_tokenizer):
    train, held = tmp_path / "t.jsonl", tmp_path / "v.jsonl"
    train.write_text("".join(json.dumps({"question": f"t{i}", "answer": "x"}) + "\n" for i in range(6)))
    held.write_text("".join(json.dumps({"question": f"v{i}", "answer": "y"}) + "\n" for i in range(3)))
    data = DataSection(datasets=[spec(source=str(train)), spec(source=str(held), use_for="validation")])
    prepared = prepare(data, smol_tokenizer, max_len=128, seed=0)
    assert len(prepared.train) == 6 and len(prepared.validation) == 3
    assert {r["source"] for r in prepared.validation} == {f"1:{held}"}


def test_hub_layout_parquet_folder_is_read_file_by_file(tmp_path):
    """The hub's qiaojin/PubMedQA pqa_labeled columns, as a local parquet folder: every file in it is read."""
    import datasets

    test_pmid = sorted(pubmedqa_test_ids())[0]
    rows = [{"pubid": int(p), "question": f"Q{p}?", "context": {"contexts": ["c1", "c2"], "labels": ["A", "B"],
             "meshes": ["m"]}, "long_answer": "L.", "final_decision": d} for p, d in ((test_pmid, "no"), ("42", "maybe"))]
    folder = tmp_path / "pqa_labeled"
    folder.mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "train-00000.parquet"))
    examples, info = build_examples(spec(source=str(folder), format="pubmedqa", split="train"),
                                    load_rows(spec(source=str(folder), format="pubmedqa", split="train")), seed=0)
    assert info == {"rows": 2, "files": ["train-00000.parquet"], "held_out_pubmedqa_test": 1, "used": 1}
    assert examples[0].uid == "42" and examples[0].response == "maybe. L."

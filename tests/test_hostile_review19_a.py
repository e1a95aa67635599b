"""Hostile round 19: run names that are words of --adapter / --resume; evaluation questions with their numbers
spelt out or their words joined."""

from pathlib import Path

import pytest

from medqlora.errors import DataError
from medqlora.leakage import check, find_overlap
from medqlora.leakage_text import normalize, question_hash

from .conftest import assert_one_message, kit_argv, run_cli
from .test_hostile_review11_d import trained  # noqa: F401 (a fixture)
from .test_hostile_review15_e import _evaluation, _train

MACROSOMIA = "Is severe macrosomia manifested at 11-14 weeks of gestation?"  # PubMedQA test question 22348433
VARICES = ("Is non-invasive diagnosis of esophageal varices in patients with compensated hepatic cirrhosis possible by "
           "duplex Doppler ultrasonography?")  # PubMedQA test question 26923375


@pytest.mark.parametrize("name", ["latest", "none", "Latest", "NONE"])
def test_a_run_name_that_is_a_word_of_adapter_is_refused(tiny_model_dir, tmp_path, capsys, name):
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run", **{"output.run_name": name})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "is a word of --adapter, --resume and training.init_adapter")
    assert f"{name}-run" in result.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("word, meaning", [("none", "the base model alone"), ("latest", "the newest run")])
def test_a_folder_named_like_a_word_of_adapter_is_said(tiny_model_dir, tmp_path, capsys, monkeypatch, word, meaning):
    out = tmp_path / "out"
    (out / word).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    result = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "test", "--dry-run", "--adapter", word))
    said = result.out + result.err
    assert f"note: --adapter {word} means {meaning}, not the folder {out / word}" in said
    assert f"--adapter {out / word}" in said


def test_no_note_without_such_a_folder(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "test", "--dry-run",
                                      "--adapter", "none"))
    assert result.code == 0 and "note: --adapter none" not in result.out + result.err


@pytest.mark.parametrize("spelt", ["Is severe macrosomia manifested at eleven to fourteen weeks of gestation?",
                                   "Is severe macrosomia manifested at 11 to 14 weeks of gestation?",
                                   "is severe macrosomia manifested at Eleven-Fourteen weeks of gestation"])
def test_a_question_with_its_numbers_spelt_out_is_an_exact_copy(spelt):
    [overlap] = find_overlap(_train("What is fever?", spelt), _evaluation(MACROSOMIA))
    assert overlap.kind == "exact" and overlap.train.row == 2


def test_numbers_in_words_read_as_digits_where_the_guard_compares():
    assert normalize("twenty-one patients, forty two days, from five to ten") == "21 patients 42 days from 5 10"
    assert normalize("five hundred implants, one hundred and twenty and two") == "500 implants 120 and 2"
    assert normalize("1,000 or one thousand, 12,500 or twelve thousand five hundred") == "1000 or 1000 12500 or 12500"
    assert normalize("one of the following") == "1 of the following"
    assert normalize("I want to go to 5 places") == "i want to go to 5 places"  # 'to' between numbers only


def test_recorded_question_hashes_keep_numbers_as_written():
    """Runs record question hashes (training_items.jsonl): spelling numbers the guard's way must not change them."""
    assert question_hash("at eleven weeks") != question_hash("at 11 weeks")
    assert question_hash("at eleven weeks") == question_hash("AT eleven, weeks")


def test_words_joined_are_one_misspelling_so_a_copy_is_refused():
    copy = VARICES.replace("non-invasive", "noninvasive").replace("esophageal", "oesophageal")
    with pytest.raises(DataError) as err:
        check(_train("What is fever?", copy), _evaluation(VARICES), allow=False)
    assert "with two words misspelt ('noninvasive' for 'non invasive', 'oesophageal' for 'esophageal')" in str(err.value)


def test_a_word_split_in_two_is_one_misspelling():
    split = VARICES.replace("ultrasonography", "ultra sonography").replace("esophageal", "oesophageal")
    [overlap] = find_overlap(_train(split), _evaluation(VARICES))
    assert not overlap.possible
    assert "with two words misspelt ('oesophageal' for 'esophageal', 'ultra sonography' for 'ultrasonography')" in \
        overlap.describe()


def test_the_possible_copy_warning_counts_other_words_only():
    reworded = VARICES.replace("possible", "feasible").replace("esophageal", "oesophageal")
    result = check(_train(reworded), _evaluation(VARICES), allow=False)
    assert result["possible_near_copies"] == 1
    assert "with one or two words replaced by other words, added or left out (besides any misspellings)" in \
        result["warning"]


@pytest.mark.parametrize("flag, value", [("--prompt", "-5mmHg"), ("--adapter", "-x")])
def test_a_value_that_starts_with_a_dash_is_said_with_how_to_give_it(capsys, flag, value):
    with pytest.raises(SystemExit) as stopped:
        run_cli(capsys, ["--mode", "chat", flag, value])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert f"argument {flag}: expected one argument (its value {value} starts with '-', so it reads as a flag)" in err
    assert f"as in '{flag}={value}'" in err or f"as in {flag}={value}" in err


def test_a_flag_without_a_value_keeps_argparse_message(capsys):
    with pytest.raises(SystemExit):
        run_cli(capsys, ["--mode", "train", "--set"])
    err = capsys.readouterr().err
    assert err.rstrip().endswith("argument --set: expected one argument")


@pytest.mark.parametrize("key", ["data.system_prompt", "data.datasets.0.system_prompt",
                                 "data.datasets.0.prompt_template"])
def test_a_credential_in_a_prompt_text_is_refused(tiny_model_dir, tmp_path, capsys, monkeypatch, key):
    secret = "hf_Zq8kLmNoPqRsTuVwXyZaBcDeFgHiJkLmNo"
    monkeypatch.setenv("HF_TOKEN", secret)
    text = f"Question {{question}} Context {{context}} key {secret}" if "template" in key else f"Key {secret} here."
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                                      **{key: text}))
    assert result.code == 2
    assert_one_message(result.err, "holds the value of HF_TOKEN: a prompt is trained into the adapter")
    assert secret not in result.out + result.err
    assert not (tmp_path / "out").exists()


def test_a_run_stopped_at_its_start_by_a_full_disk_leaves_no_folder_that_takes_its_name(tiny_model_dir, tmp_path,
                                                                                        capsys, monkeypatch):
    import errno
    import os

    from medqlora import runs

    def full(self, run):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run / "run.log"))

    out = tmp_path / "out"
    argv = kit_argv(tiny_model_dir, out, "--mode", "train", **{"output.run_name": "full2"})
    with monkeypatch.context() as patched:
        patched.setattr(runs._RunLogHandler, "__init__", full)
        result = run_cli(capsys, argv)
    assert result.code == 2 and "No space left on device" in result.err
    assert not (out / "full2").exists()
    assert run_cli(capsys, [*argv, "--dry-run"]).code == 0  # the name is free again


@pytest.mark.parametrize("value, said", [
    ("all-linear", "'all-linear' (PEFT's shorthand) is not taken: the kit names the layers LoRA wraps. Leave "
                   "lora.target_modules out for the default"),
    ("[all-linear]", "'all-linear' (PEFT's shorthand) is not taken"),
    ("q_proj", "is one name, not a list: write it as a list, lora.target_modules: [q_proj]"),
])
def test_peft_shorthands_for_target_modules_are_said_in_the_kits_words(tiny_model_dir, tmp_path, capsys, value, said):
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                                      **{"lora.target_modules": value}))
    assert result.code == 2
    assert_one_message(result.err, said)


def test_a_target_module_named_twice_is_one_layer():
    from medqlora.config.sections import LoraSection

    assert LoraSection(target_modules=["q_proj", "v_proj", "q_proj"]).target_modules == ["q_proj", "v_proj"]


def test_resume_with_another_config_names_the_setting_inside_a_list(tiny_model_dir, tmp_path, capsys,
                                                                    trained):  # noqa: F811
    """Both values of data.datasets were cut to the same 50 characters, so the difference (max_samples) was not
    shown."""
    import shutil

    from medqlora.config import load_config
    from medqlora.run_files import Files

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / Files.CHECKPOINTS / "checkpoint-1").mkdir(parents=True)
    (run / Files.CHECKPOINTS / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": 1}')
    saved = load_config(run / Files.CONFIG)
    datasets = [saved.data.datasets[0].model_copy(update={"max_samples": 64})]
    other = tmp_path / "other.yaml"
    other.write_text(saved.model_copy(update={"data": saved.data.model_copy(update={"datasets": datasets})}).to_yaml())
    result = run_cli(capsys, ["--mode", "train", "--resume", str(run), "--dry-run", "--config", str(other)])
    assert result.code == 2
    assert_one_message(result.err, "differs from it: data.datasets.0.max_samples: 64 (the run's: 16)")


@pytest.mark.parametrize("written, warned", [("data/pubmedqa/ori_pqal.json", True),
                                             ("./data/pubmedqa/ori_pqal.json", False)])
def test_a_relative_source_naming_two_files_says_which_is_read(tiny_model_dir, tmp_path, capsys, monkeypatch,
                                                               written, warned):
    """A run's config.yaml names the kit's shipped files relative (portable); read from a folder that holds another
    file of that name, the other file was read without a word."""
    import json

    from medqlora.data import sources

    monkeypatch.setattr(sources, "_NOTED", set())
    shipped = json.loads((sources.KIT_ROOT / "data" / "pubmedqa" / "ori_pqal.json").read_text())
    mine = tmp_path / "data" / "pubmedqa" / "ori_pqal.json"
    mine.parent.mkdir(parents=True)
    mine.write_text(json.dumps({pmid: shipped[pmid] for pmid in list(shipped)[:20]}))
    monkeypatch.chdir(tmp_path)
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "train", "--dry-run",
                                      **{"data.datasets.0.source": written}))
    assert result.code == 0, result.err[-2000:]
    said = result.out + result.err
    assert (f"names a file in the working folder ({mine}) and another one shipped with the kit" in said) == warned
    assert said.count("shipped with the kit") == (1 if warned else 0)
    assert json.loads(result.out)["training_examples"] <= 20


def test_a_folder_of_gguf_files_as_model_name_names_the_file_to_give(tmp_path, capsys):
    folder = tmp_path / "smollm2-gguf"
    folder.mkdir()
    (folder / "model.Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(60))
    (folder / "README.md").write_text("a GGUF repository")
    result = run_cli(capsys, ["--mode", "train", "--dry-run", "--set", f"model.name={folder}"])
    assert result.code == 2
    assert_one_message(result.err, f"holds no config.json: not a transformers checkpoint. It holds GGUF files "
                                   f"(model.Q4_K_M.gguf): the kit takes a GGUF model as the file itself, --set "
                                   f"model.name={folder / 'model.Q4_K_M.gguf'}.")


def test_a_set_of_a_whole_list_after_a_set_into_it_is_refused(tiny_model_dir, tmp_path, capsys):
    whole = "data.datasets=[{source: data/pubmedqa/ori_pqal.json, format: pubmedqa}]"
    argv = ["--mode", "train", "--dry-run", "--set", f"model.name={tiny_model_dir}"]
    result = run_cli(capsys, [*argv, "--set", "data.datasets.0.max_samples=10", "--set", whole])
    assert result.code == 2
    assert_one_message(result.err, "--set data.datasets=... replaces the whole value, so the --set "
                                   "data.datasets.0.max_samples=... before it would be dropped. Put --set "
                                   "data.datasets=... first")
    import json

    result = run_cli(capsys, [*argv, "--set", whole, "--set", "data.datasets.0.max_samples=10"])
    assert result.code == 0, result.err[-2000:]
    assert json.loads(result.out)["training_examples"] == 10


def test_a_multiple_choice_row_whose_answer_columns_disagree_is_refused():
    from medqlora.config import DatasetSpec
    from medqlora.formats import format_multiple_choice

    spec = DatasetSpec(source="mine.jsonl", format="multiple_choice")
    row = {"question": "First treatment of hyperkalemia with ECG changes?", "answer_idx": "C", "answer": "Insulin",
           "options": {"A": "Insulin", "B": "Kayexalate", "C": "Calcium gluconate", "D": "Dialysis"}}
    with pytest.raises(DataError) as err:
        format_multiple_choice(row, spec)
    assert "answer_idx is 'C' (Calcium gluconate) but the 'answer' column names option A (Insulin): the row " \
           "contradicts itself" in str(err.value)
    for agreeing in ("Calcium gluconate", " calcium  GLUCONATE", "C", "an answer that names no option"):
        assert format_multiple_choice({**row, "answer": agreeing}, spec).response == "C. Calcium gluconate"


def test_a_run_copied_without_its_config_says_its_prompts_cannot_be_read(tiny_model_dir, tmp_path, capsys,
                                                                          trained):  # noqa: F811
    import shutil

    run = tmp_path / "copied"
    shutil.copytree(trained, run)
    (run / "config.yaml").unlink()
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "test", "--dry-run",
                                      "--adapter", str(run)))
    assert result.code == 0, result.err[-2000:]
    assert f"warning: {run} holds the manifest.json of a kit run but no config.yaml" in result.out + result.err


def test_a_base_model_moved_since_training_is_said_gone_and_taken_at_its_new_place(tiny_model_dir, tmp_path, capsys):
    import shutil

    from .conftest import only_run, run_tiny

    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny2"))
    out = tmp_path / "out"
    assert run_tiny(model, out, "--mode", "train", **{"training.max_steps": "1"}) == 0
    run = only_run(out)
    moved = model.rename(tmp_path / "tiny2moved")
    argv = ["--mode", "export", "--dry-run", "--adapter", str(run), "--set", "export.formats=[adapter]"]
    said = "".join(run_cli(capsys, argv)[1:])
    assert f"warning: the base model folder {model} this adapter was trained on is gone (moved or deleted)" in said
    assert "files changed since" not in said
    result = run_cli(capsys, [*argv, "--set", f"model.name={moved}"])
    assert result.code == 0, result.err[-2000:]
    assert f"using base model {moved} (model.name): the folder this adapter was trained on, {model}, is gone, and " \
           "this one holds the same weight files" in result.out + result.err
    (moved / "model.safetensors").write_bytes(b"other")  # other weights: not taken for the run's
    said = "".join(run_cli(capsys, [*argv, "--set", f"model.name={moved}"])[1:])
    assert "holds the same weight files" not in said and "is gone (moved or deleted)" in said


def test_a_weighted_datasets_copies_of_one_example_are_held_out_together(tiny_model_dir):
    """weight 3 with val_ratio 0.25: every validation row was a copy of a question also trained on."""
    from transformers import AutoTokenizer

    from medqlora.config import load_config
    from medqlora.data import collect, tokenize_collected

    cfg = load_config(None, ["data.datasets.0.weight=3", "data.val_ratio=0.25", "data.datasets.0.max_samples=8"])
    collected = collect(cfg.data, cfg.training.seed)
    prepared = tokenize_collected(collected, cfg.data, AutoTokenizer.from_pretrained(tiny_model_dir), 256,
                                  cfg.training.seed)
    trained_on = {r["example"].uid for r in prepared.train}
    validated = [r["example"].uid for r in prepared.validation]
    assert len(validated) == 2 and len(set(validated)) == 2  # 0.25 of 8 questions, each once
    assert not trained_on & set(validated)
    assert len(prepared.train) == 18  # the other 6 questions, 3 copies each


def test_a_question_with_hundreds_spelt_out_is_an_exact_copy():
    question = ("A comparison of 500 prefilled textured saline breast implants versus 500 standard textured saline "
                "breast implants: is there a difference in deflation rates?")
    [overlap] = find_overlap(_train(question.replace("500", "five hundred")), _evaluation(question))
    assert overlap.kind == "exact"


def test_a_credential_in_a_cut_preview_of_a_value_is_masked(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """A value is shown cut to its start ('a list ([{"type": "text", "text": "3f9a1c7e5b2d4...)'): the credential was
    cut before it was masked, so its first characters reached the screen, run.log and manifest.json."""
    import json

    key = "3f9a1c7e5b2d4f6a8c0e1b3d5f7a9c2e4b6d8f01"
    monkeypatch.setenv("WANDB_API_KEY", key)
    rows = tmp_path / "chat.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": key}]},
                                             {"role": "assistant", "content": "ok"}]}) + "\n")
    out = tmp_path / "out"
    result = run_cli(capsys, kit_argv(tiny_model_dir, out, "--mode", "train", **{
        "data.datasets": f"[{{source: {rows}, format: chat}}]", "output.run_name": "sec"}))
    assert result.code == 2
    assert "is a list" in result.err and "<WANDB_API_KE" in result.err
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    for shown in (result.out + result.err, written):
        assert key[:8] not in shown


def test_the_advice_to_continue_a_run_names_the_mode_it_ran_in(tmp_path):
    """The advice after SIGHUP dropped --mode, so the command as written ran --mode full (the default) on a
    train-only run: a baseline evaluation, an evaluation after and sample answers it never asked for."""
    import json

    from medqlora.run_commands import recorded_resume_command

    run = tmp_path / "run"
    run.mkdir()
    for command, mode in ((["x.py", "--mode", "train"], "train"), (["x.py", "--mode=full"], "full"),
                          (["x.py"], "full"), (["x.py", "--mode", "train", "--resume", str(run)], "train")):
        (run / "manifest.json").write_text(json.dumps({"command": command}))
        assert f"--mode {mode} --config {run / 'config.yaml'} --resume {run}" in recorded_resume_command(run)
    (run / "manifest.json").write_text("{")
    assert "--mode train" in recorded_resume_command(run)


def test_a_run_stopped_before_its_first_checkpoint_says_how_to_train_it_again(tmp_path, capsys):
    import json

    from medqlora.config import load_config

    run = tmp_path / "sigeval"
    run.mkdir()
    (run / "config.yaml").write_text(load_config(None).to_yaml())
    (run / "manifest.json").write_text(json.dumps({"status": "interrupted", "kit_version": "0.1.0"}))
    result = run_cli(capsys, ["--mode", "full", "--resume", str(run)])
    assert result.code == 2
    assert_one_message(result.err, f"train it again, as a new run (another output.run_name), or under the same name "
                                   f"once the folder {run} is removed (the kit never overwrites a run).")


ALTERNATING = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               "{% endif %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_chat_template_that_refuses_a_row_is_named_with_the_row(tiny_model_dir, tmp_path, capsys, dry_run):
    """Mistral's and Llama 2's templates raise on two user turns in a row: an internal error (exit 1) before."""
    import json
    import shutil

    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "alternating"))
    (model / "chat_template.jinja").write_text(ALTERNATING)
    turns = [{"role": "user", "content": "Is aspirin an NSAID?"}, {"role": "assistant", "content": "Yes."}]
    doubled = [{"role": "user", "content": "Hi there."}, *turns]
    rows = tmp_path / "chat.jsonl"
    rows.write_text("\n".join(json.dumps({"messages": m}) for m in (turns, turns, doubled)) + "\n")
    argv = kit_argv(model, tmp_path / "out", "--mode", "train", *(["--dry-run"] if dry_run else []),
                    **{"data.datasets": f"[{{source: {rows}, format: chat}}]"})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, f"{rows} row 3: the model's chat template refuses this row (Conversation roles "
                                   "must alternate user/assistant/user/assistant/...). Make its turns follow the "
                                   "template's rule")


def test_a_question_split_between_prompt_and_reply_is_found():
    from medqlora.config import DatasetSpec
    from medqlora.formats import format_instruction
    from medqlora.leakage import Item

    example = format_instruction({"instruction": "Is severe macrosomia manifested at 11-14 weeks",
                                  "output": "of gestation? Yes, it is."}, DatasetSpec(source="x.jsonl", format="instruction"))
    [overlap] = find_overlap([Item("0:mine.jsonl", None, example.question, example.guard_texts(), 1)],
                             _evaluation(MACROSOMIA))
    assert overlap.kind == "exact" and overlap.field == "instruction + output (joined)"


@pytest.mark.parametrize("argv, said", [
    (["--max-steps", "4"], "unrecognized arguments: --max-steps 4. The kit's way: --set training.max_steps=4 "
                           "(settings of the config are given with --set"),
    # Hugging Face's Trainer, axolotl and LLaMA-Factory spell settings their own way
    (["--num_train_epochs", "3"], "The kit's way: --set training.num_epochs=3 "),
    (["--per_device_train_batch_size=2"], "The kit's way: --set training.micro_batch_size=2 "),
    (["--batch_size", "2"], "The kit's way: --set training.micro_batch_size=2 "),
    (["--model_name_or_path", "/m"], "The kit's way: --set model.name=/m "),
    (["--lr", "1e-4"], "The kit's way: --set training.learning_rate=1e-4 "),
    (["--cutoff_len", "512"], "The kit's way: --set model.max_seq_length=512 "),
    (["--bf16"], "The kit's way: --set model.dtype=bf16 "),
    (["--dataset_name", "mine.jsonl"], "The kit's way: --set 'data.datasets=[{source: mine.jsonl, format: FORMAT}]' "),
    # the kit's own flags spelt with '_', and the Trainer's names for them
    (["--output_dir", "/tmp/x"], "unrecognized arguments: --output_dir /tmp/x. The kit's way: --output-dir /tmp/x "),
    (["--dry_run"], "The kit's way: --dry-run "),
    (["--resume_from_checkpoint", "out/run"], "The kit's way: --resume out/run "),
    (["--do_eval"], "The kit's way: --mode eval "),
    (["--learning_rate=2e-4"], "--set training.learning_rate=2e-4"),
    (["--r", "8"], "--set lora.r=8"),
    (["--max-steps", "4", "--foo"], "--set training.max_steps=4"),
])
def test_a_flag_of_other_trainers_is_said_as_the_kits_set(capsys, argv, said):
    with pytest.raises(SystemExit):
        run_cli(capsys, ["--mode", "train", *argv])
    assert said in capsys.readouterr().err


def test_a_flag_is_written_whole(capsys):
    """argparse took '--r 8' for '--resume 8' and '--out x' for '--output-dir x'."""
    with pytest.raises(SystemExit):
        run_cli(capsys, ["--mode", "train", "--out", "x"])
    assert "unrecognized arguments: --out x" in capsys.readouterr().err


def test_a_model_name_set_aside_for_the_runs_own_base_is_said(tiny_model_dir, tmp_path, capsys,
                                                              trained):  # noqa: F811
    import shutil

    other = Path(shutil.copytree(tiny_model_dir, tmp_path / "other-base"))
    result = run_cli(capsys, ["--mode", "test", "--dry-run", "--adapter", str(trained), "--set",
                              f"model.name={other}"])
    assert result.code == 0, result.err[-2000:]
    assert f"the one this adapter was trained on (its run's config.yaml), not model.name {other}: an adapter of a " \
           "run is loaded onto its own base" in result.out + result.err


def test_a_conversation_the_assistant_opens_trains_on_the_replies_to_user_turns(tiny_model_dir):
    """An assistant greeting before the first user turn: 'Cannot apply chat template to an empty conversation'
    (exit 1); and a system prompt folded into the greeting for templates without a system role."""
    from transformers import AutoTokenizer

    from medqlora.data.tokenize import IGNORE_INDEX, _tokenize_chat
    from medqlora.rows import Example

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    turns = (("assistant", "Hello, how can I help?"), ("user", "What is fever?"), ("assistant", "A raised temperature."))
    example = Example(prompt="What is fever?", response="A raised temperature.", turns=turns)
    for system in (None, "Be careful."):
        tokenized, _ = _tokenize_chat(example, tokenizer, system, 512, "truncate", "<|im_end|>\n")
        learned = tokenizer.decode([t for t, label in zip(tokenized["input_ids"], tokenized["labels"])
                                    if label != IGNORE_INDEX])
        assert "A raised temperature." in learned and "Hello" not in learned
        assert "Hello, how can I help?" in tokenizer.decode(tokenized["input_ids"])


def test_a_system_prompt_is_folded_into_the_first_user_turn():
    from medqlora.system_turn import with_system

    class NoSystemRole:
        chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"

        def apply_chat_template(self, messages, **_):
            if any(m["role"] == "system" for m in messages):
                raise ValueError("no system role")
            return "".join(m["content"] for m in messages)

    messages = [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Fever?"}]
    assert with_system(NoSystemRole(), "Be careful.", messages) == [
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Be careful.\n\nFever?"}]

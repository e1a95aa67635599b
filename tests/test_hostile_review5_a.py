"""Bad inputs that a --dry-run must refuse as the run does (the same check, shared), and inputs whose meaning the
kit would otherwise change without a word: each is refused with one message that says what to change."""

import json

import pytest

from medqlora import adapters, data, harness
from medqlora.config import DatasetSpec, load_config
from medqlora.errors import DataError, ModelError

from .conftest import assert_one_message, kit_argv, run_cli
from .test_adapters import SHAPES, make_adapter


@pytest.fixture
def lm_eval_here(monkeypatch):
    """lm-evaluation-harness taken as installed (importing it takes long; these tests never run it)."""
    monkeypatch.setattr(harness, "check_installed", lambda: None)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _drug_questions(n: int = 8) -> list[str]:
    return [f"What is the usual adult dose of drug number {i}?" for i in range(n)]


def test_the_dry_run_guards_training_rows_against_the_lm_eval_items(smol_dir, tmp_path, capsys, lm_eval_here):
    train = _jsonl(tmp_path / "train.jsonl", [{"instruction": q, "output": "A dose."} for q in _drug_questions()])
    medqa = _jsonl(tmp_path / "medqa.jsonl", [{"question": q, "options": dict(zip("ABCD", "1234")), "answer_idx": "A"}
                                             for q in _drug_questions()])
    result = run_cli(capsys, ["--dry-run", "--mode", "full", "--output-dir", str(tmp_path / "out"),
                              "--set", f"model.name={smol_dir}",
                              "--set", f"data.datasets=[{{source: {train}, format: instruction}}]",
                              "--set", "eval.harness=lm-eval", "--set", "eval.lm_eval.tasks=[medqa]",
                              "--set", f"eval.lm_eval.medqa={medqa}"])
    assert result.code == 2
    assert "8 training examples contain evaluation questions" in result.err
    assert "'lm-eval medqa' item" in result.err


@pytest.mark.parametrize("dry", [["--dry-run"], []])
@pytest.mark.parametrize("scripts, said", [((), "holds no convert_lora_to_gguf.py: it must name"),
                                           (("convert_hf_to_gguf.py",), ("holds no convert_lora_to_gguf.py (an older "
                                            "llama.cpp checkout: update it with git pull): it must name"))])
def test_gguf_lora_refuses_a_llama_cpp_dir_without_the_lora_converter(dry, scripts, said, tiny_model_dir, tmp_path,
                                                                      capsys, monkeypatch):
    checkout = tmp_path / "llama.cpp"
    checkout.mkdir()
    for script in scripts:
        (checkout / script).write_text("")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(checkout))
    adapter = make_adapter(tmp_path / "adapter", str(tiny_model_dir))
    result = run_cli(capsys, kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "export", "--adapter", str(adapter),
                                      *dry, **{"export.formats": "[gguf_lora]"}))
    assert result.code == 2
    assert_one_message(result.err, f"LLAMA_CPP_DIR='{checkout}' {said} a llama.cpp checkout (the folder with "
                                   "convert_lora_to_gguf.py)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dry", [["--dry-run"], []])
def test_push_to_hub_without_a_token_is_refused_by_the_dry_run_too(dry, tiny_model_dir, tmp_path, capsys,
                                                                   monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    adapter = make_adapter(tmp_path / "adapter", str(tiny_model_dir))
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "export", "--adapter", str(adapter), *dry,
                    **{"export.formats": "[adapter]", "export.push_to_hub": "me/model"})
    result = run_cli(capsys, argv)
    assert result.code == 2
    assert_one_message(result.err, "export.push_to_hub needs a Hugging Face token with write access")
    assert not (tmp_path / "out").exists()


def test_the_export_plan_names_the_hub_push(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # a machine that can reach the Hub
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    adapter = make_adapter(tmp_path / "adapter", str(tiny_model_dir))
    argv = kit_argv(tiny_model_dir, tmp_path / "out", "--mode", "export", "--adapter", str(adapter), "--dry-run",
                    **{"export.formats": "[adapter]", "export.push_to_hub": "me/model"})
    result = run_cli(capsys, argv)
    assert result.code == 0, result.err
    assert "then uploads it to the Hub repository me/model (private" in json.loads(result.out)["does"]


def test_the_dry_run_refuses_a_credential_in_the_run_name(tmp_path, capsys, monkeypatch):
    token = "hf_NEWLINEsecretTOKEN123456"
    monkeypatch.setenv("HF_TOKEN", token + "\n")
    result = run_cli(capsys, ["--dry-run", "--output-dir", str(tmp_path), "--set", f"output.run_name={token}"])
    assert result.code == 2
    assert_one_message(result.err, "output.run_name contains the value of HF_TOKEN")
    assert token not in result.err + result.out


def test_several_configs_are_refused_not_the_last_taken(capsys):
    result = run_cli(capsys, ["--dry-run", "--config", "config/training_config.yaml", "--config",
                              "smollm2_grpo_medmcqa"])
    assert result.code == 2
    assert_one_message(result.err, "--config is given 2 times (config/training_config.yaml, smollm2_grpo_medmcqa): "
                                   "the kit reads one config and does not merge them")
    assert "--set section.key=value" in result.err


def test_target_modules_that_leave_out_trained_modules_are_refused(tmp_path):
    folder = make_adapter(tmp_path / "a", "base", modules=tuple(SHAPES), target_modules=r".*\.(q|v)_proj")
    with pytest.raises(ModelError) as caught:
        adapters.find(folder)
    message = str(caught.value)
    assert r"target_modules '.*\.(q|v)_proj' leaves out down_proj, gate_proj, k_proj, o_proj, up_proj (10 modules" in message
    assert 'Set target_modules in adapter_config.json to the modules the weights hold: ["down_proj", "gate_proj", ' \
           '"k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]' in message
    with pytest.raises(ModelError, match=r"target_modules '\(q_proj' is not a valid regular expression"):
        adapters.find(make_adapter(tmp_path / "b", "base", target_modules="(q_proj"))
    assert adapters.find(make_adapter(tmp_path / "c", "base", modules=tuple(SHAPES), target_modules="all-linear"))


@pytest.mark.parametrize("config", [
    {"target_modules": r".*\.(q|v)_proj"}, {"target_modules": ".*_proj"}, {"target_modules": ["q_proj", "mlp.up_proj"]},
    {"target_modules": ["self_attn.q_proj", "k_proj"], "exclude_modules": ["layers.1.self_attn.k_proj"]},
    {"target_modules": ".*", "exclude_modules": ".*mlp.*"},
])
def test_the_targeted_modules_are_those_peft_puts_lora_on(config):
    from types import SimpleNamespace

    from peft.tuners.tuners_utils import check_target_module_exists

    peft_config = SimpleNamespace(**{"exclude_modules": None, "modules_to_save": None, "target_parameters": None,
                                     "layers_to_transform": None, "layers_pattern": None, **config})
    for layer in range(2):
        for module, part in [(m, "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn") for m in SHAPES]:
            key = f"model.layers.{layer}.{part}.{module}"
            assert adapters._targeted(config, key) == bool(check_target_module_exists(peft_config, key)), key


@pytest.mark.parametrize("options", [{"A": "lisinopril", "B": "", "C": "insulin", "D": "aspirin"},
                                     ["lisinopril", "  ", "insulin", "aspirin"],
                                     {"A": "lisinopril", "B": "\u200b", "C": "insulin", "D": "aspirin"}])
def test_an_empty_option_of_a_multiple_choice_question_is_refused(tmp_path, options):
    path = _jsonl(tmp_path / "mc.jsonl", [{"question": "Which drug treats hypertension?", "options": options,
                                           "answer_idx": "A"}])
    spec = DatasetSpec(source=str(path), format="multiple_choice")
    with pytest.raises(DataError, match=r"row 1: field 'options.B' is empty: every option of a multiple-choice "
                                        r"question needs its text .* Fill it in, or leave the row out"):
        data.format_rows(spec, data.load_rows(spec))


@pytest.mark.parametrize("task", ["medqa", "medmcqa"])
def test_a_five_option_file_under_a_four_option_lm_eval_task_is_refused(task, tmp_path, lm_eval_here):
    five = _jsonl(tmp_path / "five.jsonl", [{"question": f"Chest pain number {i}: the diagnosis?",
                                             "options": dict(zip("ABCDE", ["MI", "GERD", "PE", "costochondritis",
                                                                           "anxiety"])), "answer_idx": "E"}
                                            for i in range(4)])
    cfg = load_config(None, ["eval.harness=lm-eval", f"eval.lm_eval.tasks=[{task}]", f"eval.lm_eval.{task}={five}"])
    published = {"medqa": "medqa_4options", "medmcqa": "medmcqa"}[task]
    with pytest.raises(DataError, match=rf"lm-eval task {task}: .*five.jsonl holds items with 5 options \(A, B, C, D, "
                                        rf"E; item 1\), and lm-eval's {published} asks four, A-D"):
        harness.load_tasks(cfg)

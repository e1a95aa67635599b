"""Hostile input at the configuration / command-line boundary (issue 14, "Trust boundaries").

Every row is one thing a user (or a crafted file) can hand the kit: it must end in ONE message that
says what to change, exit code 2 (1 for the kit's own bugs), no traceback, quickly, and with nothing
written into the output folder.
"""

from __future__ import annotations

import json
import logging
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medqlora import cli
from medqlora.config import KitConfig, load_config
from medqlora.errors import ConfigError
from medqlora.generate import load_queries

from .conftest import assert_one_message, run_cli, run_kit

MINIMAL = "data:\n  datasets:\n    - source: data/pubmedqa/ori_pqal.json\n      format: pubmedqa\n"


def _bomb(levels: int = 9) -> str:
    """'Billion laughs': each anchor repeats the previous one ten times (10**9 values once expanded)."""
    names = [chr(ord("a") + i) for i in range(levels + 1)]
    lines = [f"{names[0]}: &{names[0]} [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{prev}'] * 10)}]" for prev, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


def _queries(*entries: str) -> str:
    return "queries:\n" + "".join(entries)


# ---------------------------------------------------------------- the table

# (id, mode and extra arguments, config file text or None for the default config, --set overrides,
#  queries file text or None, the fragment of the one message)
CONFIG_ROWS = [
    ("H01-duplicate-top-level", MINIMAL + "training:\n  max_steps: 3\nlora:\n  r: 8\ntraining:\n  seed: 1\n", [],
     "cfg.yaml:5 and {dir}/cfg.yaml:9: duplicate key 'training'"),
    ("H02-duplicate-nested", MINIMAL + "training:\n  max_steps: 3\n  learning_rate: 0.1\n  max_steps: 5\n", [],
     "cfg.yaml:6 and {dir}/cfg.yaml:8: duplicate key 'training.max_steps'"),
    ("H02-duplicate-in-a-list-item", "data:\n  datasets:\n    - source: a.jsonl\n      format: chat\n      source: b\n",
     [], "cfg.yaml:3 and {dir}/cfg.yaml:5: duplicate key 'data.datasets.0.source'"),
    ("H02-duplicate-in-a-set-value", MINIMAL, ["lora.target_modules={a: 1, a: 2}"],
     "--set lora.target_modules: duplicate key 'a'"),
    ("H03-alias-bomb", MINIMAL + _bomb(), [], "expands to more than 20,000 values"),
    ("H03-alias-bomb-in-a-set-value", MINIMAL, ["lora.target_modules=" + _bomb().replace("\n", ", ").join("{}")],
     "--set lora.target_modules: the document expands to more than"),
    ("H04-recursive-sequence", MINIMAL + "lora:\n  target_modules: &a [q_proj, *a]\n", [], "a recursive alias"),
    ("H04-recursive-mapping", MINIMAL + "training: &t\n  nested: *t\n", [], "a recursive alias"),
    ("H04-recursive-key", "a: &a {*a: 1}\n", [], "a recursive alias"),
    ("H05-deep-nesting", "lora:\n  target_modules: " + "[" * 5000 + "]" * 5000 + "\n", [],
     "nested more than 64 levels deep"),
    ("H05-deep-through-aliases", "a: &a " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 40 + "*a" + "]" * 40 + "\n", [],
     "nested more than 64 levels deep once aliases are expanded"),
    ("H06-over-1-MiB", MINIMAL + "# padding\n" * 110_000, [], "over 1 MiB; the kit reads YAML files of at most 1 MiB"),
    ("H06-too-many-values", MINIMAL + "lora:\n  target_modules:\n" + "    - q_proj\n" * 30_000, [],
     "more than 20,000 values"),
    ("H07-impossible-date", MINIMAL + "training:\n  seed: 2020-13-45\n", [], "cfg.yaml:6: cannot read the value '2020-13-45'"),
    ("H07-5000-digit-integer", MINIMAL + "training:\n  seed: " + "7" * 5000 + "\n", [],
     "an integer of more than 4300 digits"),
    ("H07-float-tag-on-text", MINIMAL + "training:\n  learning_rate: !!float abc\n", [], "cannot read the value 'abc'"),
    ("H08-python-tag", "model: !!python/object/apply:os.system ['echo pwned']\n", [],
     "is not allowed: the kit reads plain YAML"),
    ("H08-list-as-key", MINIMAL + "? [a, b]\n: 1\n", [], "a key must be a plain value"),
]

NUMBER_ROWS = [  # (key, value as YAML, fragment): nan / inf / absurd magnitudes, for each numeric kind of key
    ("training.learning_rate", ".nan", "finite number"),
    ("training.learning_rate", "1.0e+30", "allowed: 0 < value < 1"),
    ("training.num_epochs", ".inf", "allowed: 0 < value <= 1000"),
    ("training.num_epochs", "1.0e+30", "allowed: 0 < value <= 1000"),
    ("training.max_steps", "1.0e+30", "allowed: -1 (train for num_epochs), or 1 <= value <= 10000000"),
    ("training.max_steps", "-7", "allowed: -1 (train for num_epochs), or 1 <= value <= 10000000"),
    ("training.micro_batch_size", "1.0e+30", "allowed: 0 < value <= 65536"),
    ("training.gradient_accumulation_steps", "100000000", "allowed: 0 < value <= 65536"),
    ("training.weight_decay", "-.inf", "finite number"),
    ("training.weight_decay", "1.0e+30", "allowed: 0 <= value <= 10"),
    ("training.warmup_ratio", ".nan", "finite number"),
    ("training.max_grad_norm", ".inf", "finite number"),
    ("training.gpu_memory_gib", ".nan", "finite number"),
    ("training.gpu_memory_gib", "1.0e+30", "allowed: 0 < value <= 4096"),
    ("training.seed", "-1", "allowed: 0 <= value <= 4294967295"),
    ("training.save_steps", "1.0e+30", "allowed: 0 <= value <= 10000000"),
    ("lora.alpha", "1.0e+30", "allowed: 0 < value <= 16384"),
    ("lora.dropout", ".nan", "finite number"),
    ("generation.temperature", ".inf", "finite number"),
    ("generation.top_p", ".nan", "finite number"),
    ("generation.repetition_penalty", "1.0e+30", "allowed: 0 < value <= 100"),
    ("generation.max_new_tokens", "1.0e+30", "allowed: 0 < value <= 131072"),
    ("eval.batch_size", "1.0e+30", "allowed: 0 < value <= 65536"),
    ("eval.max_new_tokens", "1.0e+30", "allowed: 0 < value <= 131072"),
    ("data.datasets.0.weight", ".inf", "finite number"),
    ("data.datasets.0.weight", "nan", "finite number"),  # the string 'nan', parsed by the schema
    ("model.max_seq_length", "1.0e+30", "allowed: 0 < value <= 131072"),
]

TEXT_ROWS = [  # (override, fragment): control characters in names and paths, and a bool that is not one
    ('output.run_name="run\\e[2J\\e[Hx"', "'output.run_name': Value error, must not contain control characters"),
    ('output.run_name="a\\nb"', "must not contain control characters"),
    ('output.dir="out\\0side"', "'output.dir': Value error, must not contain control characters"),
    ('data.datasets.0.source="data\\u0007.jsonl"', "'data.datasets.0.source': Value error, must not contain control"),
    ('generation.queries_file="q\\r.yaml"', "'generation.queries_file': Value error, must not contain control"),
    ("output.run_name=../elsewhere", "must be a plain folder name, not a path"),
    ("lora.use_rslora=maybe", "'lora.use_rslora': Input should be a valid boolean"),
]

QUERY_ROWS = [  # (queries file text, bytes or None for no file, fragment)
    (None, "generation.queries_file: '{dir}/queries.yaml' not found"),
    (_queries("  - just text\n"), "queries.yaml:2: entry 1 is 'just text'; expected a list of {id, question}"),
    ("queries: []\n", "queries.yaml: no queries"),
    ("queries: hello\n", "expected a list of {id, question} entries"),
    (_queries("  - id: a\n    question: ok\n  - id: b\n"),
     "queries.yaml:4: entry 2 (query 'b'): no 'question'; it must be the question"),
    (_queries("  - id: a\n    question: '   '\n"), "entry 1 (query 'a'): 'question' is only whitespace ('   '); "
     "it must be the question to answer, as visible text"),
    (_queries("  - id: a\n    question: 42\n"), "entry 1 (query 'a'): 'question' is 42"),
    (_queries("  - id: a\n    qestion: typo\n"), "entry 1: unknown key 'qestion'; an entry has id and question"),
    (_queries("  - id: a\n    question: x\n  - id: a\n    question: y\n"), "queries.yaml:2 and {dir}/queries.yaml:4: "
     "the id 'a' is used twice"),
    (_queries("  - id: [a]\n    question: x\n"), "'id' is ['a']; it must be a name or a number"),
    (_queries('  - id: "a\\x1b[31m"\n    question: x\n'), "'id' 'a\\x1b[31m' must be one line"),
    (_queries("  - id: a\n    question: x\n    question: y\n"), "duplicate key 'queries.0.question'"),
    ("queries: []\nextra: 1\n", "queries.yaml:2: unknown key 'extra'"),
    (_bomb(), "expands to more than 50,003 values"),
    ("queries: &q [*q]\n", "a recursive alias"),
    (_queries("".join(f"  - question: q{i}\n" for i in range(10_001))), "queries.yaml: more than 10,000 queries, the "
     "most one queries file may hold. Keep at most 10,000 in it and answer the others from another file"),
    ("queries: [\n", "invalid YAML"),
    (b"\xff\xfe\x00\x00binary", "is not UTF-8 text"),
    ("# big\n" * 200_000, "over 1 MiB"),
]


@pytest.fixture(autouse=True)
def _accepting_is_a_failure(request, monkeypatch):
    """A hostile input that gets past the boundary fails the test at once (instead of training a model), and
    one that hangs fails it (instead of never): a hang guard far above the time a refusal takes, not a timing
    check (a property test runs its 80 examples under one guard)."""
    from medqlora import plan
    from medqlora.recipe import Recipe

    def accepted(*_args, **_kwargs):
        raise AssertionError("the input was accepted: the run started")

    if "inside_a_run" not in request.node.name:
        for name in ("train_mode", "full", "test", "eval", "export"):
            monkeypatch.setattr(Recipe, name, accepted)
        monkeypatch.setattr(plan, "training_plan", accepted)

    seconds = 300 if "any_" in request.node.name or "fan_out" in request.node.name else 60

    def too_slow(*_args):
        raise TimeoutError(f"not refused within {seconds} s: the input makes the kit hang")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _refused(capsys, argv: list[str], fragment: str, out: Path) -> str:
    """Exit code 2, one message holding ``fragment``, no traceback, and nothing in the output folder."""
    code, _, err = run_cli(capsys, argv + ["--output-dir", str(out)])
    assert code == 2, err
    assert_one_message(err, fragment)
    assert "\x1b" not in err and "\x00" not in err, "control characters reach the terminal"
    assert not out.exists(), sorted(out.rglob("*"))
    return err


@pytest.mark.parametrize("row, text, overrides, fragment", CONFIG_ROWS, ids=[r[0] for r in CONFIG_ROWS])
def test_hostile_yaml_is_refused_with_one_message(tmp_path, capsys, row, text, overrides, fragment):
    config = tmp_path / "cfg.yaml"
    config.write_text(text)
    argv = ["--mode", "train", "--config", str(config)]
    for item in overrides:
        argv += ["--set", item]
    _refused(capsys, argv, fragment.replace("{dir}", str(tmp_path)), tmp_path / "outputs")


@pytest.mark.parametrize("key, value, fragment", NUMBER_ROWS, ids=[f"{k}={v}" for k, v, _ in NUMBER_ROWS])
@pytest.mark.parametrize("through", ["file", "set"])
def test_non_finite_and_absurd_numbers_name_the_allowed_range(tmp_path, capsys, key, value, fragment, through):
    """H09: the same value refused whether it comes from the YAML file or from --set."""
    if through == "set":
        argv = ["--mode", "train", "--set", f"{key}={value}"]
    else:
        section, _, name = key.partition(".")
        config = tmp_path / "cfg.yaml"
        if section == "data":
            text = MINIMAL + f"      weight: {value}\n"
        else:
            text = MINIMAL + f"{section}:\n  {name}: {value}\n"
        config.write_text(text)
        argv = ["--mode", "train", "--config", str(config)]
    err = _refused(capsys, argv, fragment, tmp_path / "outputs")
    assert f"'{key}'" in err


@pytest.mark.parametrize("override, fragment", TEXT_ROWS, ids=[t[0][:30] for t in TEXT_ROWS])
def test_control_characters_in_names_and_paths_are_refused_and_shown_escaped(tmp_path, capsys, override, fragment):
    """H10, H11: a name with an escape sequence or a newline cannot reach a file name or the terminal as is."""
    _refused(capsys, ["--mode", "train", "--set", override], fragment, tmp_path / "outputs")


@pytest.mark.parametrize("mode", ["full", "test", "dry-run"])
@pytest.mark.parametrize("text, fragment", QUERY_ROWS, ids=[f"queries{i}" for i in range(len(QUERY_ROWS))])
def test_a_bad_queries_file_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch, mode, text, fragment):
    """H12: checked at load time for the modes that answer it, so --mode full stops before training (the
    pipeline is stubbed to fail the test if it starts)."""
    queries = tmp_path / "queries.yaml"
    if isinstance(text, bytes):
        queries.write_bytes(text)
    elif text is not None:
        queries.write_text(text)
    argv = ["--mode", "full", "--dry-run"] if mode == "dry-run" else ["--mode", mode, "--adapter", "none"] \
        if mode == "test" else ["--mode", mode]
    _refused(capsys, argv + ["--set", f"generation.queries_file={queries}"], fragment.replace("{dir}", str(tmp_path)),
             tmp_path / "outputs")


def test_a_queries_file_that_is_a_directory(tmp_path, capsys):
    _refused(capsys, ["--mode", "full", "--set", f"generation.queries_file={tmp_path}"],
             f"generation.queries_file {tmp_path}: is a directory, expected a YAML file", tmp_path / "outputs")


def test_train_and_eval_do_not_read_the_queries_file(tmp_path, capsys, monkeypatch):
    """Modes that never answer the queries are not stopped by them."""
    from medqlora.recipe import Recipe

    def reached(*_args, **_kwargs):
        raise ConfigError("reached the pipeline")

    monkeypatch.setattr(Recipe, "train_mode", reached)
    monkeypatch.setattr(Recipe, "eval", reached)
    missing = f"generation.queries_file={tmp_path / 'none.yaml'}"
    for argv in (["--mode", "train"], ["--mode", "eval", "--adapter", "none"]):
        code, _, err = run_cli(capsys, argv + ["--set", missing])
        assert code == 2 and "reached the pipeline" in err, err


# ---------------------------------------------------------------- command-line arguments


def _run_folder_without_config(tmp_path: Path) -> str:
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    return str(folder)


def _a_file(tmp_path: Path) -> str:
    path = tmp_path / "file.txt"
    path.write_text("x")
    return str(path)


ARGUMENT_ROWS = [  # (id, argv built from tmp_path, fragment)
    ("H13-resume-nonexistent", lambda t: ["--mode", "train", "--resume", str(t / "nope")],
     "--resume '{dir}/nope': no such folder. Give the run's folder ('{dir}/outputs/<run>', the path printed when it "
     "started), or latest"),
    ("H13-resume-a-file", lambda t: ["--mode", "full", "--resume", _a_file(t)], "is a file, not a run folder"),
    ("H13-resume-not-a-run-folder", lambda t: ["--mode", "train", "--resume", _run_folder_without_config(t)],
     "{dir}/not-a-run': is not a run folder of this kit (no config.yaml / manifest.json)"),
    ("H13-resume-with-test", lambda t: ["--mode", "test", "--resume", "latest"],
     "--resume continues an interrupted training run: it is for --mode train and --mode full, and --mode test"),
    ("H13-resume-with-eval", lambda t: ["--mode", "eval", "--resume", "latest"], "--mode eval would ignore it"),
    ("H13-resume-with-export", lambda t: ["--mode", "export", "--resume", str(t)], "--mode export would ignore it"),
    ("H13-resume-with-set", lambda t: ["--mode", "train", "--resume", "latest", "--set", "training.seed=1"],
     "leave out --set"),
    ("H14-adapter-with-train", lambda t: ["--mode", "train", "--adapter", "latest"],
     "--adapter chooses the adapter of --mode test, eval, export and chat; --mode train trains a new one"),
    ("H14-adapter-with-full", lambda t: ["--mode", "full", "--adapter", "none"], "--mode full trains a new one"),
    ("H14-no-baseline-with-full", lambda t: ["--mode", "full", "--no-baseline"],
     "--no-baseline is for --mode eval; --mode full would ignore it. Leave out --no-baseline (--set "
     "eval.in_full_mode=false"),
    ("H14-no-baseline-with-test", lambda t: ["--mode", "test", "--no-baseline"], "--mode test would ignore it"),
    ("H15-config-directory", lambda t: ["--config", str(t)],
     "--config {dir}: is a directory, expected a YAML file or preset name"),
    ("H15-config-empty", lambda t: ["--config", ""], "--config is empty"),
    ("H15-config-with-newline", lambda t: ["--config", "cfg\n.yaml"], "--config 'cfg\\n.yaml': contains control"),
    ("H15-output-dir-is-a-file", lambda t: ["--mode", "train", "--output-dir", _a_file(t)],
     "--output-dir {dir}/file.txt: is a file, expected the folder that holds run folders"),
    ("H15-output-dir-empty", lambda t: ["--dry-run", "--output-dir", " "], "--output-dir is empty"),
]


@pytest.mark.parametrize("row, build, fragment", ARGUMENT_ROWS, ids=[r[0] for r in ARGUMENT_ROWS])
def test_arguments_a_mode_cannot_use_are_refused(tmp_path, capsys, row, build, fragment):
    argv = build(tmp_path)
    out = tmp_path / "outputs"
    if "--output-dir" not in argv:
        argv += ["--output-dir", str(out)]
    code, _, err = run_cli(capsys, argv)
    assert code == 2, err
    assert_one_message(err, fragment.replace("{dir}", str(tmp_path)))
    assert not out.exists()
    assert not (tmp_path / "not-a-run" / "run.log").exists()  # a refused --resume touches nothing there


def test_argparse_errors_still_exit_2(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--mode", "nope"])
    assert stop.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------- the last line of defence


def _one_internal_error(err: str, kind: str) -> Path:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"medqlora: internal error: {kind}: "), err
    assert lines[0].endswith(")") and "(full traceback in " in lines[0], err
    return Path(lines[0].rsplit("(full traceback in ", 1)[1][:-1])


def test_an_unexpected_exception_is_one_line_and_its_traceback_goes_to_a_file(tmp_path, capsys, monkeypatch):
    """H16: before any run folder exists, the traceback goes to a file in the temp folder, named on screen."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETSECRETSECRETSECRET1234")

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom\nwith a second line and hf_SECRETSECRETSECRETSECRET1234 \x1b[2J")

    monkeypatch.setattr(cli, "load_config", broken)
    out = tmp_path / "outputs"
    code, _, err = run_cli(capsys, ["--mode", "train", "--output-dir", str(out)])
    assert code == 1
    trace = _one_internal_error(err, "RuntimeError")
    assert "boom\\nwith a second line" in err and "\x1b" not in err
    assert "SECRETSECRET" not in err
    assert trace.parent == tmp_path and trace.name.startswith("medqlora-crash-")
    logged = trace.read_text()
    assert "Traceback (most recent call last)" in logged and "RuntimeError: boom" in logged
    assert "in broken" in logged and "SECRETSECRET" not in logged
    assert not out.exists()
    assert not logging.getLogger("medqlora").handlers or all(
        getattr(h, "baseFilename", None) != str(trace) for h in logging.getLogger("medqlora").handlers)


def test_an_unexpected_exception_inside_a_run_is_logged_in_its_run_log_and_marks_it_failed(tmp_path, capsys,
                                                                                           monkeypatch):
    """H17: once the run folder exists, the traceback is in its run.log and the manifest says failed."""
    from medqlora import data

    def broken(*_args, **_kwargs):
        raise KeyError("an unexpected column")

    monkeypatch.setattr(data, "collect", broken)
    out = tmp_path / "outputs"
    code, _, err = run_cli(capsys, ["--mode", "train", "--output-dir", str(out), "--set", "output.run_name=crash",
                                 "--set", "data.datasets.0.max_samples=4"])
    assert code == 1, err
    trace = _one_internal_error(err, "KeyError")
    assert trace == out / "crash" / "run.log"
    logged = trace.read_text()
    assert "Traceback (most recent call last)" in logged and "in broken" in logged
    manifest = json.loads((out / "crash" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "an unexpected column" in manifest["error"]


def test_the_internal_error_line_as_a_user_sees_it(tmp_path):
    """The same in a fresh process: one line on stderr, exit code 1 (a config error exits 2)."""
    hook = ("import sys, tempfile\ntempfile.tempdir = sys.argv[1]\nimport medqlora.cli as c\n"
            "def broken(*a, **k):\n    raise ZeroDivisionError('division by zero')\n"
            "c.load_config = broken\nsys.exit(c.main(sys.argv[2:]))\n")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", hook, str(tmp_path), "--mode", "train"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 1, done.stderr[-2000:]
    trace = _one_internal_error(done.stderr, "ZeroDivisionError")
    assert "ZeroDivisionError: division by zero" in trace.read_text()

    config = tmp_path / "cfg.yaml"
    config.write_text(MINIMAL + "training:\n  seed: 1\ntraining:\n  seed: 2\n")
    refused = run_kit(["--mode", "train", "--config", str(config), "--output-dir", str(tmp_path / "outputs")],
                      timeout=120)
    assert refused.returncode == 2
    assert_one_message(refused.stderr, "cfg.yaml:5 and")
    assert not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------- property: the YAML boundary

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
YAMLISH = st.text(alphabet="&*ab[]{}:,- \n!?<>'\"|#%.0123456789eE+", max_size=300)


def _only_config_errors(call) -> None:
    try:
        result = call()
    except ConfigError as err:
        assert str(err).strip()
    else:
        assert result is None or isinstance(result, (KitConfig, list))


@FUZZ
@given(st.one_of(st.text(max_size=400), st.binary(max_size=400), YAMLISH))
def test_any_config_file_is_a_config_or_a_config_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("hostile") / "c.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    _only_config_errors(lambda: load_config(path))
    _only_config_errors(lambda: load_queries(str(path)))


@FUZZ
@given(YAMLISH, st.sampled_from(["lora.target_modules", "training.seed", "model.name", "training", "eval.benchmarks"]))
def test_any_set_value_is_a_config_or_a_config_error(value, key):
    _only_config_errors(lambda: load_config(None, [f"{key}={value}"]))


@FUZZ
@given(st.integers(1, 12), st.integers(2, 12))
def test_alias_fan_out_is_bounded(levels, width):
    """Any depth and width of anchors repeating anchors: read when small, refused by its size when not."""
    names = [f"n{i}" for i in range(levels + 1)]
    text = f"x: &{names[0]} [v]\n" + "".join(
        f"y{i}: &{n} [{', '.join([f'*{p}'] * width)}]\n" for i, (p, n) in enumerate(zip(names, names[1:])))
    from medqlora.config import load_yaml

    try:
        load_yaml(text, "bomb.yaml")
    except ConfigError as err:
        assert "expands to more than" in str(err)
    else:
        assert width ** levels <= 20_000


def test_every_message_reaches_the_terminal_with_control_characters_escaped(tmp_path, capsys, monkeypatch):
    """H18: whatever a message quotes (a file name with an escape sequence, from any module), the terminal
    gets it escaped; the message keeps its own lines."""
    from medqlora.errors import DataError

    def quoting(*_args, **_kwargs):
        raise DataError("Dataset file 'x\x1b]0;owned\x07.jsonl' not found:\n  - look in data/\u202e")

    monkeypatch.setattr(cli, "load_config", quoting)
    code, _, err = run_cli(capsys, ["--mode", "train", "--output-dir", str(tmp_path / "outputs")])
    assert code == 2
    assert_one_message(err, "Dataset file 'x\\x1b]0;owned\\x07.jsonl' not found:\n  - look in data/\\u202e")
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err


@pytest.mark.parametrize("env, fragment", [
    ({"RANK": "1", "WORLD_SIZE": "2"}, "[process 1] The environment says RANK=1 WORLD_SIZE=2, but no launcher started "
                                       "this process (MASTER_ADDR and MASTER_PORT are not set). Unset RANK, WORLD_SIZE"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "but no launcher started this process"),
    ({"RANK": "3", "WORLD_SIZE": "2"}, "a rank must be below the number of processes"),
    ({"WORLD_SIZE": "two"}, "The environment variable WORLD_SIZE=two is not a whole number of 0 or more"),
])
def test_stray_launcher_variables_get_one_message_in_every_process(tmp_path, env, fragment):
    out = tmp_path / "outputs"
    done = run_kit(["--dry-run", "--output-dir", str(out)], env={"MASTER_ADDR": "", "MASTER_PORT": "", **env},
                   timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert_one_message(done.stderr, fragment)
    assert not out.exists()


@pytest.mark.slow
def test_a_queries_file_of_thousands_of_queries_is_read(tmp_path):
    queries = tmp_path / "queries.yaml"
    queries.write_text(_queries("".join(f"  - id: q{i}\n    question: What is the dose of drug {i}?\n"
                                        for i in range(5000))))
    assert len(load_queries(str(queries))) == 5000


def test_the_config_value_limit_reads_as_one_sentence(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(MINIMAL + "extra:\n" + "".join(f"  - {i}\n" for i in range(20_001)))
    _refused(capsys, ["--config", str(config), "--dry-run"], "more than 20,000 values; a config file holds a few "
             "hundred (is it the right file).", tmp_path / "outputs")


def test_a_query_longer_than_the_model_context_is_cut_with_a_word_inside_a_run(tiny_model_dir, tmp_path, capsys):
    from .conftest import kit_argv

    queries = tmp_path / "queries.yaml"
    queries.write_text(_queries("  - id: long\n    question: '" + "word " * 40_000 + "'\n  - id: short\n"
                                "    question: What is aspirin?\n"))
    out = tmp_path / "outputs"
    code, printed, err = run_cli(capsys, ["--mode", "test", "--adapter", "none"] + kit_argv(
        tiny_model_dir, out, **{"generation.queries_file": str(queries), "output.run_name": "q"}))
    assert code == 0, err[-2000:]
    note = "question cut from 40,001 to"
    assert f"warning: query long: {note}" in printed and "the model's context holds 4,096 tokens" in printed
    answers = [json.loads(line) for line in (out / "q" / "sample_responses.jsonl").read_text().splitlines()]
    assert note in answers[0]["cut"] and "cut" not in answers[1]
    assert note in (out / "q" / "sample_responses.md").read_text()


CHAT = "data:\n  datasets:\n    - source: data/chat.jsonl\n      format: chat\n"
BOUNDARY_ROWS = [  # (id, config text, --set overrides, fragment): values a run could only fail on, or get wrong
    ("H140-duplicate-benchmark-names", MINIMAL + "eval:\n  benchmarks:\n    - {name: pubmedqa, kind: pubmedqa}\n"
     "    - {name: pubmedqa, kind: multiple_choice, source: data/medmcqa/dev_subset.jsonl}\n", [],
     "'eval.benchmarks': Value error, entries 0 (kind: pubmedqa) and 1 (kind: multiple_choice) are both named "
     "'pubmedqa'"),
    ("H141-chat-rows-without-a-chat-template", CHAT, ["model.chat_template=false"],
     "data.datasets.0 (data/chat.jsonl) has format: chat, and model.chat_template: false renders a conversation as "
     "its turns glued together"),
    ("H142-warmup-longer-than-the-run", MINIMAL, ["training.warmup_steps=1000", "training.max_steps=2"],
     "warmup_steps (1000) is not below max_steps (2)"),
    ("H144-run-name-over-255-bytes", MINIMAL, ["output.run_name=" + "é" * 200],
     "'output.run_name': Value error, is 400 bytes in UTF-8; a folder name may have at most 255 bytes"),
    ("H144-empty-output-dir", MINIMAL, ["output.dir=' '"], "'output.dir': Value error, is empty"),
    ("H146-revision-in-model-name", MINIMAL, ["model.name=HuggingFaceTB/SmolLM2-135M@main"],
     "'model.name': Value error, 'HuggingFaceTB/SmolLM2-135M@main' is not a hub id: a revision (@main, @<commit>) "
     "cannot be pinned in model.name"),
    ("H147-empty-model-name", MINIMAL, ['model.name=""'], "'model.name': Value error, is empty"),
    ("H148-eval-length-without-room-for-the-prompt", MINIMAL, ["eval.method=generate", "eval.max_length=200"],
     "max_length (200) leaves no room for the prompt: the generate method keeps max_new_tokens (256)"),
]


@pytest.mark.parametrize("row, text, overrides, fragment", BOUNDARY_ROWS, ids=[r[0] for r in BOUNDARY_ROWS])
@pytest.mark.parametrize("dry_run", [False, True])
def test_values_a_run_would_fail_on_or_get_wrong_are_refused_at_the_config(tmp_path, capsys, row, text, overrides,
                                                                           fragment, dry_run):
    config = tmp_path / "cfg.yaml"
    config.write_text(text)
    argv = ["--mode", "train", "--config", str(config)] + (["--dry-run"] if dry_run else [])
    for item in overrides:
        argv += ["--set", item]
    _refused(capsys, argv, fragment, tmp_path / "outputs")


def test_warmup_below_max_steps_and_warmup_with_epochs_are_accepted(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(MINIMAL + "training:\n  warmup_steps: 25\n  warmup_ratio: null\n")
    assert load_config(config).training.warmup_steps == 25  # epochs: the steps are planned later
    assert load_config(config, ["training.max_steps=26"]).training.max_steps == 26
    assert load_config(config, ["output.run_name=" + "é" * 127]).output.run_name


def test_an_output_folder_that_cannot_be_created_is_found_before_the_run(tmp_path):
    """H145: /proc/self/medq (and a read-only place) is found by the check --dry-run makes; an empty
    --output-dir is refused when the run folder is made."""
    from medqlora.errors import MedQLoRAError
    from medqlora.runs import RunDir, check_output_dir

    with pytest.raises(MedQLoRAError, match=r"The output folder /proc/self/medq cannot be made: no folder can be "
                                             r"created in /proc/self"):
        check_output_dir(Path("/proc/self/medq"))
    check_output_dir(tmp_path / "a" / "b")  # a folder that can be made: accepted, and nothing is left behind
    assert list(tmp_path.iterdir()) == []
    config = tmp_path / "cfg.yaml"
    config.write_text(MINIMAL)
    with pytest.raises(MedQLoRAError, match="--output-dir is empty"):
        RunDir.create(load_config(config), output_dir="")


def test_a_credential_that_is_an_ordinary_word_does_not_mask_the_runs_own_config(tmp_path, monkeypatch):
    """H143: HF_TOKEN=pubmedqa would have turned the run's config.yaml into 'format: <HF_TOKEN>'."""
    from medqlora.secrets import contains_secret, redact

    config = tmp_path / "cfg.yaml"
    config.write_text(MINIMAL + "\n# medical_o1 llama3-8b 2026-11-30 data/pqa.json\n")
    text = config.read_text() + load_config(config).to_yaml()
    for name in ("pubmedqa", "medical_o1", "llama3-8b", "2026-11-30", "data/pqa.json"):
        monkeypatch.setenv("HF_TOKEN", name)
        assert redact(text) == text and contains_secret(text) is None, name
    for real in ("hf_" + "Ab1" * 12, "0123456789abcdef" * 2 + "01234567", "sk-proj-" + "x9" * 20,
                 "correcthorsebatterystaple", "s3cret12", "Passw0rd!", "abc123def", "my_pa55word"):
        monkeypatch.setenv("HF_TOKEN", real)
        assert redact(f"token {real} here") in ("token <HF_TOKEN> here", "token <token> here")

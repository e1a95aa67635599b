"""Data parallel on the CPU (gloo): two processes train the adapter one process trains, and write one run folder."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from safetensors.torch import load_file

from medqlora import distributed
from medqlora.config import load_config
from medqlora.errors import ConfigError

from .conftest import tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

ROOT = Path(__file__).resolve().parents[1]


def launch(model_dir, out, name, processes, mode="train", extra=(), config=None):
    """The kit's CLI on the tiny model: one process, torchrun with several, or accelerate with a config file."""
    command, env = launch_command(model_dir, out, name, processes, mode, extra, config)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def free_port() -> int:
    """A local port no one listens on now (fixed ports collide with another test session on the same machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(model_dir, out, name, processes, mode="train", extra=(), config=None):
    argv = ["--mode", mode] + [a for a in extra if a.startswith("--")]
    settings = dict(a.split("=", 1) for a in extra if not a.startswith("--"))
    for item in tiny_overrides(model_dir, out, **{
            "data.datasets.0.max_samples": "32", "training.micro_batch_size": "4",
            "training.gradient_accumulation_steps": "2", "training.learning_rate": "0.01",
            "training.save_steps": "0", "output.run_name": name, **settings}):
        argv += ["--set", item]
    if config is not None:
        runner = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                  "--num_processes", str(processes), "--main_process_port", str(free_port())]
    elif processes > 1:
        runner = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                  "--master_port", str(free_port())]
    else:
        runner = [sys.executable]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return runner + [str(ROOT / "medical_qlora_finetuning.py")] + argv, env


def reduction_order_bound(learning_rate: float, steps: int) -> float:
    """How far two runs on the same batches may drift apart when only the order of float32 sums differs
    (one process accumulating micro-batches, or several all-reducing them; another BLAS or thread count).
    Adam moves each weight by about ``learning_rate`` a step whatever the gradient's size, so a rounding
    difference is amplified only where a gradient is at rounding level, and stays a small share of
    ``learning_rate * steps``: measured 2.3e-5 of 9e-2 (0.03%) for micro-batches of 2 x 4 against 4 x 2 on
    one process, 2.5e-5 on another machine's BLAS for 1 against 2 processes. Batches that differ move the
    weights by a large share of it: 0.06 of 0.09 when the same rows are batched without length grouping.
    1% lies a factor of 30 above the rounding and 60 below a change of batches."""
    return 0.01 * learning_rate * steps


def adapter_difference(a_dir: Path, b_dir: Path) -> float:
    a = load_file(a_dir / "adapter" / "adapter_model.safetensors")
    b = load_file(b_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


class Launched(NamedTuple):
    """Where the launched runs wrote their folders, and what the two-process launch printed."""

    out: Path
    two_stdout: str


@pytest.fixture(scope="session")
def one_and_two(tiny_model_dir, tmp_path_factory) -> Launched:
    """One full run (train, evaluate, answer) on one process and the same on two: several tests read them.
    Session-wide, not per module: a pytest-xdist worker runs other files' tests between this file's, and
    each switch of module would launch the runs again."""
    out = tmp_path_factory.mktemp("data_parallel")
    extra = ["eval.benchmarks.0.max_items=12", "generation.max_new_tokens=6"]
    runs = {name: launch(tiny_model_dir, out, name, processes, mode="full", extra=extra)
            for name, processes in (("one", 1), ("two", 2))}
    for done in runs.values():
        assert done.returncode == 0, done.stderr[-2000:]
    return Launched(out, runs["two"].stdout)


def test_two_processes_train_the_same_adapter_as_one_with_the_same_effective_batch(one_and_two):
    out = one_and_two.out
    assert sorted(p.name for p in out.iterdir()) == ["one", "two"]  # one folder for both processes
    log = (out / "two" / "run.log").read_text()
    assert log.count("run folder:") == 1 and "data parallel: 2 processes share each batch" in log
    assert one_and_two.two_stdout.count("medqlora run:") == 1  # the summary is printed once
    assert len(list((out / "two" / "tensorboard").iterdir())) == 1  # one event file, from the main process
    manifest = json.loads((out / "two" / "manifest.json").read_text())
    assert manifest["status"] == "trained"
    metrics = json.loads((out / "two" / "metrics.json").read_text())["metrics"]
    assert metrics["steps"] == 4 and metrics["tokens_seen"] == json.loads(
        (out / "one" / "metrics.json").read_text())["metrics"]["tokens_seen"]  # the same examples, shared
    assert adapter_difference(out / "one", out / "two") < reduction_order_bound(0.01, 4)
    a = load_file(out / "one" / "adapter" / "adapter_model.safetensors")
    assert max(a[k].abs().max().item() for k in a if "lora_B" in k) > 1e-3  # it did train


def test_two_processes_killed_mid_epoch_resume_to_the_adapter_of_an_uninterrupted_run(tiny_model_dir, tmp_path):
    # 40 examples, effective batch 8: 5 steps an epoch. The resumed epoch must be drawn in the same order
    # (seed + epoch) on every process, and its trained batches skipped; the next epoch starts after it.
    extra = ["data.datasets.0.max_samples=40", "training.max_steps=12", "training.save_steps=3"]
    whole = launch(tiny_model_dir, tmp_path, "whole", 2, extra=extra)
    assert whole.returncode == 0, whole.stderr[-2000:]
    command, env = launch_command(tiny_model_dir, tmp_path, "cut", 2, extra=extra)
    cut = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "cut" / "checkpoints" / "checkpoint-6" / "trainer_state.json"
    deadline = time.time() + 300
    while not checkpoint.exists() and cut.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert cut.poll() is None, "training finished before it could be stopped"
    cut.send_signal(signal.SIGTERM)  # torchrun passes it to its workers, which stop as on Ctrl-C
    cut.wait(timeout=120)
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["status"] == "interrupted"

    resumed = subprocess.run(command[:command.index("--mode")] + ["--mode", "train", "--resume", str(tmp_path / "cut")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((tmp_path / "cut" / "metrics.json").read_text())["metrics"]
    assert metrics["steps"] == 12 and metrics["resumed_from_step"] % 5  # in the middle of an epoch
    assert adapter_difference(tmp_path / "whole", tmp_path / "cut") < reduction_order_bound(0.01, 12)


def test_the_effective_batch_is_divided_among_processes(monkeypatch):
    cfg = load_config(None, ["training.micro_batch_size=2", "training.gradient_accumulation_steps=4"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    split = distributed.split_batch(cfg)
    assert (split.training.micro_batch_size, split.training.gradient_accumulation_steps) == (2, 2)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="cannot be shared by 3 processes"):
        distributed.split_batch(cfg)


def _shared_map_worker(rank, world, store_path, count, out):
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    seen = []

    def work(part):
        seen.extend(part)
        return [x * 10 for x in part]

    result = distributed.shared_map(work, list(range(count)))
    Path(out, f"{rank}.json").write_text(json.dumps({"result": result, "seen": seen}))
    dist.destroy_process_group()


@pytest.mark.parametrize("count", [5, 1])
def test_shared_map_deals_items_out_and_gathers_them_in_order(tmp_path, count):
    import torch.multiprocessing as mp

    mp.spawn(_shared_map_worker, args=(2, tmp_path / "store", count, tmp_path), nprocs=2)
    parts = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert all(p["result"] == [x * 10 for x in range(count)] for p in parts)  # every process gets all, in order
    assert sorted(parts[0]["seen"] + parts[1]["seen"]) == list(range(count))  # each item scored once
    assert parts[0]["seen"] == list(range(0, count, 2))


def test_evaluation_and_samples_are_shared_among_processes_and_match_one_process(one_and_two):
    out = one_and_two.out
    assert one_and_two.two_stdout.count("eval fine-tuned pubmedqa") == 1
    a, b = (json.loads((out / name / "eval.json").read_text())["benchmarks"]["pubmedqa"] for name in ("one", "two"))
    for stage in ("baseline", "fine_tuned"):
        rows_a, rows_b = a[stage]["per_item"], b[stage]["per_item"]
        assert len(rows_b) == 12 and [r["uid"] for r in rows_a] == [r["uid"] for r in rows_b]
        assert max(abs(x - y) for ra, rb in zip(rows_a, rows_b) for x, y in zip(ra["scores"], rb["scores"])) < 1e-4
        assert a[stage]["accuracy"] == b[stage]["accuracy"]
    answers = [[json.loads(line)["response"] for line in (out / name / "sample_responses.jsonl").open()]
               for name in ("one", "two")]
    assert len(answers[1]) == 6 and answers[0] == answers[1]  # all six queries answered, in order


def test_the_fsdp_launcher_config_gives_a_per_process_plan_and_refuses_the_cpu(tiny_model_dir, tmp_path):
    config = ROOT / "config" / "accelerate" / "fsdp_qlora.yaml"
    plan = launch(tiny_model_dir, tmp_path, "plan", 2, mode="full", extra=["--dry-run"], config=config)
    assert plan.returncode == 0, plan.stderr[-2000:]
    planned = json.loads(plan.stdout[plan.stdout.index("{"):])  # printed once, by the main process
    processes = planned["processes"]
    assert processes["layout"].startswith("sharded (FSDP)") and processes["processes"] == 2
    assert [r["micro_batch x accumulation"] for r in processes["ranks"]] == ["4 x 1", "4 x 1"]  # 4 x 2 shared
    assert processes["ranks"][1]["writes"] == "nothing"
    assert "sharded training (fsdp)" in planned["backend"]
    train = launch(tiny_model_dir, tmp_path, "cpu", 2, config=config)
    assert train.returncode != 0
    assert train.stderr.count("needs NVIDIA GPUs") == 1
    assert not (tmp_path / "cpu").exists()


def test_the_plan_names_each_process_machine_and_gpu(monkeypatch):
    cfg = load_config(None, ["training.micro_batch_size=2", "training.gradient_accumulation_steps=16"])
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setattr(distributed, "_cuda", lambda: False)
    assert distributed.process_plan(cfg, 1000, {})["ranks"][9]["gpu"] == "none (CPU)"
    monkeypatch.setattr(distributed, "_cuda", lambda: True)  # the layout planned for two 8-GPU machines
    planned = distributed.process_plan(cfg, 1000, {"pubmedqa": 500})
    assert planned["machines"] == 2 and len(planned["ranks"]) == 16
    nine = planned["ranks"][9]
    assert (nine["machine"], nine["gpu"], nine["micro_batch x accumulation"]) == (1, 1, "2 x 1")
    assert sum(r["evaluation_items"]["pubmedqa"] for r in planned["ranks"]) == 500
    assert nine["micro_batches_per_epoch"] == 32  # 1000 examples = 500 micro-batches of 2, over 16 processes
    assert "24 examples from its start are trained twice" in planned["epoch_tail"]  # 16 x 32 x 2 = 1024 slots
    assert distributed.process_plan(cfg, 1024, {})["epoch_tail"] == "none"


@pytest.mark.parametrize("rows,micro_batch,processes", [(22, 4, 2), (24, 4, 2), (5, 4, 2), (9, 4, 2), (1000, 2, 16),
                                                        (7, 3, 4), (22, 4, 1)])
def test_the_rows_repeated_each_epoch_are_those_accelerate_adds(rows, micro_batch, processes):
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    batches = BatchSampler(SequentialSampler(range(rows)), micro_batch, drop_last=False)
    if processes == 1:  # accelerate leaves one process's loader as it is: the short last batch stays short
        trained = sum(len(b) for b in batches)
    else:
        trained = sum(len(b) for r in range(processes) for b in BatchSamplerShard(batches, processes, r))
    assert trained - rows == distributed.repeated_per_epoch(rows, micro_batch, processes)


def _small_llama():
    """The same small architecture wherever the FSDP test trains or reloads its adapter."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, vocab_size=100))


def _fsdp_gather_worker(rank, world, store_path, out):
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from medqlora.sharded import gather_fsdp_trainable, write_gathered_adapter

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = get_peft_model(_small_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    wrapped = FSDP(model, auto_wrap_policy=fsdp_auto_wrap_policy(model), device_id=torch.device("cpu"))
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.5)
    batch = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(rank))
    wrapped(input_ids=batch, labels=batch).loss.backward()  # a different batch in each process
    optimizer.step()
    gathered = gather_fsdp_trainable(model)
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, FullStateDictConfig()):
        reference = {k: v for k, v in wrapped.state_dict().items() if "lora_" in k}
    if rank == 0:
        write_gathered_adapter(model, gathered, out / "adapter")
        torch.save({"gathered": gathered, "reference": reference}, out / "weights.pt")
    else:
        assert gathered is None
    dist.destroy_process_group()


def test_the_adapter_of_an_fsdp_model_is_gathered_whole_on_the_main_process(tmp_path):
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_gather_worker, args=(2, tmp_path / "store", tmp_path), nprocs=2)
    saved = torch.load(tmp_path / "weights.pt")
    gathered, reference = saved["gathered"], saved["reference"]
    assert set(gathered) == set(reference) and len(gathered) == 8  # q and v, A and B, 2 layers: no more, no less
    assert all(torch.equal(gathered[k], reference[k]) for k in reference)
    assert any(reference[k].abs().max() > 0 for k in reference if "lora_B" in k)  # trained (B starts at zero)
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(_small_llama(), str(tmp_path / "adapter"))  # what eval and export do with it
    state = loaded.state_dict()
    assert all(torch.equal(state[k], reference[k]) for k in reference)


def _fsdp_restore_worker(rank, world, store_path, out):
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from peft.utils.other import fsdp_auto_wrap_policy
    from safetensors.torch import save_file
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from medqlora.errors import MedQLoRAError
    from medqlora.sharded import FSDP_LORA_FILE, gather_fsdp_trainable, load_fsdp_lora, scatter_fsdp_trainable

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)

    def wrapped(seed, r=4):
        torch.manual_seed(seed)  # another seed: other LoRA A weights (B starts at zero)
        model = get_peft_model(_small_llama(), LoraConfig(r=r, target_modules=["q_proj", "v_proj"]))
        return FSDP(model, auto_wrap_policy=fsdp_auto_wrap_policy(model), device_id=torch.device("cpu"))

    trained = wrapped(0)
    optimizer = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=0.5)
    batch = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(rank))
    trained(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    checkpoint = gather_fsdp_trainable(trained)  # what a checkpoint of a sharded run carries
    if rank == 0:
        save_file(checkpoint, str(out / FSDP_LORA_FILE))
    dist.barrier()
    resumed = wrapped(1)
    scatter_fsdp_trainable(resumed, load_fsdp_lora(out))
    restored = gather_fsdp_trainable(resumed)
    try:
        scatter_fsdp_trainable(wrapped(2, r=8), load_fsdp_lora(out))
        refused = ""
    except MedQLoRAError as err:
        refused = str(err)
    if rank == 0:
        torch.save({"checkpoint": checkpoint, "restored": restored, "refused": refused}, out / "restore.pt")
    dist.destroy_process_group()


def test_a_resumed_fsdp_run_gets_the_checkpoints_lora_weights_back(tmp_path):
    # accelerate's sharded checkpoint of a PEFT model does not load the LoRA weights back (on 2 GPUs a
    # resumed run started again from the initial adapter): the kit's checkpoints carry them gathered.
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_restore_worker, args=(2, tmp_path / "store", tmp_path), nprocs=2)
    saved = torch.load(tmp_path / "restore.pt")
    checkpoint, restored = saved["checkpoint"], saved["restored"]
    assert set(restored) == set(checkpoint) and len(checkpoint) == 8
    assert all(torch.equal(restored[k], checkpoint[k]) for k in checkpoint)
    assert "0 of 8 restored" in saved["refused"]  # a model with another LoRA rank stops with a message


def test_length_grouped_batches_do_not_depend_on_the_number_of_processes(tiny_model_dir, tmp_path):
    # Rows of varied lengths (not truncated to one length), grouped by length, over more than one epoch:
    # the Trainer alone groups each process's share, and 2 processes then train on other batches than 1.
    # 24 rows, effective batch 8: 3 steps an epoch, and the 4th draws the second epoch's order.
    extra = ["model.max_seq_length=2048", "data.datasets.0.max_samples=24", "training.max_steps=4",
             "training.group_by_length=true"]
    one = launch(tiny_model_dir, tmp_path, "one", 1, extra=extra)
    two = launch(tiny_model_dir, tmp_path, "two", 2, extra=extra)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    seen = [json.loads((tmp_path / n / "metrics.json").read_text())["metrics"]["tokens_seen"] for n in ("one", "two")]
    assert seen[0] == seen[1]
    assert adapter_difference(tmp_path / "one", tmp_path / "two") < reduction_order_bound(0.01, 4)
    # the bound tells batches apart: the same rows batched without length grouping land far outside it
    other = launch(tiny_model_dir, tmp_path, "other", 1, extra=extra[:-1] + ["training.group_by_length=false"])
    assert other.returncode == 0, other.stderr[-2000:]
    assert adapter_difference(tmp_path / "one", tmp_path / "other") > 10 * reduction_order_bound(0.01, 4)


def test_grpo_on_two_processes_generates_and_scores_the_global_batch_one_process_does(tiny_model_dir, tmp_path):
    # Each optimizer step takes 2 prompts x 2 completions: on two processes every process generates its share of
    # the same 4 completions (TRL deals the groups out), not 4 of its own, and the run folder is written once.
    extra = ["training.method=grpo", "data.datasets.0.source=data/medmcqa/train.jsonl",
             "data.datasets.0.format=multiple_choice", "data.datasets.0.max_samples=8", "grpo.num_generations=2",
             "grpo.max_completion_length=8", "training.micro_batch_size=2", "training.max_steps=2",
             "model.max_seq_length=256"]
    one = launch(tiny_model_dir, tmp_path, "one", 1, extra=extra)
    two = launch(tiny_model_dir, tmp_path, "two", 2, extra=extra)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert "data parallel: 2 processes" in two.stdout
    tokens = {}
    for name in ("one", "two"):
        record = json.loads((tmp_path / name / "metrics.json").read_text())
        assert record["metrics"]["steps"] == 2
        tokens[name] = [e["num_tokens"] for e in record["log_history"] if "num_tokens" in e]
        assert "multiple_choice" in json.dumps(record["metrics"]["rewards"])
    assert tokens["one"] == tokens["two"] and len(tokens["two"]) == 2  # the same prompts, the same 4 completions a step
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["status"] == "trained"
    log = (tmp_path / "two" / "run.log").read_text()
    assert log.count("training 8 examples for 2 optimizer steps") == 1
    weights = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert all(bool(w.isfinite().all()) for w in weights.values())


def test_dpo_on_two_processes_trains_one_adapter_from_the_shared_pairs(tiny_model_dir, tmp_path):
    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Patient {i}: which drug reverses warfarin?",
                                        "chosen": "Vitamin K.", "rejected": f"Aspirin {i}."}) + "\n" for i in range(8)))
    extra = ["training.method=dpo", f"data.datasets.0.source={rows}", "data.datasets.0.format=preference",
             "data.datasets.0.max_samples=8", "preference.max_prompt_length=64", "model.max_seq_length=128",
             "training.micro_batch_size=2", "training.max_steps=2"]
    two = launch(tiny_model_dir, tmp_path, "two", 2, extra=extra)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "data parallel: 2 processes" in two.stdout
    record = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert record["metrics"]["method"] == "dpo" and record["metrics"]["steps"] == 2
    assert any("rewards/margins" in e for e in record["log_history"])  # DPO's own metrics, gathered once
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["status"] == "trained"

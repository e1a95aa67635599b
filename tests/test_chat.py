"""--mode chat: history rendered with the training template, /reset and /exit, streamed replies, the one-shot
--prompt that prints the answer alone, and the real command through a pipe and a pseudo-terminal."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from medqlora import backends, chat
from medqlora.config import load_config
from medqlora.generate import generate_texts

from .conftest import ROOT, SCRIPT, assert_one_message, kit_argv, run_kit, run_tiny, tiny_overrides

SYSTEM = "You are a careful medical assistant."


def test_history_is_rendered_with_the_training_template_and_system_prompt(smol_tokenizer):
    conversation = chat.Conversation(smol_tokenizer, SYSTEM, limit=10_000)
    conversation.add("What is anaemia?", "A low haemoglobin.")
    prompt = conversation.prompt("And its commonest cause?")
    expected = smol_tokenizer.apply_chat_template([
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is anaemia?"},
        {"role": "assistant", "content": "A low haemoglobin."},
        {"role": "user", "content": "And its commonest cause?"},
    ], tokenize=False, add_generation_prompt=True)
    assert prompt == expected
    assert prompt.count("<|im_start|>user") == 2 and prompt.endswith("<|im_start|>assistant\n")
    conversation.reset()
    assert conversation.prompt("Hi") == smol_tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}], tokenize=False,
        add_generation_prompt=True)


def test_a_template_without_a_system_role_gets_the_system_prompt_in_the_first_user_turn(smol_tokenizer):
    class NoSystem:
        def apply_chat_template(self, messages, **kwargs):
            if any(m["role"] == "system" for m in messages):
                raise ValueError("system role not supported")
            return "".join(f"[{m['role']}]{m['content']}" for m in messages)

    messages = chat.chat_messages(NoSystem(), SYSTEM, [("q1", "a1")], "q2")
    assert messages[0] == {"role": "user", "content": f"{SYSTEM}\n\nq1"}
    assert [m["content"] for m in messages[1:]] == ["a1", "q2"]


def test_the_oldest_turns_are_dropped_when_the_history_outgrows_the_context(smol_tokenizer):
    conversation = chat.Conversation(smol_tokenizer, SYSTEM, limit=120)
    for n in range(6):
        conversation.add(f"question {n} " + "word " * 15, f"answer {n} " + "word " * 15)
    prompt = conversation.prompt("last question")
    assert len(smol_tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= 120
    assert conversation.dropped > 0 and "question 0" not in prompt and "last question" in prompt
    assert f"question {5}" in prompt  # the newest turn survives


def test_a_message_longer_than_the_context_is_cut_to_fit_its_start_kept_with_a_note(smol_tokenizer, monkeypatch):
    conversation = chat.Conversation(smol_tokenizer, SYSTEM, limit=120)
    conversation.add("earlier question", "earlier answer")
    message = "START why is the sky blue " + "why is the sky blue " * 300 + "END"
    prompt = conversation.prompt(message)
    assert len(smol_tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= 120
    assert "START why is the sky blue" in prompt and "END" not in prompt and conversation.asked.endswith(" ...")
    assert conversation.dropped == 1 and conversation.cut.startswith("(your message was cut from ")
    assert "its start kept and its end left out" in conversation.cut
    assert conversation.prompt("short") and conversation.cut is None  # a message that fits is whole
    with pytest.raises(chat.ConfigError, match="no message fits. Lower generation.max_new_tokens"):
        chat.Conversation(smol_tokenizer, "word " * 200, limit=40).prompt("hi")

    seen = []
    monkeypatch.setattr(chat, "stream_reply", lambda cfg, model, tok, prompt, out: seen.append(prompt) or
                        chat.Reply("ok", 1, 0.01, 0.02))
    cfg = load_config(None, [])
    context = cfg.generation.max_new_tokens + 120
    model = type("M", (), {"config": type("C", (), {"max_position_embeddings": context})()})()
    out, err = io.StringIO(), io.StringIO()
    chat.one_shot(cfg, model, smol_tokenizer, message, out, err)
    assert "START" in seen[0] and "END" not in seen[0]
    assert len(smol_tokenizer(seen[0], add_special_tokens=False)["input_ids"]) <= 120
    assert err.getvalue().startswith("(your message was cut from ")


def test_the_loop_keeps_history_resets_and_exits(smol_tokenizer, monkeypatch):
    seen = []

    def fake_reply(cfg, model, tokenizer, prompt, out):
        seen.append(prompt)
        out.write(f"reply {len(seen)}")
        return chat.Reply(f"reply {len(seen)}", 2, 0.01, 0.02)

    monkeypatch.setattr(chat, "stream_reply", fake_reply)
    cfg = load_config(None, [])
    model = type("M", (), {"config": type("C", (), {"max_position_embeddings": 8192})()})()
    out, err = io.StringIO(), io.StringIO()
    given = chat.interactive(cfg, model, smol_tokenizer, io.StringIO("first\n\n/reset\nsecond\nthird\n/exit\nnever\n"),
                             out, err, "title")
    assert given == 3 and len(seen) == 3
    assert "first" not in seen[1] and "reply 1" not in seen[1]  # /reset forgot the first turn
    assert "second" in seen[2] and "reply 2" in seen[2]  # the third prompt carries the second turn
    assert "never" not in "".join(seen)
    assert out.getvalue().count(cfg.generation.disclaimer) == 1  # once per session
    assert "(new conversation)" in out.getvalue() and err.getvalue().count("tokens/s") == 3


def test_streamed_reply_is_the_kits_greedy_reply(tiny_model_dir, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_model_dir, tmp_path, **{"generation.max_new_tokens": "10"}))
    model, tokenizer = backends.load_for_inference(cfg, backends.detect(cfg), None)
    prompt = chat.Conversation(tokenizer, cfg.data.system_prompt, 4000).prompt("What is anaemia?")

    class Recorder(io.StringIO):
        writes = 0

        def write(self, text):
            self.writes += 1
            return super().write(text)

    out = Recorder()
    reply = chat.stream_reply(cfg, model, tokenizer, prompt, out)
    assert out.writes > 1  # streamed in pieces, not written once at the end
    assert reply.text == out.getvalue().strip()
    assert reply.text == generate_texts(cfg, model, tokenizer, [prompt], 10, 1)[0].strip()
    assert 0 < reply.tokens <= 10 and reply.first_token_s is not None


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    """A trained adapter for the chat processes below (trained in this process: only chat needs its own)."""
    out = tmp_path_factory.mktemp("chat") / "outputs"
    assert run_tiny(tiny_model_dir, out, "--mode", "train", **{"training.max_steps": "2"}) == 0
    return out


def test_one_shot_prompt_prints_the_answer_alone_on_stdout(tiny_model_dir, trained_run):
    done = run_kit(kit_argv(tiny_model_dir, trained_run, "--mode", "chat", "--prompt", "What is anaemia?",
                            **{"generation.max_new_tokens": "6"}))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() and "[medqlora]" not in done.stdout  # the answer and nothing else
    assert "not medical advice" not in done.stdout
    assert "with adapter" in done.stderr and "not medical advice" in done.stderr
    assert "tokens/s" in done.stderr and "Traceback" not in done.stderr


def test_settings_a_run_adapter_replaces_are_named_and_the_answer_stays_alone(tiny_model_dir, trained_run):
    """--set data.system_prompt / model.* beside a run's adapter: the run's own values are used (its prompts are
    rendered as trained), and the note names each given setting that is not used, on stderr."""
    done = run_kit(kit_argv(tiny_model_dir, trained_run, "--mode", "chat", "--prompt", "What is anaemia?",
                            **{"generation.max_new_tokens": "4", "data.system_prompt": "Answer as a pirate.",
                               "model.max_seq_length": "128"}))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() and "[medqlora]" not in done.stdout
    assert "note: data.system_prompt, model.max_seq_length: the values this adapter was trained with are used" \
        in done.stderr, done.stderr[-2000:]
    same = run_kit(kit_argv(tiny_model_dir, trained_run, "--mode", "chat", "--dry-run", "--prompt", "hi"))
    assert same.returncode == 0 and "the values this adapter was trained with" not in same.stderr


def test_chat_through_a_pipe(tiny_model_dir, trained_run):
    argv = kit_argv(tiny_model_dir, trained_run, "--mode", "chat", **{"generation.max_new_tokens": "4"})
    done = subprocess.run([sys.executable, str(SCRIPT), *argv], input="hello\nhow are you\n", cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("model> ") == 2 and "you> " not in done.stdout  # no prompt when not a terminal
    assert done.stderr.count("tokens/s") == 2


def _read_until(fd: int, marker: str, timeout: float) -> str:
    seen, deadline = "", time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                seen += os.read(fd, 4096).decode(errors="replace")
            except OSError:
                break
    return seen


def test_chat_in_a_terminal_prompts_streams_and_exits(tiny_model_dir, trained_run):
    argv = kit_argv(tiny_model_dir, trained_run, "--mode", "chat", **{"generation.max_new_tokens": "4"})
    primary, secondary = pty.openpty()
    process = subprocess.Popen([sys.executable, str(SCRIPT), *argv], stdin=secondary, stdout=secondary,
                               stderr=subprocess.DEVNULL, cwd=ROOT, close_fds=True)
    os.close(secondary)
    try:
        assert "you> " in _read_until(primary, "you> ", 240)
        os.write(primary, b"what is a fever?\n")
        answered = _read_until(primary, "you> ", 120)
        assert "model> " in answered
        os.write(primary, b"/exit\n")
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        os.close(primary)


@pytest.mark.parametrize("args, fragment", [
    (["--mode", "test", "--prompt", "hi"], "--prompt is the one-shot question of --mode chat"),
    (["--mode", "chat", "--prompt", "  "], "--prompt is empty"),
])
def test_prompt_outside_chat_or_empty_is_refused(args, fragment, tmp_path):
    done = run_kit([*args, "--output-dir", str(tmp_path)])
    assert done.returncode == 2
    assert_one_message(done.stderr, fragment)

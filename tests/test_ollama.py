"""The Ollama Modelfile's TEMPLATE: rendered for conversations it was not derived from, it gives exactly the text
of the training chat template (the kit's templates, SmolLM2's own, one that adds BOS itself); a template that
cannot be reproduced gets no Modelfile."""

from __future__ import annotations

import copy

import pytest

from medqlora import ollama
from medqlora.backends import CHAT_TEMPLATES

CONVERSATIONS = [
    [{"role": "user", "content": "Quelle est la dose ? 5 mg/kg · J1"}],
    [{"role": "user", "content": "  leading spaces"}, {"role": "assistant", "content": "trailing\n\n"},
     {"role": "user", "content": "{not a template}"}],
    [{"role": "user", "content": f"q{n}"} if n % 2 == 0 else {"role": "assistant", "content": f"a{n}"}
     for n in range(7)],
]


def _tokenizer(smol_tokenizer, template: str | None, adds_bos: bool = False):
    tokenizer = copy.deepcopy(smol_tokenizer)
    if template:
        tokenizer.chat_template = CHAT_TEMPLATES[template]
    if adds_bos:
        tokenizer.add_bos_token = True
    return tokenizer


@pytest.mark.parametrize("template, adds_bos", [(None, False), ("chatml", False), ("llama-3", True),
                                                ("mistral", False)])
@pytest.mark.parametrize("system", ["", "You are a careful medical assistant."])
def test_the_template_renders_what_the_chat_template_renders(smol_tokenizer, template, adds_bos, system):
    tokenizer = _tokenizer(smol_tokenizer, template, adds_bos)
    text = ollama.modelfile("model-q8_0.gguf", tokenizer, system or None)
    go = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    bos = tokenizer.bos_token if adds_bos else ""
    trims = ollama.trims_messages(tokenizer)
    assert trims == (template == "llama-3")
    for conversation in CONVERSATIONS:
        if trims:  # a known difference, said at export: the template strips spaces around messages
            conversation = [{**m, "content": m["content"].strip()} for m in conversation]
        messages = conversation
        if system and template == "mistral":  # no system role: training folds it into the first user message
            messages = [{"role": "user", "content": f"{system}\n\n{conversation[0]['content']}"}, *conversation[1:]]
        elif system:
            messages = [{"role": "system", "content": system}, *conversation]
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert bos + ollama.render_go(go, system, conversation) == expected
    assert (f'SYSTEM """{system}"""' in text) == bool(system)


def test_a_tokenizer_that_adds_bos_gets_no_second_bos_from_the_template(smol_tokenizer):
    tokenizer = _tokenizer(smol_tokenizer, "llama-3", adds_bos=True)
    go = ollama.go_template(ollama.pieces(tokenizer))
    rendered = ollama.render_go(go, "", [{"role": "user", "content": "hi"}])
    assert not rendered.startswith(tokenizer.bos_token) and rendered.startswith("<|start_header_id|>user")


def test_stop_words_are_the_turn_end_and_eos(smol_tokenizer):
    assert ollama.stop_words(_tokenizer(smol_tokenizer, "llama-3")) == ["<|eot_id|>", "<|im_end|>"]
    assert ollama.stop_words(smol_tokenizer) == ["<|im_end|>"]


def test_the_go_renderer_follows_go_semantics_on_a_hand_written_template():
    template = ('{{ $n := false }}{{ range .Messages }}{{ if eq .Role "user" }}{{ if $n }}, {{ else }}[{{ $.System }}] '
                '{{ end }}{{ $n = true }}U:{{ .Content }}{{ else if eq .Role "assistant" }} A:{{ .Content }}'
                '{{ else }}?{{ end }}{{ end }}.')
    messages = [{"role": "system", "content": "x"}, {"role": "user", "content": "1"},
                {"role": "assistant", "content": "2"}, {"role": "user", "content": "3"}]
    assert ollama.render_go(template, "S", messages) == "?[S] U:1 A:2, U:3."
    with pytest.raises(ValueError):
        ollama.render_go("{{ $undeclared = true }}", "", [])


def test_a_template_that_numbers_its_turns_gets_no_modelfile(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<{{ loop.index }}|{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    with pytest.raises(ollama.TemplateNotPortable):
        ollama.modelfile("m.gguf", tokenizer, "S")

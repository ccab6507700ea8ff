"""edgerun.text.constrain and edgerun.text.tools in the library: one grammar mechanism on every backend's
logits (ONNX Runtime, llama.cpp with tokenizer.json, and a bare GGUF read through llama.cpp's
own vocabulary), and the tool-call conventions found from chat templates and parsed back."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgerun
from edgerun.core.errors import EdgerunError
from edgerun.text import constrain, tools
from tests.runtime_helpers import PROFILE, export_artifact
from tests.structured_helpers import NOTE, SCHEMA, conforms

pytest.importorskip("llguidance")
GGUF = importlib.util.find_spec("llama_cpp") is not None


@pytest.fixture(scope="module")
def artifacts(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny llama as onnx-fp32, gguf-f32, and that GGUF file alone (no tokenizer.json)."""
    root = tmp_path_factory.mktemp("constrain")
    out = {"onnx": export_artifact(tiny_llama, "onnx-fp32", root / "onnx", builder="optimum")}
    if GGUF:
        out["gguf"] = export_artifact(tiny_llama, "gguf-f32", root / "gguf")
        bare = root / "bare" / "lonely.gguf"
        bare.parent.mkdir()
        bare.write_bytes((out["gguf"] / "model.gguf").read_bytes())
        out["bare-gguf"] = bare
    return out


def _constrained(path: Path, **kwargs: Any) -> tuple[list[int | None], str, str | None]:
    with edgerun.load(path, PROFILE) as model:
        chunks = list(model.generate("Weather:", grammar=constrain.json_schema(SCHEMA), **kwargs))
        reason = model.last_stats.finish_reason
    return [c.token_id for c in chunks], "".join(c.text for c in chunks), reason


def test_one_grammar_on_every_backend(artifacts: dict[str, Path]) -> None:
    runs = {name: _constrained(path, max_tokens=200) for name, path in artifacts.items()}
    for name, (_, text, reason) in runs.items():
        assert reason in ("eos", "stop"), name
        assert conforms(json.loads(text), SCHEMA), (name, text)
    if "gguf" in runs:  # the same fp32 weights and tokenizer.json: the same tokens
        assert runs["gguf"][0] == runs["onnx"][0]
    if "bare-gguf" in runs:
        with edgerun.load(artifacts["bare-gguf"], PROFILE) as model:
            assert model.tokenizer.hf_json() is None  # the GGUF vocabulary path was taken
            assert model.tokenizer.llama_vocab() is not None


def test_a_complete_grammar_ends_the_generation_despite_ignore_eos(
    artifacts: dict[str, Path],
) -> None:
    ids, text, reason = _constrained(artifacts["onnx"], max_tokens=200, ignore_eos=True)
    assert reason in ("eos", "stop") and len(ids) < 200
    assert conforms(json.loads(text), SCHEMA)


def test_sampling_stays_inside_the_grammar(artifacts: dict[str, Path]) -> None:
    for seed in range(3):
        _, text, _ = _constrained(artifacts["onnx"], max_tokens=200, temperature=1.5, seed=seed)
        assert conforms(json.loads(text), SCHEMA)


def test_a_bad_schema_is_one_error_before_any_token(artifacts: dict[str, Path]) -> None:
    with pytest.raises(EdgerunError, match="Invalid type: objekt"):
        constrain.check(constrain.json_schema({"type": "objekt"}))
    with edgerun.load(artifacts["onnx"], PROFILE) as model, pytest.raises(EdgerunError):
        model.generate("x", grammar=constrain.json_schema({"type": "objekt"}))
    with pytest.raises(EdgerunError, match="must be a JSON object"):
        constrain.json_schema([1, 2])  # type: ignore[arg-type]


# Fragments of real chat templates that identify each convention.
QWEN25 = 'For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>'
LLAMA31 = 'Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\\n\\nRespond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'


@pytest.mark.parametrize(
    ("template", "name"),
    [(QWEN25, "hermes"), (LLAMA31, "llama3"), ("{{ messages }}", "smollm2"), (None, "smollm2")],
)
def test_the_convention_comes_from_the_template(template: str | None, name: str) -> None:
    assert tools.convention_for(template).name == name


def _convention(name: str) -> tools.Convention:
    return next(c for c in tools.CONVENTIONS if c.name == name)


def test_calls_are_parsed_in_each_convention() -> None:
    hermes = _convention("hermes")
    text = 'Let me look.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
    text += '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>'
    reply = tools.parse(hermes, text)
    assert reply.content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in reply.calls] == [("a", {"x": 1}), ("b", {})]
    assert len({c.id for c in reply.calls}) == 2
    llama = tools.parse(_convention("llama3"), '{"name": "a", "parameters": {"x": "é"}}')
    assert llama.content is None and llama.calls[0].arguments == '{"x": "é"}'
    listed = tools.parse(
        _convention("smollm2"), '<tool_call>[{"name": "a", "arguments": {}}]</tool_call>'
    )
    assert [c.name for c in listed.calls] == ["a"]


def test_text_without_a_whole_call_is_content() -> None:
    hermes = _convention("hermes")
    for text in ["Just text.", '<tool_call>\n{"name": "a", "argum', '{"name": "a"}']:
        assert tools.parse(hermes, text) == tools.Reply(text, [])
    assert tools.parse(_convention("llama3"), "Paris is sunny.").calls == []


def test_a_whole_call_whose_closing_tag_was_cut_is_a_call() -> None:
    for name, text in [
        ("hermes", 'Sure.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool'),
        ("hermes", '<tool_call>\n{"name": "a", "arguments": {"x": 1}}'),
        ("smollm2", '<tool_call>[{"name": "a", "arguments": {"x": 1}}]'),
    ]:
        reply = tools.parse(_convention(name), text)
        assert [(c.name, json.loads(c.arguments)) for c in reply.calls] == [("a", {"x": 1})], text
    hermes = _convention("hermes")
    two = '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b"'
    assert [c.name for c in tools.parse(hermes, two).calls] == ["a"]  # b's JSON is not whole


def _drive(tokenizer: Any, grammar: constrain.Grammar, first: str, max_tokens: int) -> Any:
    """Greedy decoding under `grammar` by a stand-in model that writes `first`, then "a" for
    ever (where the grammar allows it; elsewhere a fixed random preference): (text, the
    Constraint)."""
    vocab = tokenizer.vocab_size
    constraint = constrain.compile_for(grammar, tokenizer, vocab)
    ranks = np.random.default_rng(0).random(vocab).astype(np.float32)
    a = tokenizer.encode("a", add_special_tokens=False)[-1]
    wanted = [*tokenizer.encode(first, add_special_tokens=False), a]
    ids: list[int] = []
    for i in range(max_tokens):
        logits = ranks.copy()
        logits[wanted[min(i, len(wanted) - 1)]] = 10.0
        token = int(np.argmax(constraint.mask(logits, max_tokens - i)))
        done = constraint.accept(token)
        if token in constraint.eos_ids:
            break
        ids.append(token)
        if done:
            break
    return tokenizer.decode(ids), constraint


def _note_call(convention: tools.Convention) -> str:
    """The start of a save_note call in `convention`, up into its title."""
    head = '{"name": "save_note", "' + convention.args_key + '": {"title": "'
    return convention.opener + ("[" if convention.as_list else "") + head


@pytest.mark.parametrize("name", ["hermes", "smollm2", "llama3"])
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "save_note"}}]
)
def test_a_tool_call_short_of_tokens_is_steered_to_a_whole_call(
    tiny_llama: Path, name: str, choice: Any
) -> None:
    from edgerun.text.tokenizer import HFTokenizer

    tokenizer, convention = HFTokenizer(tiny_llama), _convention(name)
    other = {"type": "function", "function": {"name": "f"}}  # a shorter call to choose
    grammar = tools.grammar(convention, [NOTE, other], choice)
    assert grammar is not None
    text, constraint = _drive(tokenizer, grammar, _note_call(convention), max_tokens=160)
    calls = tools.parse(convention, text).calls
    assert [c.name for c in calls] == ["save_note"], text
    assert constraint.closing and len(tokenizer.encode(text, add_special_tokens=False)) <= 160
    assert conforms(json.loads(calls[0].arguments), NOTE["function"]["parameters"])


def test_auto_steers_a_call_but_leaves_text_alone(tiny_llama: Path) -> None:
    from edgerun.text.tokenizer import HFTokenizer

    tokenizer, hermes = HFTokenizer(tiny_llama), _convention("hermes")
    grammar = tools.grammar(hermes, [NOTE], "auto")
    assert grammar is not None
    # below the reserve from the first token on: text is the model's own, not closing picks
    text, constraint = _drive(tokenizer, grammar, "", max_tokens=20)
    assert text == "a" * 20 and not constraint.closing
    text, constraint = _drive(tokenizer, grammar, _note_call(hermes), max_tokens=160)
    assert tools.parse(hermes, text).calls and constraint.closing, text

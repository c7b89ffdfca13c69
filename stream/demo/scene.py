"""What a generated conversation contains: players at seats, and a scripted dialogue."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Player:
    id: str
    name: str
    voice: str
    """An espeak-ng voice, e.g. `en-us+f3`."""
    look: int = 0
    """Which appearance variant renders this player (see `portrait.py`)."""
    mouth: str = "jaw"
    """How speech moves the face: `jaw` (the jaw drops) or `lips` (the lips part and
    stretch, the jaw stays)."""
    scale: float | None = None
    """This player's portrait size (default: the scene's)."""
    turned: float = 0.0
    """Head yaw held while speaking and listening (-1..1, 1 is about 45 degrees)."""
    mumbles: bool = False
    """Nods and moves the lips without sound while others speak."""
    sways: bool = False
    """Sways her head from side to side (yaw) while she is not speaking."""
    echoes: float = 0.0
    """Mouths the words along without a sound while others speak: her mouth follows their
    voice, opening this share of theirs (0: never)."""


@dataclass(frozen=True)
class Pronoun:
    word: str
    player: str
    """Id of the player the pronoun refers to."""


@dataclass(frozen=True)
class Line:
    speaker: str
    addressee: str
    text: str
    pronouns: tuple[Pronoun, ...] = ()
    mentions: tuple[str, ...] = ()
    """Ids of players named in the text."""


@dataclass(frozen=True)
class Away:
    """A player with their back to the camera (no face visible) from `start` to `end` seconds."""

    player: str
    start: float
    end: float


@dataclass(frozen=True)
class Scene:
    players: tuple[Player, ...]
    lines: tuple[Line, ...]
    width: int = 640
    height: int = 480
    fps: int = 30
    lead_in: float = 0.8
    gaps: tuple[float, ...] = (0.8,)
    """Silence between lines, cycled; long enough for a voice-activity hangover."""
    tail: float = 1.0
    words_per_minute: int = 180
    seat_xs: tuple[int, ...] | None = None
    """Centre of each seat in pixels (default: evenly spread)."""
    scale: float = 0.8
    """Portrait size relative to the photograph crop."""
    top: int = 165
    """Row of the portraits' top edge."""
    audio_noise: float = 0.0
    """Standard deviation of white noise added to the audio (full scale is 1)."""
    video_noise: float = 0.0
    """Standard deviation of Gaussian noise added to every pixel, in grey levels."""
    away: tuple[Away, ...] = ()
    light_swing: float = 0.0
    """Amplitude of a slow brightness change (0.3: from 70 % to 130 % of the light)."""

    def player(self, player_id: str) -> Player:
        return next(p for p in self.players if p.id == player_id)


def _p(word: str, player: str) -> Pronoun:
    return Pronoun(word, player)



DEMO = Scene(
    players=(
        Player("P1", "Alice", "en-us+f3", look=0),
        Player("P2", "Ben", "en-gb+m3", look=1),
        Player("P3", "Clara", "en+f4", look=2),
    ),
    lines=(
        Line("P1", "P2", "Ben, did you finish the map for our trip?", mentions=("P2",)),
        Line("P2", "P1", "Almost. Clara helped me with the route.", mentions=("P3",)),
        Line("P3", "P1", "He did most of it, honestly.", pronouns=(_p("He", "P2"),)),
        Line("P1", "P3", "That is kind of you to say, Clara.", mentions=("P3",)),
        Line("P2", "P3", "You found the shortcut by the lake."),
        Line("P3", "P2", "Only because you asked me to look."),
        Line("P1", "P2", "Does she always find the best roads?", pronouns=(_p("she", "P3"),)),
        Line("P2", "P1", "She does. Ask her about last summer.",
             pronouns=(_p("She", "P3"), _p("her", "P3"))),
        Line("P3", "P1", "Alice, he is exaggerating again.", pronouns=(_p("he", "P2"),),
             mentions=("P1",)),
        Line("P1", "P3", "Then show me the shortcut, please."),
        Line("P3", "P2", "Sure. Ben, can you pass me the map?", mentions=("P2",)),
        Line("P2", "P3", "Here it is. Alice will love it.", mentions=("P1",)),
    ),
    gaps=(0.7, 0.85, 0.65, 0.8),
)


DUO = Scene(
    players=(Player("P1", "Dana", "en-us+f2", look=2), Player("P2", "Eli", "en-gb+m1", look=1)),
    lines=(
        Line("P1", "P2", "Eli, did you hear the forecast?", mentions=("P2",)),
        Line("P2", "P1", "Yes, rain all weekend, sadly."),
        Line("P1", "P2", "Then we should move the picnic."),
        Line("P2", "P1", "You always have a plan, Dana.", mentions=("P1",)),
        Line("P1", "P2", "Someone has to keep you dry."),
    ),
    seat_xs=(190, 470),
    top=150,
    audio_noise=0.01,
    video_noise=4.0,
    gaps=(0.7, 0.9, 0.75),
)
"""Two people off-centre, with audio hiss and sensor noise."""

QUARTET = Scene(
    players=(
        Player("P1", "Finn", "en-gb+m3", look=1),
        Player("P2", "Gwen", "en-us+f3", look=0),
        Player("P3", "Hugo", "en+m2", look=2),
        Player("P4", "Iris", "en+f4", look=3),
    ),
    lines=(
        Line("P1", "P3", "Hugo, where did you park the van?", mentions=("P3",)),
        Line("P3", "P1", "Behind the station, near the bakery."),
        Line("P2", "P1", "He always parks there.", pronouns=(Pronoun("He", "P3"),)),
        Line("P4", "P2", "Gwen, did you bring the tickets?", mentions=("P2",)),
        Line("P2", "P4", "They are in my bag, Iris.", mentions=("P4",)),
        Line("P1", "P4", "Then let us go, she is ready.", pronouns=(Pronoun("she", "P2"),)),
    ),
    scale=0.6,
    top=200,
    audio_noise=0.006,
    video_noise=3.0,
    away=(Away("P4", 3.0, 6.5),),
    gaps=(0.75, 0.85, 0.7),
)
"""Four people at 640x480; the fourth turns away for a while; light noise."""

VARIED = Scene(
    players=(
        Player("P1", "Jon", "en-gb+m1", look=1, mouth="lips", scale=0.5),
        Player("P2", "Kim", "en-us+f2", look=0, scale=0.95, mumbles=True),
        Player("P3", "Lea", "en+f3", look=2, mouth="lips", turned=-1.0, scale=0.7),
    ),
    lines=(
        Line("P1", "P2", "Kim, are you coming to the match tonight?", mentions=("P2",)),
        Line("P2", "P1", "Maybe. Lea has the tickets, I think.", mentions=("P3",)),
        Line("P3", "P2", "I do. He asked me to keep them.", pronouns=(Pronoun("He", "P1"),)),
        Line("P1", "P3", "Thank you, Lea. You are a star.", mentions=("P3",)),
        Line("P2", "P3", "Then I will bring the snacks for us."),
        Line("P3", "P1", "Jon, do not forget your scarf this time.", mentions=("P1",)),
        Line("P1", "P3", "I never forget it. She is teasing me.",
             pronouns=(Pronoun("She", "P3"),)),
    ),
    seat_xs=(120, 330, 540),
    top=140,
    audio_noise=0.008,
    video_noise=3.0,
    light_swing=0.3,
    gaps=(0.75, 0.9, 0.7),
)
"""Harder on purpose: a small face and a large one, lips that part without the jaw
moving, a speaker turned about 45 degrees the whole time, a listener who nods and moves
her lips without sound, and light that swells and fades."""

HANDOVER = Scene(
    players=(
        Player("P1", "Mara", "en-us+f2", look=0),
        Player("P2", "Omar", "en-gb+m3", look=1),
        Player("P3", "Ines", "en+f4", look=2),
    ),
    lines=(
        Line("P1", "P2", "Omar, did you book the hall for Friday?", mentions=("P2",)),
        Line("P2", "P1", "Yes, and I paid the deposit this morning."),
        Line("P3", "P2", "Did they say how many chairs we get?"),
        Line("P2", "P3", "Sixty chairs, and two long tables."),
        Line("P1", "P3", "Ines, can you bring the speakers?", mentions=("P3",)),
        Line("P3", "P1", "I can, but my car is small."),
        Line("P1", "P3", "Then Omar will help you carry them.", mentions=("P2",)),
        Line("P2", "P1", "Fine, I will bring my van too."),
    ),
    seat_xs=(110, 320, 530),
    top=150,
    audio_noise=0.006,
    video_noise=3.0,
    away=(Away("P1", 12.4, 14.0),),
    gaps=(0.0, 0.05, -0.6, 0.1, -0.5, 0.0, 0.8),
)
"""Real handovers: no pause between speakers (twice), a reply that starts while the
other still talks (twice), and a speaker who turns her back while she talks."""

LOOKALIKE = Scene(
    players=(
        Player("P1", "Nora", "en-us+f2", look=1),
        Player("P2", "Carol", "en+f4", look=0, mouth="lips", echoes=0.45),
        Player("P3", "Dora", "en-us+f3", look=0, sways=True),
        Player("P4", "Sam", "en-gb+m3", look=2),
    ),
    lines=(
        Line("P4", "P3", "Dora, if that is true, then who is the wolf?", mentions=("P3",)),
        Line("P3", "P4", "I think it is Nora. She accused two people for no reason.",
             mentions=("P1",), pronouns=(_p("She", "P1"),)),
        Line("P1", "P2", "Carol, you were the seer last night, tell us what you saw.",
             mentions=("P2",)),
        Line("P2", "P1", "I looked at Dora. She is a villager, like me.", mentions=("P3",),
             pronouns=(_p("She", "P3"),)),
        Line("P3", "P2", "Thank you, Carol. Then I vote for Nora.", mentions=("P2", "P1")),
        Line("P4", "P1", "Nora, you have been very quiet today.", mentions=("P1",)),
        Line("P1", "P4", "Sam, I was only listening.", mentions=("P4",)),
    ),
    scale=0.6,
    top=200,
    audio_noise=0.006,
    video_noise=3.0,
    gaps=(0.0, 0.8, 0.0, 0.0, 0.7, 0.0),
)
"""Two people with the same face side by side: Carol mouths the words along without a
sound while others speak, Dora sways her head while she listens. While Dora says her
first line, Light-ASD's scores for her and Carol hover near a tie. Four handovers without
a pause, one between the look-alikes."""

SCENES = {"demo": DEMO, "duo": DUO, "quartet": QUARTET, "varied": VARIED,
          "handover": HANDOVER, "lookalike": LOOKALIKE}

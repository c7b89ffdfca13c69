"""Engine settings; the defaults follow the paper (arXiv 2511.17952) where it has one."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BiasConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.0, ge=0)
    """Bias strength; 0 gives stock attention exactly."""
    threshold: float = Field(5e-5, ge=0)
    """A head is active when its mean attention from the utterance to V_all exceeds this."""
    layers: tuple[int, int] | None = None
    """[first, stop) decoder layers that may be biased; None scales the paper's 10-19 of 28."""

    def layer_range(self, depth: int) -> range:
        if self.layers is not None:
            return range(max(0, self.layers[0]), min(depth, self.layers[1]))
        return range(round(depth * 10 / 28), round(depth * 20 / 28))


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bias: BiasConfig = BiasConfig()
    max_tokens: int | None = Field(None, gt=0)
    """Context budget in cached tokens; None: half of `max_positions` (everything for a model
    without a position limit), so that a rebase always has room to work in."""
    max_positions: int | None = Field(None, gt=0)
    """Rotary positions the session may use; None: the model's `max_position_embeddings`.
    Before they run out, the kept conversation is re-encoded from position 0 (a rebase)."""
    keep_turns: int = Field(4, ge=0)
    """Utterances never evicted: the most recent ones."""
    evict_to: float = Field(0.8, gt=0, le=1)
    """An eviction frees down to this share of the budget, so it does not run every turn."""
    max_turn_words: int = Field(200, ge=2)
    """Words of one turn the engine takes: of a longer one (a transcript line of 12,000
    words would not fit any context budget, and asks a question per pronoun), its first
    and last halves of this many. About a minute and a half of speech."""

    @model_validator(mode="after")
    def _layers_ordered(self) -> EngineConfig:
        layers = self.bias.layers
        if layers is not None and layers[0] >= layers[1]:
            raise ValueError(f"bias.layers {list(layers)} must be [first, stop) with first < stop")
        return self


class PredictorConfig(EngineConfig):
    """The engine as a pipeline stage: which model, and the session settings above."""

    model: str | None = None
    """A checkpoint directory, a model id in the local Hugging Face cache, or `smollm2`;
    None runs no engine (turns only)."""
    url: str | None = Field(None, pattern=r"^(https?|mqtts?)://")
    """An engine service (`socialstream serve`) to send each turn to instead of loading
    `model` here: http://HOST:PORT/; or mqtt://BROKER (`serve --mqtt`): the turns go out on
    that broker and the service publishes the predictions there."""
    token: str | None = Field(None, repr=False)
    """The bearer token `socialstream serve` was started with (default: the environment
    variable SOCIALSTREAM_ENGINE_TOKEN)."""
    url_timeout_s: float = Field(60.0, gt=0)
    """How long one turn may wait for the service (retries included: a replica that died
    is routed around within seconds) before its engine answers are given up."""
    device: str | None = None
    """Torch device; default cuda when present, else cpu."""
    pixels: int = Field(448 * 448, gt=0)
    """Qwen2.5-VL frame resolution in pixels."""
    video: bool = False
    """Qwen2.5-VL: give a turn's key frames as one video, so the time axis of the
    positions follows media seconds (else separate images, evictable one by one)."""
    prompting: bool = True
    """Draw each player's box and id on the frames the model sees."""
    frames_per_turn: int = Field(2, ge=0)
    """Key frames of a turn given to the model, evenly spaced; 0 gives all of them."""
    system: str = ("You watch a conversation. Each frame shows the people in it, marked P1, "
                   "P2 and so on; each line says who spoke.")

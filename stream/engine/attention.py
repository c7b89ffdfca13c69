"""Speaker-aware biased attention for the text decoder (arXiv 2511.17952, made streaming).

While an utterance is prefilled, some heads get an additive bias that pulls the
utterance's tokens toward the tokens of the person who said it. Which heads, and
how much, is decided inside the same forward from the attention itself:

1. For each head h in the configured layer range, measure
   `score_h = mean over utterance tokens u and keys v in V_all of softmax(QK^T/sqrt(d))[u, v]`,
   where V_all are the tokens inside every player's box in the turn's frames.
   Head h is active when `score_h > threshold` (paper: 5e-5).
2. In active heads only, for utterance token u and each key v of the speaker,
   add `alpha * max(0, max over V_all of q_u . k_v / sqrt(d))` to the logit and
   recompute the softmax. The maximum is clamped at zero: the paper's formula
   would push attention *away* from the speaker when a token's strongest
   visual logit is negative, the opposite of its purpose.

Only the text-query -> visual-key direction changes; every other row, every
inactive head, and every token whose strongest visual logit is not positive
keeps the plain sdpa output bit for bit. With `alpha == 0` the whole forward is
plain sdpa (heads are still measured, nothing is changed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "social"
"""The name under which the biased attention is registered with transformers."""


@dataclass
class HeadRecord:
    """What the bias did in one layer during one utterance's prefill."""

    scores: torch.Tensor
    """Per head: mean attention from the utterance to V_all before any bias."""
    active: torch.Tensor
    """Per head: whether the bias was applied."""
    speaker_mass: torch.Tensor
    """Per head: mean total attention from an utterance token to the speaker's tokens, unbiased."""
    speaker_mass_biased: torch.Tensor
    """The same after the bias (equal to `speaker_mass` in inactive heads)."""
    maps: torch.Tensor | None = None
    """Active heads only, (heads, utterance tokens, patches): attention to every patch of the
    turn's frames after the bias; set when the plan asks for an export."""


@dataclass
class BiasPlan:
    """One utterance prefill's bias; reaches the attention through the `social_bias` kwarg."""

    alpha: float
    layers: range
    threshold: float
    queries: torch.Tensor
    """Rows of the prefilled chunk that are utterance tokens."""
    visual: torch.Tensor
    """Cache indices of V_all: every player's tokens in the turn's frames."""
    speaker: torch.Tensor
    """Cache indices of the speaker's tokens in those frames."""
    patches: torch.Tensor | None = None
    """Cache indices of all patches of the turn's frames; set to export attention maps."""
    records: dict[int, HeadRecord] = field(default_factory=dict)


def register() -> str:
    """Make the biased attention known to transformers (idempotent) and return its name.

    The mask entry matters: without it transformers builds no mask for an unknown
    implementation and causality is silently lost.
    """
    AttentionInterface.register(IMPLEMENTATION, social_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    return IMPLEMENTATION


def social_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    social_bias: BiasPlan | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    output, _ = sdpa_attention_forward(module, query, key, value, attention_mask,
                                       dropout=dropout, scaling=scaling, **kwargs)
    plan = social_bias
    layer = getattr(module, "layer_idx", None)
    if plan is None or layer not in plan.layers or len(plan.queries) == 0:
        return output, None
    if query.shape[0] != 1:
        raise ValueError("biased attention runs on one conversation at a time (batch size 1)")
    groups = getattr(module, "num_key_value_groups", 1)
    keys, values = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    rows = query[:, :, plan.queries]
    logits = (rows @ keys.transpose(-1, -2)).float() * scale  # (1, heads, utterance, keys)
    masked = logits + _row_mask(attention_mask, plan.queries, query.shape[2], keys.shape[2],
                                logits.device)
    probs = masked.softmax(-1)
    scores = probs[..., plan.visual].mean(dim=(-1, -2))[0]
    active = scores > plan.threshold
    speaker_mass = probs[..., plan.speaker].sum(-1).mean(-1)[0]
    biased_probs = probs
    if plan.alpha != 0 and bool(active.any()):
        strongest = logits[..., plan.visual].amax(-1, keepdim=True).clamp_min(0)
        bias = torch.zeros_like(logits)
        bias[..., plan.speaker] = plan.alpha * strongest
        bias *= active.view(1, -1, 1, 1)
        biased_probs = (masked + bias).softmax(-1)
        mixed = biased_probs.to(values.dtype) @ values  # (1, heads, utterance, dim)
        # Only (head, token) pairs whose bias is non-zero take the recomputed output.
        heads, tokens = (active[:, None] & (strongest[0, :, :, 0] > 0)).nonzero(as_tuple=True)
        output[0, plan.queries[tokens], heads] = mixed[0, heads, tokens].to(output.dtype)
    maps = None
    if plan.patches is not None:
        maps = biased_probs[0][active][..., plan.patches].cpu()
    plan.records[layer] = HeadRecord(
        scores=scores.cpu(), active=active.cpu(), speaker_mass=speaker_mass.cpu(),
        speaker_mass_biased=biased_probs[..., plan.speaker].sum(-1).mean(-1)[0].cpu(), maps=maps)
    return output, None


def _row_mask(mask: torch.Tensor | None, rows: torch.Tensor, q_len: int, kv_len: int,
              device: torch.device) -> torch.Tensor:
    """The additive mask of the chosen query rows: the given mask, or causal when sdpa had none."""
    if mask is None:
        absolute = rows.to(device)[:, None] + (kv_len - q_len)
        allowed = torch.arange(kv_len, device=device)[None, :] <= absolute
    else:
        chosen = mask[:, :, rows.to(mask.device)]
        if chosen.dtype != torch.bool:
            return chosen.float()
        allowed = chosen
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))

"""A KV-cached session over a causal language model (the text-only backend).

Every appended piece is prefilled on top of the cache with explicit positions,
never re-encoding the history. `ask` scores candidate answers by their
log-likelihood in one batch, then crops the cache back to where it was: the
conversation state never contains questions or answers.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from stream.engine.ledger import Ledger, Span, SpanKind


class TextSession:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.cache = DynamicCache(config=model.config)
        self.ledger = Ledger()
        self.last_logits: torch.Tensor | None = None
        """Next-token logits after the last appended token."""

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    def tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def append(self, kind: SpanKind, text: str, **meta: object) -> Span:
        ids = self.tokens(text)
        self._prefill(ids)
        span = self.ledger.append(kind, len(ids), **meta)
        assert self.ledger.length == self.length, "the ledger tracks the cache"
        return span

    def _prefill(self, ids: list[int]) -> torch.Tensor:
        start = self.length
        positions = torch.arange(start, start + len(ids), device=self.model.device)[None]
        out = self.model(input_ids=torch.tensor([ids], device=self.model.device),
                         position_ids=positions, past_key_values=self.cache, use_cache=True)
        self.last_logits = out.logits[0, -1].float()
        return out.logits

    @torch.no_grad()
    def ask(self, question: str, candidates: list[str]) -> list[float]:
        """Log-likelihood of each candidate after the conversation and the question."""
        if not candidates:
            raise ValueError("ask needs at least one candidate")
        length, kept_logits = self.length, self.last_logits
        widened = False
        try:
            self._prefill(self.tokens(question))
            assert self.last_logits is not None
            first = torch.log_softmax(self.last_logits, dim=-1)
            answers = [self.tokens(c) for c in candidates]
            if any(not a for a in answers):
                raise ValueError("every candidate needs at least one token")
            width = max(len(a) for a in answers)
            pad = self.tokenizer.pad_token_id or 0
            batch = torch.tensor([a + [pad] * (width - len(a)) for a in answers],
                                 device=self.model.device)
            start = self.length
            positions = torch.arange(start, start + width, device=self.model.device)
            self.cache.batch_repeat_interleave(len(answers))
            widened = True
            # Right padding: causal attention keeps every real token away from the pads.
            out = self.model(input_ids=batch, position_ids=positions.expand(len(answers), -1),
                             past_key_values=self.cache, use_cache=True)
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            return [
                float(first[a[0]] + sum(logp[b, i - 1, a[i]] for i in range(1, len(a))))
                for b, a in enumerate(answers)
            ]
        finally:
            extra = self.length - length
            if extra > 0:
                self.cache.crop(-extra)  # transformers 5: a negative count of tokens to drop
            if widened:  # back to the one conversation row
                self.cache.batch_select_indices(torch.tensor([0], device=self.model.device))
            self.last_logits = kept_logits

"""A KV cache that grows in place.

transformers' DynamicLayer concatenates on every append, reallocating the whole
layer each time. Over a long session that is, per append and per layer, one
allocation of a size never seen before; on a GPU the first session to reach a
new size paid for fresh device allocations (measured on an H100: the same turn
took 2-3x longer for whichever of two sessions ran it first). Here each layer
keeps spare room (grown by half, in steps of `GRAIN` tokens): appends write
into it, crops only shorten the view, and eviction compacts in place.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

GRAIN = 256


class GrowingLayer(DynamicLayer):
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self.key_room: torch.Tensor | None = None
        self.value_room: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.key_room is None or end > self.key_room.shape[-2]:
            self._grow(key_states, value_states, end)
        assert self.key_room is not None and self.value_room is not None
        if key_states.shape[0] != self.key_room.shape[0]:
            raise ValueError("the session cache holds one conversation (batch size 1)")
        self.key_room[..., self.length:end, :] = key_states
        self.value_room[..., self.length:end, :] = value_states
        self._view(end)
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, end: int) -> None:
        old = 0 if self.key_room is None else self.key_room.shape[-2]
        room = -(-max(end, old + old // 2) // GRAIN) * GRAIN
        keys = key_states.new_empty((*key_states.shape[:2], room, key_states.shape[-1]))
        values = value_states.new_empty((*value_states.shape[:2], room, value_states.shape[-1]))
        if self.length:
            keys[..., :self.length, :] = self.keys
            values[..., :self.length, :] = self.values
        self.key_room, self.value_room = keys, values

    def _view(self, length: int) -> None:
        assert self.key_room is not None and self.value_room is not None
        self.length = length
        self.keys = self.key_room[..., :length, :]
        self.values = self.value_room[..., :length, :]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to drop")
        if tokens_to_remove and self.is_initialized:
            self._view(max(0, self.length + tokens_to_remove))

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the cached tokens at `index` (sorted), moved to the front."""
        if not self.is_initialized or self.length == 0:
            return
        kept_keys, kept_values = self.keys[..., index, :], self.values[..., index, :]
        assert self.key_room is not None and self.value_room is not None
        self.key_room[..., :len(index), :] = kept_keys
        self.value_room[..., :len(index), :] = kept_values
        self._view(len(index))

    # Refused, not unfinished: widening would leave the spare room out of step, and the
    # session never widens (ask_many scores every candidate in one row).
    def batch_repeat_interleave(self, repeats: int) -> None:
        raise RuntimeError("the session cache holds one conversation (batch size 1)")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise RuntimeError("the session cache holds one conversation (batch size 1)")


def growing_cache(config: PretrainedConfig) -> DynamicCache:
    """A DynamicCache whose full-attention layers grow in place (sliding ones stay stock)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache


def cache_bytes(cache: DynamicCache) -> int:
    """Memory the cache holds, spare room included (what a budget must count)."""
    total = 0
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        if isinstance(layer, GrowingLayer) and layer.key_room is not None:
            tensors = (layer.key_room, layer.value_room)
        else:
            tensors = (layer.keys, layer.values)
        total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
    return total

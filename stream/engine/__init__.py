"""The engine: one model kept warm across the conversation in its KV cache.

`Session` appends frames and utterances incrementally (explicit positions,
M-RoPE for Qwen2.5-VL), biases an utterance's attention toward its speaker
(`attention`), answers questions without touching the conversation state, and
evicts the oldest frames under a context budget. `backends` hold what differs
between model families; `loading` finds real checkpoints on disk; `predict` is
the pipeline stage that asks the per-turn questions.
"""

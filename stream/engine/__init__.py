"""The engine: a language model kept warm across the conversation (work in progress, issue 4).

What exists: the token ledger and a KV-cached text session with exact cache
restore after questions. Not yet: multimodal backends (Qwen2.5-VL M-RoPE,
LLaVA-NeXT-Video, InternVL3), speaker-aware biased attention, eviction, bench.
"""

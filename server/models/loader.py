"""Loads a configured model's weights and tokenizer onto its device."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from server.config import ModelSpec, ServerSettings
from server.engine.media import is_multimodal
from server.engine.quantized import WeightFormat

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PLAIN_DEVICES = ("cpu", "cuda", "mps")


class ModelLoadError(Exception):
    pass


@dataclass(slots=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    dtype: torch.dtype
    device: str
    from_gguf: bool = False
    # Models that take images or audio: the checkpoint's processor (AutoProcessor), which turns
    # them into the model's inputs and expands their placeholder tokens.
    processor: Any = None

    @property
    def input_modalities(self) -> tuple[str, ...]:
        if self.processor is None:
            return ("text",)
        found = ["text"]
        if getattr(self.processor, "image_processor", None) is not None:
            found.append("image")
        if getattr(self.processor, "feature_extractor", None) is not None:
            found.append("audio")
        return tuple(found)

    def weight_format(self, setting: str) -> WeightFormat | None:
        """models.yaml `quantization` for this model: "auto" keeps a GGUF file's 4-bit weights
        4-bit where the model runs on the CPU (the kernels' only device so far), and means nothing
        for other sources; "none": as loaded."""
        if setting == "none" or (setting == "auto" and not (self.from_gguf and self.device == "cpu")):
            return None
        return cast(WeightFormat, setting)


@dataclass(slots=True, frozen=True)
class ResolvedSource:
    location: str  # a local directory or a hub repository id
    gguf_file: str | None
    is_local: bool


def resolve_source(spec: ModelSpec, base_dir: Path) -> ResolvedSource:
    src = spec.source
    if src.package:
        found = importlib.util.find_spec(src.package)
        if found is None or not found.origin:
            raise ModelLoadError(f"model {spec.id!r}: Python package {src.package!r} is not installed")
        return ResolvedSource(str(Path(found.origin).parent), src.file, True)
    if src.hub:
        return ResolvedSource(src.hub, src.file, False)
    assert src.path is not None
    path = Path(os.path.expanduser(src.path))
    if not path.is_absolute():
        path = base_dir / path
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedSource(str(path.parent), path.name, True)
    if not path.is_dir():
        raise ModelLoadError(f"model {spec.id!r}: {path} is neither a directory nor a .gguf file")
    return ResolvedSource(str(path), src.file, True)


def pick_device(spec: ModelSpec) -> str | dict[str, int | str]:
    if spec.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec.device


def pick_dtype(spec: ModelSpec, device: str | dict[str, int | str]) -> torch.dtype:
    if spec.dtype != "auto":
        return _DTYPES[spec.dtype]
    on_cuda = not isinstance(device, str) or device.startswith("cuda") or device in ("balanced", "sequential")
    if on_cuda and torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # float32 on every CPU. In bfloat16 a batched matrix multiply rounds differently from a
    # single-row one, so a greedy answer would depend on who else shares the batch: measured on an
    # AVX-512 BF16 EPYC, 9 of 16 greedy outputs changed beside 15 other requests (float32: 0 of
    # 16), for 8 % more speed at one stream and none at 16. Without native bfloat16 (AVX2 only),
    # PyTorch emulates it and batched bfloat16 ran 2-6x slower than float32 besides.
    return torch.float32


def warn_about_dtype(spec: ModelSpec, dtype: torch.dtype, device: str | dict[str, int | str]) -> None:
    """A reduced precision asked for on the CPU: said once at start-up, with what it costs."""
    if not (isinstance(device, str) and device == "cpu") or dtype == torch.float32:
        return
    speed = "native" if dtype == torch.bfloat16 and _cpu_has_native_bf16() else "emulated (slow)"
    logger.warning(
        "model %s: %s on the CPU (%s here): greedy output may change with the other requests in "
        "the batch; float32 keeps it the same",
        spec.id,
        str(dtype).removeprefix("torch."),
        speed,
    )


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def load_model(
    spec: ModelSpec, settings: ServerSettings, base_dir: Path, on_phase: Callable[[str], None] | None = None
) -> LoadedModel:
    """`on_phase`: told what loading does now (for /health; the console shows progress bars)."""
    phase = on_phase or (lambda _: None)
    source = resolve_source(spec, base_dir)
    device = pick_device(spec)
    dtype = pick_dtype(spec, device)
    warn_about_dtype(spec, dtype, device)
    location, gguf_file = source.location, source.gguf_file
    if gguf_file:
        phase("converting the GGUF file (once)")
        location, gguf_file = converted_gguf(spec, source, settings), None
    phase("loading the tokenizer")
    options: dict[str, Any] = {"revision": spec.source.revision, "trust_remote_code": spec.trust_remote_code}
    config = AutoConfig.from_pretrained(location, **options)
    processor = None
    model_class: Any = AutoModelForCausalLM
    if is_multimodal(config):
        logger.info("model %s: loading its processor (images / audio) from %s", spec.id, location)
        try:
            processor = AutoProcessor.from_pretrained(location, **options)
        except Exception as exc:  # a missing optional package (torchvision for Qwen2-VL) among others
            raise ModelLoadError(
                f"model {spec.id!r}: its processor ({config.model_type}) does not load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        tokenizer = processor.tokenizer
        model_class = _multimodal_class(config)
    else:
        logger.info("model %s: loading tokenizer from %s", spec.id, location)
        tokenizer = AutoTokenizer.from_pretrained(location, **options)
    plain_device = isinstance(device, str) and device.split(":")[0] in _PLAIN_DEVICES
    phase("loading the weights")
    logger.info("model %s: loading weights (%s) onto %s", spec.id, str(dtype).removeprefix("torch."), device)
    model = model_class.from_pretrained(
        location,
        revision=spec.source.revision,
        dtype=dtype,
        device_map=None if plain_device else device,
        trust_remote_code=spec.trust_remote_code,
    )
    if plain_device and isinstance(device, str):
        model = model.to(device)
    model.eval()
    placed = device if isinstance(device, str) else "device_map"
    return LoadedModel(
        model, tokenizer, dtype, placed, from_gguf=source.gguf_file is not None, processor=processor
    )


def _multimodal_class(config: Any) -> Any:
    """The checkpoint's own class (its architecture's name), else the image-text-to-text auto class."""
    for name in getattr(config, "architectures", None) or ():
        found = getattr(transformers, name, None)
        if found is not None:
            return found
    return AutoModelForImageTextToText


def converted_gguf(spec: ModelSpec, source: ResolvedSource, settings: ServerSettings) -> str:
    """GGUF files take transformers tens of seconds to parse and dequantize; do it once and keep a
    plain checkpoint in the cache, keyed by the file's identity."""
    assert source.gguf_file is not None
    if source.is_local:
        file_path = Path(source.location) / source.gguf_file
        if not file_path.is_file():
            raise ModelLoadError(f"model {spec.id!r}: GGUF file {file_path} does not exist")
        identity = f"{file_path.name}|{_content_digest(file_path)}"
    else:
        identity = f"hub:{source.location}|{source.gguf_file}|{spec.source.revision}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:20]
    target = Path(settings.cache_dir) / "gguf" / key
    if (target / "config.json").is_file():
        logger.info("model %s: using the converted GGUF checkpoint in %s", spec.id, target)
        return str(target)
    logger.info("model %s: converting GGUF %s once into %s (this takes a while)", spec.id, identity, target)
    convert_gguf(source.location, source.gguf_file, target, spec.source.revision)
    return str(target)


def _content_digest(path: Path, edge: int = 16 << 20) -> str:
    """Size plus a hash of the first and last 16 MiB: the same file in another virtual environment
    (another clone, a reinstall) hits the cache, and hashing a multi-GB file stays cheap."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(edge))
        if size > edge:
            f.seek(max(edge, size - edge))
            digest.update(f.read(edge))
    return digest.hexdigest()


def convert_gguf(location: str, gguf_file: str, target: Path, revision: str | None = None) -> None:
    """Dequantizes a GGUF file with transformers and saves it as a plain checkpoint directory."""
    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf_file, revision=revision)
    # The weights are dequantized to plain tensors; drop the GGUF quantizer so they can be saved.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (target / "config.json").is_file():  # another process finished first
            shutil.rmtree(tmp)
            return
        shutil.rmtree(target, ignore_errors=True)  # a half-written one from an interrupted run
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""models.yaml -> typed, validated configuration (read once at start-up)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class ConfigError(Exception):
    """A broken configuration file; the message names the file, the entry and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSource(_Strict):
    """Where the weights come from: exactly one of `path`, `hub`, `package`.

    `file` names a GGUF file inside that directory, hub repository or package.
    """

    path: str | None = None
    hub: str | None = None
    package: str | None = None
    file: str | None = None
    revision: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("path", "hub", "package") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of 'path', 'hub' or 'package'")
        if self.package and not self.file:
            raise ValueError("'package' needs 'file': the file inside the package to load")
        if self.revision and not self.hub:
            raise ValueError("'revision' only applies to 'hub'")
        return self

    def describe(self) -> str:
        where = self.path or self.hub or f"package {self.package}"
        return f"{where}/{self.file}" if self.file else str(where)


class SamplingDefaults(_Strict):
    """Used where a request leaves the field out."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None


class RequestLimits(_Strict):
    """Per-request limits; each violation is a 400 naming the field."""

    # Images, audio and files travel inside the body (base64): room for a few photos.
    max_body_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    max_messages: Annotated[int, Field(ge=1)] = 1024
    max_n: Annotated[int, Field(ge=1, le=128)] = 128
    max_tokens: Annotated[int, Field(ge=1)] | None = None  # None: up to the context length
    max_tools: Annotated[int, Field(ge=0, le=128)] = 128
    max_stop: Annotated[int, Field(ge=0, le=4)] = 4
    # Arrays and objects nested deeper than this in a request body (a JSON schema counts too).
    max_json_depth: Annotated[int, Field(ge=8, le=256)] = 64
    # The grammar of one request (its response_format schema, or its tools with their schemas).
    max_grammar_bytes: Annotated[int, Field(ge=1024)] = 128 * 1024
    # Media in one request's messages (a PDF's page images count as images).
    max_images: Annotated[int, Field(ge=0)] = 16
    max_image_pixels: Annotated[int, Field(ge=1)] = 40_000_000  # width x height of one image
    max_audios: Annotated[int, Field(ge=0)] = 4
    max_audio_seconds: Annotated[float, Field(gt=0)] = 600.0  # one audio part
    max_files: Annotated[int, Field(ge=0)] = 8
    max_pdf_pages: Annotated[int, Field(ge=1)] = 100  # one PDF


class MediaSettings(_Strict):
    """How media in requests is fetched (see README: images, audio and files)."""

    # image_url parts with http(s) URLs are fetched; False: data URIs only.
    allow_urls: bool = True
    max_bytes: Annotated[int, Field(ge=1024)] = 20 * 1024 * 1024  # one fetched or decoded item
    timeout_s: Annotated[float, Field(gt=0)] = 10.0  # one fetch, redirects included
    max_redirects: Annotated[int, Field(ge=0, le=20)] = 5
    # Host names (`example.com`, `*.example.com`) or addresses / networks (`10.1.2.0/24`). When
    # given, only these are fetched; an address or network listed here may be private (a
    # host name never unlocks one: private, loopback, link-local and metadata addresses are
    # refused unless listed by address).
    allowed_hosts: tuple[str, ...] = ()
    denied_hosts: tuple[str, ...] = ()


class SpeculationSettings(_Strict):
    """Speculative decoding without a draft model: proposed tokens verified in one step."""

    # "ngram": prompt lookup (continue the latest earlier occurrence of the last tokens, in the
    # prompt and the output) for every request; "none": only a request's own `prediction`.
    method: Literal["none", "ngram"] = "ngram"
    max_tokens: Annotated[int, Field(ge=1, le=64)] = 8  # proposed per sequence and step (ngram)
    prediction_tokens: Annotated[int, Field(ge=1, le=64)] = 16  # the same for `prediction`
    # Prompt lookup only in steps where at most this many sequences decode (a request's own
    # prediction is always verified).
    max_batch: Annotated[int, Field(ge=1)] = 4


class EngineSettings(_Strict):
    """Continuous batching limits (see README: models.yaml reference)."""

    max_running: Annotated[int, Field(ge=1, le=1024)] = 16
    max_kv_tokens: Annotated[int, Field(ge=16)] | None = None  # default: max_running x context length
    max_batch_tokens: Annotated[int, Field(ge=16)] = 512
    max_waiting: Annotated[int, Field(ge=1)] = 256
    # A request not admitted to the batch within this many seconds gets 429 (None: it waits on).
    max_queue_wait_s: Annotated[float, Field(gt=0)] | None = 60.0
    # KV slots that prompt-cache breakpoints may keep pinned (default: half of max_running).
    max_pinned_slots: Annotated[int, Field(ge=0)] | None = None
    speculation: SpeculationSettings = SpeculationSettings()


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class ReasoningSettings(_Strict):
    # Used where a request has no reasoning_effort (None: the chat template's own default).
    default_effort: ReasoningEffort | None = None
    # How thinking is told apart from the answer; None picks it from the chat template
    # (`none`: the model's output is all answer, and reasoning_effort is refused).
    parser: Literal["think", "granite", "harmony", "none"] | None = None


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> Any:
    """Seconds as a number, or "30s" / "5m" / "1h" (Ollama's keep_alive style); -1: forever."""
    if isinstance(value, str):
        text = value.strip().lower()
        unit = _DURATION_UNITS.get(text[-1:]) if text else None
        try:
            return float(text[:-1]) * unit if unit is not None else float(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a duration (seconds, or e.g. 30s, 5m, 1h; -1: never)"
            ) from None
    return value


class ModelSpec(_Strict):
    id: Annotated[str, Field(min_length=1, max_length=256)]
    source: ModelSource
    # Other names requests and /v1/models may use for it (`gpt-4o-mini`).
    aliases: tuple[Annotated[str, Field(min_length=1, max_length=256)], ...] = ()
    # "startup": loaded when the server starts; "on_demand": on its first request. Default: the
    # first model in the file at start-up, every other one on demand.
    load: Literal["startup", "on_demand"] | None = None
    # Idle seconds (or "5m") after which it is unloaded; -1: never. Default: never for a model
    # loaded at start-up, 5 minutes for one loaded on demand.
    keep_alive: float | None = None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        value = parse_duration(value)
        if isinstance(value, int | float) and value < 0 and value != -1:
            raise ValueError("keep_alive must be 0 or more seconds, or -1 (never unloaded)")
        return value

    dtype: Dtype = "auto"  # the activations' dtype
    # Linear weights kept as int8 (a scale per row) or int4 (groups of 32): less memory, faster
    # decoding on the CPU (the CPU only, so far). "auto": a GGUF file's 4-bit weights stay 4-bit
    # on the CPU, anything else as loaded; "none": as loaded.
    quantization: Literal["auto", "none", "int8", "int4"] = "auto"
    # "auto", "cpu", "cuda", "cuda:N", an accelerate device_map name ("balanced", ...) or a mapping.
    device: str | dict[str, int | str] = "auto"
    context_length: Annotated[int, Field(ge=16)] | None = None
    chat_template: str | None = None  # a Jinja template, or a path to a file holding one
    trust_remote_code: bool = False
    # The tool-call format; None picks it from the chat template's markers (Hermes when it has none).
    tool_parser: (
        Literal[
            "hermes",
            "llama3_json",
            "mistral",
            "mistral_args",
            "pythonic",
            "granite",
            "phi4_mini",
            "deepseek",
            "harmony",
            "qwen3_xml",
            "gemma",
        ]
        | None
    ) = None
    defaults: SamplingDefaults = SamplingDefaults()
    reasoning: ReasoningSettings = ReasoningSettings()
    engine: EngineSettings = EngineSettings()


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "openweights-server")


def _default_store_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return "sqlite:///" + os.path.join(base, "openweights-server", "completions.sqlite3")


class ServerSettings(_Strict):
    # Converted GGUF checkpoints are kept here so later starts skip the slow conversion.
    cache_dir: str = Field(default_factory=_default_cache_dir)
    # Where `store: true` completions go: `sqlite:///path/to/file.sqlite3` (created on first start;
    # a relative path is relative to the config file) or `postgresql://user:pass@host:port/db`.
    store_url: str = Field(default_factory=_default_store_url)
    # API keys. None configured: the /v1 routes are open (and start-up says so). Keys come from a
    # YAML file (`keys: [{key: ..., project: ...}]`, relative to the config file) and/or from the
    # environment variable named here (`KEY=PROJECT,KEY2=PROJECT2`); never from this file itself.
    api_keys_file: str | None = None
    api_keys_env: str | None = None
    limits: RequestLimits = RequestLimits()
    media: MediaSettings = MediaSettings()
    # The most memory the loaded models may take together, each counted as its weights plus its
    # KV budget: bytes for every device, or per device ({cpu: 8000000000, cuda: 70000000000},
    # `cuda` for each GPU or `cuda:N`). Least recently used idle models are unloaded to make room;
    # None: no limit.
    max_loaded_bytes: Annotated[int, Field(ge=1)] | dict[str, Annotated[int, Field(ge=1)]] | None = None
    # A generation still running this many seconds after its request arrived is cut short: its
    # choices end with finish_reason "length" (None: no limit).
    request_timeout_s: Annotated[float, Field(gt=0)] | None = 600.0
    # On SIGTERM: how long running generations may go on before they are cancelled.
    shutdown_timeout_s: Annotated[float, Field(ge=0)] = 30.0
    # A request body not received whole within this many seconds is answered 408 (slow clients).
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    # A stream whose client takes nothing for this long is given up (its choices were already
    # parked, out of the batch, once their unread output piled up). None: never.
    stalled_stream_timeout_s: Annotated[float, Field(gt=0)] | None = 30.0
    # Each connection's kernel send buffer (SO_SNDBUF; Linux doubles it). Left to autotune, Linux
    # takes ~3 MB from a client that reads nothing before a write blocks (thousands of tokens
    # nobody reads, while their sequences hold batch slots); with 64 KiB a write blocks after about
    # 300 KB, and the stream's choices are parked. None: the system's default.
    send_buffer_bytes: Annotated[int, Field(ge=4096)] | None = 64 * 1024
    # GET /metrics needs an API key (any configured one) when true.
    metrics_require_key: bool = False
    # Log lines as plain text or one JSON object per line.
    log_format: Literal["text", "json"] = "text"
    # Debugging only: log every prompt and every generated text (never on by default).
    log_content: bool = False
    # Browser origins allowed to call the API (CORS), e.g. ["https://app.example.com"]; none by default.
    cors_origins: list[str] = Field(default_factory=list)

    @field_validator("store_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("must be a sqlite:///PATH or a postgresql://... URL")
        return value


class ServerConfig(_Strict):
    models: Annotated[list[ModelSpec], Field(min_length=1)]
    server: ServerSettings = ServerSettings()
    base_dir: Path = Path(".")  # the config file's folder: relative paths resolve against it

    @model_validator(mode="after")
    def _unique_ids(self) -> ServerConfig:
        seen: set[str] = set()
        for spec in self.models:
            for name in (spec.id, *spec.aliases):
                if name in seen:
                    raise ValueError(f"model id or alias {name!r} is declared twice")
                seen.add(name)
        return self

    @model_validator(mode="after")
    def _room_for_every_choice(self) -> ServerConfig:
        """A request's `n` choices are queued together: a queue shorter than the largest `n`
        allowed would answer such a request 429 forever (clients retry a 429)."""
        max_n = self.server.limits.max_n
        for spec in self.models:
            if spec.engine.max_waiting < max_n:
                raise ValueError(
                    f"model {spec.id!r}: engine.max_waiting ({spec.engine.max_waiting}) is below "
                    f"server.limits.max_n ({max_n}); raise it, or lower max_n"
                )
        return self


def _where(raw: Any, loc: tuple[int | str, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        index = loc[1]
        entry = f"models[{index}]"
        with contextlib.suppress(KeyError, IndexError, TypeError):
            entry += f" (id {raw['models'][index]['id']!r})"
        field = ".".join(str(p) for p in loc[2:]) or "(the entry)"
        return f"entry {entry}, field '{field}'"
    return f"field '{'.'.join(str(p) for p in loc) or '(top level)'}'"


def load_config(path: str | Path) -> ServerConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'models' list at the top level")
    try:
        return ServerConfig.model_validate({**raw, "base_dir": path.resolve().parent})
    except ValidationError as exc:
        problems = [f"{_where(raw, tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path}: " + "; ".join(problems)) from exc

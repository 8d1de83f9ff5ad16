"""Training configuration: one YAML/TOML file -> nested dataclasses, `key.sub=value` overrides, validation.

Defaults are the official Self-Forcing DMD hyper-parameters (selfforcing.md §7.5-7.6).
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from sf_core.config import ModelConfig, StreamConfig
from sf_core.media.outputs import OutputError, check_folder

OBJECTIVES = ("dmd", "sid", "gan", "ode", "teacher_forcing", "diffusion_forcing")
NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                   "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
                   "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


TINY_PREFIX = "tiny:"  # data.text_encoder "tiny:umt5": a tiny random umT5 written into the run folder


class TrainConfigError(ValueError):
    """A training config file or override is invalid."""


@dataclass
class RunSection:
    output_dir: str = "runs/self_forcing_dmd"
    seed: int = 0
    max_steps: int = 600                 # `step` counts critic updates (one generator update per ratio)
    log_every: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 3            # 0 keeps all
    resume: str = "auto"                 # auto (latest in output_dir) | never | <checkpoint folder>
    export_name: str = "generator.safetensors"
    checkpoint_format: str = "full"      # full: rank 0 writes gathered safetensors | sharded: each rank
                                         # writes its shards (torch.distributed.checkpoint), nothing gathered


@dataclass
class ModelSection:
    generator: str | None = None         # ode_init.pt / Wan safetensors / our export; None = random `config`
    teacher: str | None = None           # frozen real score; None = a copy of the generator's start weights
    critic: str | None = None            # trainable fake score; None = a copy of the teacher's weights
    config: dict = field(default_factory=dict)  # ModelConfig fields for random init (empty = Wan2.1 1.3B)
    dtype: str = "bfloat16"              # weights dtype when not sharded with mixed precision
    attention: str = "auto"
    init_seed: int = 0
    init_scale: float = 0.0              # > 0: random init is N(0, init_scale²) everywhere (tiny test models)


@dataclass
class ObjectiveSection:
    name: str = "dmd"
    factory: str = "sf_core.train.objectives:build_objective"  # "module:function" (custom objectives)
    options: dict = field(default_factory=dict)                 # passed to the factory as its cfg dict


@dataclass
class OptimSection:
    lr_generator: float = 2.0e-6
    lr_critic: float = 4.0e-7
    discriminator_lr_multiplier: float = 1.0  # discriminator lr = lr_critic × this
    betas_generator: tuple[float, float] = (0.0, 0.999)
    betas_critic: tuple[float, float] = (0.0, 0.999)
    weight_decay_generator: float = 0.01
    weight_decay_critic: float = 0.01
    grad_clip_generator: float = 10.0
    grad_clip_critic: float = 10.0
    grad_accum: int = 1                  # micro-batches per optimizer step


@dataclass
class EMASection:
    enabled: bool = True
    decay: float = 0.99
    start_step: int = 200


@dataclass
class LoRASection:
    enabled: bool = False
    rank: int = 16
    alpha: float = 16.0
    targets: tuple[str, ...] = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                                "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


@dataclass
class DataSection:
    prompts: str | None = None           # text file, one prompt per line
    text_encoder: str | None = None      # umT5 weights (ComfyUI safetensors or official .pth)
    tokenizer: str | None = None
    text_encoder_offload: bool = False   # keep umT5 weights on the CPU, on the GPU only while encoding
    embeddings_cache: str | None = None  # folder; default <output_dir>/text_cache
    negative_prompt: str = NEGATIVE_PROMPT
    ode_pairs: str | None = None         # sf_core.train.ode_pairs file: `latents` [N, K, F, C, h, w]
    latents: str | None = None           # `latents` [N, F, C, h, w] (+ `context` or prompts); GAN/TF/DF data
    batch_size: int = 1                  # per rank and micro-batch
    latent_frames: int = 21
    latent_height: int = 60
    latent_width: int = 104
    shuffle: bool = True


@dataclass
class DistributedSection:
    strategy: str = "auto"               # auto (fsdp on CUDA, ddp otherwise) | fsdp | ddp | none
    backend: str = "auto"                # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    mixed_precision: bool = True         # FSDP2 bf16 params, fp32 reduction (CUDA only)
    shard_frozen: bool = True            # also shard the teacher with FSDP2
    timeout_minutes: int = 30
    device: str = "auto"                 # auto | cpu | cuda


@dataclass
class TrainSection:
    gradient_checkpointing: bool = True  # the generator: recompute each chunk's exit-step forward
    checkpoint_granularity: str = "block"  # block: that forward recomputed block by block | chunk: as one unit
    score_checkpointing: bool = True     # critic / teacher: recompute each block of forwards with gradients
    tf32: bool = True


@dataclass
class LoggingSection:
    progress: bool = True
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "self-forcing"


@dataclass
class SamplesSection:
    every: int = 0                       # steps between sample clips; 0 = never
    prompts: tuple[str, ...] = ()
    num_chunks: int = 7
    seed: int = 0


@dataclass
class TrainConfig:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    stream: dict = field(default_factory=dict)          # StreamConfig fields; empty = official defaults
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    optim: OptimSection = field(default_factory=OptimSection)
    ema: EMASection = field(default_factory=EMASection)
    lora: LoRASection = field(default_factory=LoRASection)
    data: DataSection = field(default_factory=DataSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    train: TrainSection = field(default_factory=TrainSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    samples: SamplesSection = field(default_factory=SamplesSection)

    # -- derived -------------------------------------------------------------------------------------------
    def model_config(self) -> ModelConfig:
        raw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.model.config.items()}
        return ModelConfig(**raw)

    def stream_config(self) -> StreamConfig:
        raw = dict(self.stream)
        if "denoising_steps" in raw:
            raw["denoising_steps"] = tuple(float(s) for s in raw["denoising_steps"])
        return StreamConfig(**raw)

    def objective_options(self) -> dict:
        """The cfg dict the objective factory receives: the stream and shape settings shared with the rest
        of the run, overridden by anything set in `objective.options`."""
        sc = self.stream_config()
        return {"latent_shape": [self.data.latent_frames, self.model_config().in_dim,
                                 self.data.latent_height, self.data.latent_width],
                "chunk_frames": sc.chunk_frames, "denoising_steps": list(sc.denoising_steps),
                "warp": sc.warp_denoising_step, "shift": sc.shift, "context_noise": sc.context_noise,
                "gradient_checkpointing": self.train.gradient_checkpointing,
                **self.objective.options}

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- building from raw dicts ------------------------------------------------------------------------------
def _coerce(value, annotation, where: str):
    """Check/convert one leaf value against its dataclass annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TrainConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TrainConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):  # a NaN/Inf learning rate trains to NaN silently
            raise TrainConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TrainConfigError(f"{where}: expected a string, got {value!r}")
    if annotation is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise TrainConfigError(f"{where}: expected a mapping, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise TrainConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    return value


def _build(cls, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise TrainConfigError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise TrainConfigError(f"{where or 'config'}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, key)
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[list[str], object]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML: numbers, true/false, null, [lists])."""
    if "=" not in text:
        raise TrainConfigError(f"override {text!r}: expected key.sub=value, e.g. optim.lr_generator=1e-5")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise TrainConfigError(f"override {text!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise TrainConfigError(f"override {text!r}: value is not valid YAML: {e}") from e
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # YAML 1.1 reads "1e-5" as a string
    return path, value


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise TrainConfigError(f"{path}: cannot parse: {e}") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TrainConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return _fix_yaml_floats(raw)


def _fix_yaml_floats(value):
    if isinstance(value, dict):
        return {k: _fix_yaml_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix_yaml_floats(v) for v in value]
    if isinstance(value, str) and _looks_numeric(value) and any(c in value.lower() for c in "e."):
        return float(value)
    return value


def load_config(path: str | Path | None = None, overrides: list[str] = (), check_files: bool = True) -> TrainConfig:
    """Defaults <- file (with `base: other.yaml` inheritance) <- `key.sub=value` overrides; validated
    (`check_files=False` skips the checks that input files exist)."""
    raw = _read_with_base(Path(path)) if path is not None else {}
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise TrainConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    cfg = _build(TrainConfig, raw, "")
    validate(cfg, check_files)
    return cfg


def _read_with_base(path: Path, seen: tuple = ()) -> dict:
    if path.resolve() in seen:
        raise TrainConfigError(f"{path}: circular `base:` chain {[str(p) for p in seen]}")
    raw = read_file(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _merge(_read_with_base(path.parent / base, seen + (path.resolve(),)), raw)


def validate(cfg: TrainConfig, check_files: bool = True) -> None:
    """Cross-field checks with actionable messages (`TrainConfigError("<key>: <what to change>")`)."""
    _check_objective(cfg)
    mc = _check_model(cfg)
    _check_stream(cfg, mc)
    _check_numbers(cfg)
    _check_choices(cfg)
    if check_files:
        _check_files(cfg)
    _check_data(cfg)


def _bad(key: str, msg: str):
    raise TrainConfigError(f"{key}: {msg}")


def _check_objective(cfg: TrainConfig) -> None:
    if cfg.objective.name not in OBJECTIVES and cfg.objective.factory.startswith("sf_core.train.objectives:"):
        _bad("objective.name", f"unknown objective {cfg.objective.name!r}; choose one of {list(OBJECTIVES)}")
    if ":" not in cfg.objective.factory:
        _bad("objective.factory", f"expected 'module:function', got {cfg.objective.factory!r}")


def _check_model(cfg: TrainConfig) -> ModelConfig:
    try:
        mc = cfg.model_config()
    except TypeError as e:
        _bad("model.config", f"{e}; valid keys: {[f.name for f in dataclasses.fields(ModelConfig)]}")
    if mc.dim % mc.num_heads:
        _bad("model.config", f"dim {mc.dim} is not divisible by num_heads {mc.num_heads}")
    return mc


def _check_stream(cfg: TrainConfig, mc: ModelConfig) -> None:
    try:
        sc = cfg.stream_config()
    except TypeError as e:
        _bad("stream", f"{e}; valid keys: {[f.name for f in dataclasses.fields(StreamConfig) if f.name != 'extra']}")
    if sc.chunk_frames < 1 or cfg.data.latent_frames % sc.chunk_frames:
        _bad("data.latent_frames", f"{cfg.data.latent_frames} is not a multiple of stream.chunk_frames "
                                   f"{sc.chunk_frames}")
    if sc.window != -1 and sc.window < sc.chunk_frames:
        _bad("stream.window", f"{sc.window} is smaller than one chunk ({sc.chunk_frames} frames); use -1 for global")
    _, ph, pw = mc.patch_size
    if cfg.data.latent_height % ph or cfg.data.latent_width % pw:
        _bad("data.latent_height", f"latent size {cfg.data.latent_height}×{cfg.data.latent_width} must be a "
                                   f"multiple of the patch {ph}×{pw}")


def _check_numbers(cfg: TrainConfig) -> None:
    for key, val in (("run.max_steps", cfg.run.max_steps), ("data.batch_size", cfg.data.batch_size),
                     ("optim.grad_accum", cfg.optim.grad_accum), ("run.log_every", cfg.run.log_every),
                     ("lora.rank", cfg.lora.rank)):
        if val < 1:
            _bad(key, f"must be >= 1, got {val}")
    for key, val in (("optim.lr_generator", cfg.optim.lr_generator), ("optim.lr_critic", cfg.optim.lr_critic)):
        if val <= 0:
            _bad(key, f"must be > 0, got {val}")
    if not 0.0 <= cfg.ema.decay < 1.0:
        _bad("ema.decay", f"must be in [0, 1), got {cfg.ema.decay}")


CHOICES = {"distributed.strategy": ("auto", "fsdp", "ddp", "none"), "distributed.backend": ("auto", "nccl", "gloo"),
           "distributed.device": ("auto", "cpu", "cuda"), "model.dtype": ("float32", "bfloat16", "float16"),
           "run.checkpoint_format": ("full", "sharded"), "train.checkpoint_granularity": ("chunk", "block")}


def _check_choices(cfg: TrainConfig) -> None:
    for key, options in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in options:
            _bad(key, f"{value!r}; choose {', '.join(options[:-1])} or {options[-1]}")
    if cfg.run.resume not in ("auto", "never") and not Path(cfg.run.resume).is_dir():
        _bad("run.resume", f"{cfg.run.resume!r} is neither auto/never nor an existing checkpoint folder")


def _check_files(cfg: TrainConfig) -> None:
    files = [(f"model.{k}", getattr(cfg.model, k)) for k in ("generator", "teacher", "critic")]
    files += [(f"data.{k}", getattr(cfg.data, k)) for k in ("prompts", "text_encoder", "ode_pairs", "latents")]
    for key, p in files:
        if p is not None and not p.startswith(TINY_PREFIX) and not Path(p).exists():
            _bad(key, f"file {p} does not exist")
    try:  # before any model is built
        check_folder("run.output_dir", Path(cfg.run.output_dir))
    except OutputError as exc:
        raise TrainConfigError(str(exc)) from None
    if cfg.data.prompts is not None and cfg.data.text_encoder is None:
        cache = Path(cfg.data.embeddings_cache or Path(cfg.run.output_dir) / "text_cache")
        if not cache.is_dir():
            _bad("data.text_encoder", "prompts need a text encoder (umT5 weights) unless data.embeddings_cache "
                                      "already holds their embeddings")


def _check_data(cfg: TrainConfig) -> None:
    """Each objective's own inputs."""
    name = cfg.objective.name
    if name == "ode" and cfg.data.ode_pairs is None:
        _bad("data.ode_pairs", "the ode objective needs ODE pairs (generate them with the ode_pairs tool)")
    if name == "gan" and cfg.data.latents is None:
        _bad("data.latents", "the gan objective needs real latents (a safetensors file with `latents`)")
    if name in ("dmd", "sid", "gan") and cfg.data.prompts is None:
        _bad("data.prompts", f"the {name} objective needs a prompts file (one prompt per line)")
    if name in ("teacher_forcing", "diffusion_forcing") and not cfg.data.latents:
        _bad("data.latents", f"the {name} objective needs clean latents (a safetensors file with "
                             "`latents` [N, F, C, h, w])")


def describe(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False)

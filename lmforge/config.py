"""Typed configuration: one dataclass per concern, the seed's defaults, and their TOML form
(the files themselves are read and written by ``lmforge.tomlfile``).

Precedence when a run is configured: dataclass defaults < ``--config FILE.toml``
< ``--preset`` < command-line options. Every leaf field is also a command-line
option, generated from these dataclasses (see ``lmforge.cli.config_options``),
so a default lives in exactly one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from lmforge.errors import ConfigError
from lmforge.tomlfile import dumps_toml, load_toml


def doc(text: str, flag: str | None = None, **kwargs: Any) -> Any:
    """A dataclass field with a help text (and an optional CLI flag name)."""
    metadata = {"help": text}
    if flag:
        metadata["flag"] = flag
    return field(metadata=metadata, **kwargs)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:  # written so that NaN fails too
            raise ConfigError(f"--{_flag(name)} must be positive, got {value}")


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value >= 0:
            raise ConfigError(f"--{_flag(name)} must be >= 0, got {value}")


def _finite(obj: Any) -> None:
    """Refuse NaN and infinity in every float field: every comparison with NaN is False, so a
    ``--lr nan`` would otherwise pass the range checks and train on NaN."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{_flag(f.name)} must be a finite number, got {value}")


# Token-embedding rows are padded to a multiple of this on CUDA (pad_vocab_multiple = 0, "auto"): the
# head's matmuls then run at tensor-core-friendly sizes (50,257 -> 50,304 for GPT-2). It lives here,
# beside the field, rather than in device.py, so that run listings can read it without importing torch.
CUDA_VOCAB_MULTIPLE = 64


@dataclass
class ModelConfig:
    """The GPT-2 architecture."""

    vocab_size: int = doc("Vocabulary size (GPT-2 BPE: 50257).", default=50257)
    block_size: int = doc("Context length in tokens; also the training window.", default=1024)
    n_layer: int = doc("Number of transformer blocks.", default=12)
    n_head: int = doc("Attention heads per block.", default=12)
    n_embd: int = doc("Width of the residual stream.", default=768)
    dropout: float = doc("Dropout on embeddings, attention weights and residual branches.", default=0.1)
    bias: bool = doc("Biases in Linear and LayerNorm layers, as in GPT-2.", default=True)
    layer_norm_epsilon: float = doc("LayerNorm epsilon.", default=1e-5)
    arch: Literal["gpt2", "modern"] = doc(
        "gpt2 = GPT-2 exactly (LayerNorm, learned positions, GELU, tied head); modern = RMSNorm, "
        "rotary, QK-norm, ReLU², no biases, untied zero-initialised head (see --recipe).",
        default="gpt2",
    )
    n_kv_head: int = doc(
        "Key/value heads for grouped-query attention (0 = --n-head); --arch modern only.", default=0
    )
    qk_norm: bool = doc("RMSNorm on each head's queries and keys (--arch modern only).", default=False)
    document_masking: bool = doc(
        "Attention stays within a document: no token attends across an end-of-text token in its "
        "window (--arch modern only).",
        default=False,
    )
    eot_token: int = doc(
        "End-of-text token id where --document-masking starts a document (-1 = not known yet: a "
        "run takes its dataset's).",
        default=-1,
    )
    logit_softcap: float = doc(
        "Soft-cap the logits to (-c, c) with c * tanh(logits / c) (0 = off; --arch modern only).",
        default=0.0,
    )
    value_embeds: bool = doc(
        "Value embeddings: per-layer token tables added, gated per key/value head, to the attention "
        "values of alternating layers ending with the last (--arch modern only).",
        default=False,
    )
    residual_lambdas: bool = doc(
        "Learnable per-block scalars mixing the residual stream and the normalised embedding before "
        "each block: x = resid_lambda * x + x0_lambda * x0 (--arch modern only).",
        default=False,
    )
    unet_skips: bool = doc(
        "U-net skips: each block output of the first half added, with a learnable weight, to the "
        "input of its mirror block in the second half (--arch modern only).",
        default=False,
    )
    gradient_checkpointing: bool = doc(
        "Recompute block activations in backward to save memory.", default=False
    )
    pad_vocab_multiple: int = doc(
        "Pad the token-embedding/LM-head rows to a multiple of this for faster GPU matmuls "
        "(0 = auto: 64 on CUDA, none elsewhere; 1 = none). Padded ids are never predicted: loss, "
        "perplexity and sampling use the real vocab_size, and checkpoints store the real rows.",
        default=0,
    )

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token embedding and the LM head (>= ``vocab_size``)."""
        m = max(self.pad_vocab_multiple, 1)
        return -(-self.vocab_size // m) * m

    def __post_init__(self) -> None:
        _finite(self)
        _positive(self, "vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        _non_negative(self, "pad_vocab_multiple")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"--n-embd ({self.n_embd}) must be divisible by --n-head ({self.n_head})",
                "pick a width that is a multiple of the number of heads",
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        _non_negative(self, "n_kv_head", "logit_softcap")
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise ConfigError(
                f"--n-kv-head ({self.n_kv_head}) must divide --n-head ({self.n_head})",
                "each key/value head serves the same number of query heads",
            )
        if not -1 <= self.eot_token < self.vocab_size:
            raise ConfigError(
                f"--eot-token must be a token id below --vocab-size ({self.vocab_size}), "
                f"got {self.eot_token}",
                "leave it at -1: a run takes its dataset's end-of-text id",
            )
        if self.arch == "gpt2":
            modern_only = {
                "--n-kv-head": self.n_kv_head not in (0, self.n_head),
                "--qk-norm": self.qk_norm,
                "--document-masking": self.document_masking,
                "--logit-softcap": self.logit_softcap > 0,
                "--value-embeds": self.value_embeds,
                "--residual-lambdas": self.residual_lambdas,
                "--unet-skips": self.unet_skips,
            }
            for flag, given in modern_only.items():
                if given:
                    raise ConfigError(f"{flag} needs --arch modern", "add --recipe modern (or --arch modern)")
        elif self.bias:
            raise ConfigError("--arch modern has no biases", "add --no-bias, or use --recipe modern")
        if self.unet_skips and self.n_layer < 2:
            raise ConfigError(
                f"--unet-skips needs --n-layer 2 or more, got {self.n_layer}",
                "a skip joins a block of the first half to its mirror in the second half",
            )
        if self.arch == "modern" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(
                f"--arch modern needs an even head size, got {self.n_embd // self.n_head}",
                "rotary embeddings turn pairs of dimensions; pick --n-embd / --n-head even",
            )

    @property
    def kv_heads(self) -> int:
        """Key/value heads (``n_head`` unless grouped-query attention is on)."""
        return self.n_kv_head or self.n_head

    @property
    def tied_head(self) -> bool:
        """Whether the LM head is the token embedding (GPT-2) or its own matrix (modern)."""
        return self.arch == "gpt2"


@dataclass
class DataConfig:
    """Which prepared dataset, and how windows are cut from it."""

    name: str = doc(
        "Prepared dataset to train on (see `lmforge data list`).", flag="data", default="wikitext-103"
    )
    stride: int = doc(
        "Step between the starts of consecutive training windows (0 = auto: half the block size, "
        "so every token is trained on; above the block size, tokens are skipped).",
        default=0,
    )
    sampling: Literal["sliding", "random"] = doc(
        "Windows at fixed strides ('sliding') or at random offsets ('random').", default="sliding"
    )
    num_workers: int = doc("DataLoader worker processes (0 = load in the main process).", default=0)

    def __post_init__(self) -> None:
        _non_negative(self, "stride")
        _non_negative(self, "num_workers")


@dataclass
class OptimizerConfig:
    """The optimizer (AdamW, or Muon for the block matrices with AdamW for the rest) and the
    learning-rate schedule (linear warmup, then cosine decay or warmup-stable-decay to ``min_lr``)."""

    optimizer: Literal["adamw", "muon"] = doc(
        "adamw for every weight, or muon for the 2-D matrices inside the blocks (AdamW for the rest).",
        default="adamw",
    )
    schedule: Literal["cosine", "wsd"] = doc(
        "cosine = warmup then cosine decay; wsd = warmup, constant, linear decay over the last "
        "--decay-fraction of the steps.",
        default="cosine",
    )
    lr: float = doc(
        "Peak learning rate (of the block matrices: Muon's with --optimizer muon).", default=1.5e-4
    )
    embed_lr: float = doc(
        "Peak AdamW learning rate of the embeddings and vectors (norm gains, biases) (0 = --lr).",
        default=0.0,
    )
    head_lr: float = doc("Peak AdamW learning rate of an untied LM head (0 = --lr).", default=0.0)
    scalar_lr: float = doc(
        "Peak AdamW learning rate of the per-block scalars of --residual-lambdas and --unet-skips "
        "(0 = --lr).",
        default=0.0,
    )
    min_lr: float = doc(
        "Learning rate at the end of the decay (the other groups' floors keep their ratio to --lr).",
        default=1.5e-5,
    )
    warmup_steps: int = doc("Linear warmup steps.", default=4000)
    decay_fraction: float = doc("wsd: the fraction of --steps spent decaying to --min-lr.", default=0.2)
    muon_momentum: float = doc("Muon momentum (Nesterov).", default=0.95)
    muon_momentum_warmup: int = doc(
        "Steps over which Muon's momentum rises linearly from 0.85 to --muon-momentum.", default=300
    )
    weight_decay: float = doc(
        "Decoupled weight decay on the matrices, Muon's and AdamW's (not biases, norms, embeddings).",
        default=0.01,
    )
    cautious_wd: bool = doc(
        "Muon: decay a weight only where its update has the same sign (cautious weight decay; "
        "needs --weight-decay > 0 to act).",
        default=False,
    )
    ns_coefficients: Literal["muon", "polar-express"] = doc(
        "Muon's Newton-Schulz coefficients: muon = torch.optim.Muon's constant quintic; "
        "polar-express = the Polar Express per-iteration schedule (Amsel et al. 2025).",
        default="muon",
    )
    normuon: bool = doc(
        "Muon: normalise each row of the orthogonalised update by its running second moment "
        "(NorMuon), keeping the update's RMS.",
        default=False,
    )
    beta1: float = doc("AdamW beta1.", default=0.9)
    beta2: float = doc("AdamW beta2.", default=0.95)
    eps: float = doc("AdamW epsilon.", default=1e-8)
    max_grad_norm: float = doc("Clip the gradient norm to this (0 = no clipping).", default=1.0)

    def __post_init__(self) -> None:
        _finite(self)
        _positive(self, "lr")
        _non_negative(
            self, "min_lr", "warmup_steps", "weight_decay", "max_grad_norm", "eps", "embed_lr", "head_lr"
        )
        _non_negative(self, "scalar_lr")
        _non_negative(self, "muon_momentum_warmup")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ConfigError(f"--decay-fraction must be in [0, 1], got {self.decay_fraction}")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"--muon-momentum must be in [0, 1), got {self.muon_momentum}")
        if self.min_lr > self.lr:
            raise ConfigError(f"--min-lr ({self.min_lr}) must not exceed --lr ({self.lr})")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if self.optimizer != "muon":
            muon_only = {
                "--cautious-wd": self.cautious_wd,
                "--ns-coefficients": self.ns_coefficients != "muon",
                "--normuon": self.normuon,
            }
            for flag, given in muon_only.items():
                if given:
                    raise ConfigError(
                        f"{flag} needs --optimizer muon", "add --recipe modern (or --optimizer muon)"
                    )


@dataclass
class TrainConfig:
    """The training loop."""

    steps: int = doc("Optimizer steps to train for (may be raised on --resume).", default=300_000)
    batch_size: int = doc("Sequences per micro-batch (per process).", default=4)
    grad_accum: int = doc("Micro-batches accumulated per optimizer step.", default=8)
    seed: int = doc("Random seed for initialization, data order and dropout.", default=1337)
    device: str = doc("auto, cpu, cuda, cuda:N or mps.", default="auto")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = doc(
        "Precision: auto = bf16 on capable GPUs, fp16 on older GPUs, fp32 on CPUs without fast bf16.",
        default="auto",
    )
    compile: Literal["auto", "on", "off"] = doc(
        "torch.compile: auto = on for CUDA; on a CPU, on for bf16 runs of 200+ steps with a C++ compiler.",
        default="auto",
    )
    eval_interval: int = doc("Evaluate on the validation split every N steps.", default=1000)
    eval_tokens: int = doc("Validation tokens per evaluation (0 = the whole split).", default=0)
    patience: int = doc("Stop after N evaluations without improvement (0 = never).", default=0)
    max_bad_steps: int = doc("Consecutive non-finite steps before rolling back or stopping.", default=5)
    strategy: Literal["ddp", "fsdp"] = doc(
        "With several processes (--nproc, torchrun): ddp (each holds the whole model) or fsdp "
        "(FSDP2: weights, gradients and optimizer state sharded per block).",
        default="ddp",
    )
    threads: int = doc("CPU threads for torch (0 = torch's default).", default=0)

    def __post_init__(self) -> None:
        _positive(self, "steps", "batch_size", "grad_accum", "eval_interval", "max_bad_steps")
        _non_negative(self, "eval_tokens", "patience", "threads")


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    light_interval: int = doc("Save weights + config every N steps (0 = never).", default=2000)
    full_interval: int = doc(
        "Save the full training state every N steps (0 = only at the end).", default=10_000
    )
    keep_last: int = doc(
        "Keep the newest N periodic checkpoints (best and newest full always kept).", default=3
    )

    def __post_init__(self) -> None:
        _non_negative(self, "light_interval", "full_interval")
        _positive(self, "keep_last")


@dataclass
class LoggingConfig:
    """Terminal, metrics file, samples and Weights & Biases."""

    log_interval: int = doc("Log training metrics every N steps.", default=10)
    wandb: Literal["auto", "online", "offline", "disabled"] = doc(
        "W&B mode: auto = online when logged in, else offline.", default="auto"
    )
    wandb_project: str = doc("W&B project name.", default="lmforge")
    sample_prompt: str = doc("Prompt for the text sample at each evaluation.", default="The history of")
    sample_tokens: int = doc("Tokens generated for that sample (0 = no samples).", default=64)

    def __post_init__(self) -> None:
        _positive(self, "log_interval")
        _non_negative(self, "sample_tokens")


@dataclass
class TrainingConfig:
    """Everything that defines a training run. ``TrainingConfig()`` is the
    seed's setup: GPT-2 small (124M) on WikiText-103."""

    preset: str = doc(
        "Model size: gpt2 (124M parameters), gpt2-medium (350M), gpt2-large (774M), gpt2-xl "
        "(1558M) or tiny (16M, for a CPU).",
        default="gpt2",
    )
    recipe: Literal["gpt2", "modern"] = doc(
        "Architecture, optimizer and schedule defaults together: gpt2 = GPT-2 with AdamW and "
        "cosine; modern = --arch modern, Muon and a linear decay (wsd, --decay-fraction 1).",
        default="gpt2",
    )
    run: str | None = doc(
        "Run name (generated as <preset>-<data>-<yyyymmdd-hhmmss> when not given).", default=None
    )
    tokenizer: str = doc("Tokenizer: gpt2 (tiktoken BPE) or bytes.", default="gpt2")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        # the preset's name is checked where presets are applied (lmforge.presets), which is
        # built on these dataclasses: config.py imports nothing from it
        if self.optim.optimizer == "muon" and self.train.strategy == "fsdp":
            # Muon orthogonalises whole matrices; FSDP2 leaves each rank a shard of every one
            raise ConfigError(
                "--strategy fsdp cannot be used with --optimizer muon (Muon needs whole matrices)",
                "use --strategy ddp, or --optimizer adamw",
            )

    @property
    def window_stride(self) -> int:
        """The training windows' stride: ``data.stride``, or half the block size when 0 (auto; the
        seed's 512 for GPT-2's 1024)."""
        return self.data.stride or max(1, self.model.block_size // 2)

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step on one process."""
        return self.train.batch_size * self.train.grad_accum * self.model.block_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainingConfig:
        return _build(cls, data, source)

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainingConfig:
        return cls.from_dict(load_toml(path), source=str(path))


# ----------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class ConfigField:
    """One leaf of the config tree, as seen by the CLI."""

    path: tuple[str, ...]  # ("optim", "lr")
    flag: str  # "lr"
    type: Any  # int, float, str, bool, Literal[...], str | None
    default: Any
    help: str


def config_fields() -> list[ConfigField]:
    """Every leaf field of ``TrainingConfig`` with its CLI flag name."""
    out: list[ConfigField] = []
    _collect(TrainingConfig, (), out)
    return out


def _collect(cls: type, prefix: tuple[str, ...], out: list[ConfigField]) -> None:
    hints = get_type_hints(cls)
    defaults = cls()
    for f in fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            _collect(hint, (*prefix, f.name), out)
            continue
        out.append(
            ConfigField(
                path=(*prefix, f.name),
                flag=f.metadata.get("flag", _flag(f.name)),
                type=hint,
                default=getattr(defaults, f.name),
                help=f.metadata.get("help", ""),
            )
        )


def with_overrides(config: TrainingConfig, overrides: dict[tuple[str, ...], Any]) -> TrainingConfig:
    """Return a copy of ``config`` with ``{("optim", "lr"): 3e-4, ...}`` applied and validated."""
    data = config.to_dict()
    for path, value in overrides.items():
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return TrainingConfig.from_dict(data, source="command line")


# ----------------------------------------------------------------------------- from TOML


def _build(cls: type, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, naming unknown keys and bad types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [{prefix.rstrip('.')}] must be a table, got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key {prefix + key!r}", _closest(prefix, key, known))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, source, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, f"{source}: {prefix}{key}")
    return cls(**kwargs)


def _closest(prefix: str, key: str, known: set[str]) -> str:
    match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
    if match:
        return f"did you mean {prefix + match[0]!r}?"
    return f"valid keys here: {', '.join(sorted(known))}"


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check (and gently convert) a TOML/CLI value against a field's type."""
    args = get_args(hint)
    if get_origin(hint) is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if type(None) in args:  # str | None
        if value is None or value == "":
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value

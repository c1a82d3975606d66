"""The optimizer: AdamW for every weight, or Muon for the block matrices and AdamW for the rest.

Weight decay goes on the matrices of the Linear layers only: decaying biases, norm gains and
embeddings toward zero does not regularize anything useful and hurts (GPT-2/3, nanoGPT). The
tied LM head is the token embedding, so it is counted once, with the embeddings.

With ``--optimizer muon`` the 2-D weights inside the blocks are orthogonalised by Muon
(``torch.optim.Muon``; modded-nanogpt, Jordan et al. 2024): it is built for hidden matrices
only, so the embeddings, an untied head and the vectors (gains, biases) stay on AdamW.

Each group has its own peak learning rate, as a ratio to ``--lr`` (``lr_scale``): the block
matrices ``--lr``, the embeddings and vectors ``--embed-lr``, an untied head ``--head-lr``, the
model levers' per-block scalars (``--residual-lambdas``, ``--unet-skips``) ``--scalar-lr``. The
schedule gives the lr of ``--lr`` for each step, and every group follows it at its ratio.

The scalars have their own group because each one scales a whole residual stream: at the
embeddings' lr (0.2 in the modern recipe) AdamW moves them by ~0.2 a step, and a tiny run with
all three model levers on jumped from loss 4.9 to 6.2 within two steps, its lambdas turning
negative; at 0.02 (``--lr`` there) it did not (modded-nanogpt trains its scalars at 0.04).

Three Muon levers, off by default (torch.optim.Muon runs when all are off): ``--cautious-wd``,
``--ns-coefficients polar-express`` and ``--normuon`` (``MuonNS``). Each acts on one matrix at a
time, so under DDP (every rank holds the full, all-reduced gradient) nothing changes.

May import ``config`` and ``errors`` only (no model, no training loop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from lmforge.config import OptimizerConfig
from lmforge.errors import ConfigError

# Muon's momentum starts here and rises to --muon-momentum over --muon-momentum-warmup steps
# (modded-nanogpt: a high momentum at the start, with the weights far from any minimum, slows
# the first steps down)
MUON_MOMENTUM_START = 0.85


@dataclass(frozen=True)
class ParamGroupCounts:
    """How many tensors and parameters each group holds (reported at start)."""

    decay_tensors: int
    decay_params: int
    no_decay_tensors: int
    no_decay_params: int
    groups: tuple[tuple[str, int], ...] = ()  # (group name, parameters), in optimizer order

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k != "groups"}
        out["groups"] = dict(self.groups)
        return out


# the model levers' per-block scalars (lmforge.model.modern): never decayed, at --scalar-lr
SCALAR_NAMES = ("resid_lambdas", "x0_lambdas", "skip_weights")
UNDECAYED_LR_FIELDS = ("embed_lr", "scalar_lr")  # the lr fields of the groups never decayed


def _role(name: str, p: nn.Parameter, tied_head: bool) -> tuple[str, bool, str]:
    """``(optimizer group role, decayed, lr field)`` of one parameter."""
    if name in SCALAR_NAMES:
        return "scalars", False, "scalar_lr"
    if name.startswith("transformer.h.") and p.dim() == 2:
        return "matrices", True, "lr"
    if name == "lm_head.weight" and not tied_head:  # a tied head is yielded once, as wte
        return "head", True, "head_lr"
    return "embeddings and vectors", False, "embed_lr"


def param_groups(
    model: nn.Module, weight_decay: float, config: OptimizerConfig | None = None
) -> tuple[list[dict[str, Any]], ParamGroupCounts]:
    """The optimizer's parameter groups: Muon's block matrices (with ``--optimizer muon``),
    then AdamW's decayed matrices and head, then the undecayed embeddings, vectors and scalars.

    Each group dict carries ``name``, ``optimizer`` (adamw or muon), ``lr_field`` (the config
    field of its peak lr) and ``lr_scale`` (that lr over ``--lr``) next to ``weight_decay``.
    """
    config = config or OptimizerConfig(weight_decay=weight_decay)
    tied = getattr(getattr(model, "config", None), "tied_head", True)
    groups: dict[tuple[str, bool, str], dict[str, Any]] = {}
    # named_parameters() yields a tied tensor once, so lm_head/wte is not counted twice
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role, decay, lr_field = _role(name, p, tied)
        opt = "muon" if config.optimizer == "muon" and role == "matrices" else "adamw"
        key = (opt, decay, lr_field)
        if key not in groups:
            groups[key] = {
                "params": [],
                "name": f"{opt} {role}",
                "optimizer": opt,
                "lr_field": lr_field,
                "lr_scale": lr_scale(lr_field, config),
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(p)
    # muon first, then decayed before undecayed (the order of every checkpoint's groups)
    ordered = [groups[k] for k in sorted(groups, key=lambda k: (k[0] != "muon", not k[1]))]
    decayed = [g for g in ordered if g["lr_field"] not in UNDECAYED_LR_FIELDS]
    undecayed = [g for g in ordered if g["lr_field"] in UNDECAYED_LR_FIELDS]
    counts = ParamGroupCounts(
        decay_tensors=sum(len(g["params"]) for g in decayed),
        decay_params=sum(p.numel() for g in decayed for p in g["params"]),
        no_decay_tensors=sum(len(g["params"]) for g in undecayed),
        no_decay_params=sum(p.numel() for g in undecayed for p in g["params"]),
        groups=tuple((g["name"], sum(p.numel() for p in g["params"])) for g in ordered),
    )
    return ordered, counts


def lr_scale(lr_field: str, config: OptimizerConfig) -> float:
    """A group's peak lr as a multiple of ``--lr`` (0 for --embed-lr/--head-lr/--scalar-lr means --lr)."""
    lr = getattr(config, lr_field) or config.lr
    return lr / config.lr


class MuonAdamW:
    """Muon and AdamW stepped as one optimizer: what ``TrainStep``, the fp16 loss scaler and
    the checkpoints see (``param_groups``, ``step``, ``zero_grad``, ``state_dict``).

    It counts its own updates, so Muon's momentum warmup is a function of the optimizer's
    state and resumes exactly with it.
    """

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer, config: OptimizerConfig):
        self.muon, self.adamw = muon, adamw
        self.momentum, self.momentum_warmup = config.muon_momentum, config.muon_momentum_warmup
        self.updates = 0

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.muon.param_groups + self.adamw.param_groups

    def current_momentum(self) -> float:
        if self.momentum_warmup <= 0:
            return self.momentum
        frac = min(self.updates / self.momentum_warmup, 1.0)
        return (1.0 - frac) * min(MUON_MOMENTUM_START, self.momentum) + frac * self.momentum

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.muon.param_groups:
            group["momentum"] = self.current_momentum()
        self.muon.step()
        self.adamw.step()
        self.updates += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "muon" not in state:
            raise ConfigError(
                "this checkpoint's optimizer state is AdamW's, not Muon + AdamW",
                "resume with the run's own --optimizer",
            )
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
        self.updates = int(state["updates"])


def fused_adamw(device: torch.device) -> bool | None:
    """Whether AdamW runs its fused kernel on ``device``: on CUDA one launch for every tensor,
    and on the CPU one vectorised pass where the foreach path makes a temporary per operation
    (tiny preset, 16M parameters on 2 cores: 8 ms a step against 58 ms). Elsewhere torch
    chooses (None)."""
    return True if device.type in ("cuda", "cpu") else None


Coefficients = tuple[float, float, float]

# Polar Express (Amsel, Persson, Musco, Gower 2025, "The Polar Express: Optimal Matrix Sign
# Methods and Their Application to the Muon Algorithm", arXiv:2505.16932): a different quintic
# per iteration, each optimal for the singular-value interval the previous ones leave, so five
# iterations get much closer to 1 than five of one constant quintic. These are the values
# modded-nanogpt uses (computed for 5 iterations, safety factor 2e-2, cushion 2); the safety
# factor also shrinks the start below spectral norm 1, for rounding in low precision.
POLAR_EXPRESS_COEFFICIENTS: tuple[Coefficients, ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 2e-2

# NorMuon (Li et al. 2025, arXiv:2510.05491): the decay of the rows' running second moment, and
# the floor under its square root
NORMUON_BETA2 = 0.95
NORMUON_EPS = 1e-10


def newton_schulz(
    update: torch.Tensor,
    schedule: Sequence[Coefficients],
    eps: float,
    dtype: torch.dtype,
    safety: float = 0.0,
) -> torch.Tensor:
    """Muon's Newton-Schulz iteration in ``dtype``: per ``(a, b, c)`` of ``schedule`` the quintic
    ``x <- a x + (b A + c A^2) x`` with ``A = x x^T``, which pushes every singular value of the
    normalised update toward ~1 (how close depends on the coefficients: torch's constant ones
    trade exactness for speed). Iterated on the orientation with fewer rows, so ``A`` is the
    smaller Gram matrix. With one triple repeated and ``safety`` 0, step for step what
    ``torch.optim.Muon`` computes."""
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    norm = x.norm() * (1 + safety) if safety else x.norm()
    x = x / norm.clamp(min=eps)  # spectral norm <= Frobenius norm = 1
    for a, b, c in schedule:
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def orthogonalise(
    update: torch.Tensor, coefficients: Coefficients, steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """``newton_schulz`` with torch.optim.Muon's constant coefficients, ``steps`` times."""
    return newton_schulz(update, [coefficients] * steps, eps, dtype)


def normuon_normalise(
    update: torch.Tensor, second_moment: torch.Tensor, beta2: float, eps: float
) -> torch.Tensor:
    """NorMuon's step after the orthogonalisation: divide each row (one output neuron of a
    Linear weight) by the root of its running mean square, updated in place in
    ``second_moment`` (rows x 1, fp32), then rescale the whole matrix to the Frobenius norm it
    had, so the update's RMS, and with it Muon's lr, mean what they meant. Orthogonalisation
    evens out the singular values but not the rows' norms; this evens out those too."""
    u = update.float()
    second_moment.lerp_(u.square().mean(dim=1, keepdim=True), 1 - beta2)  # (rows, 1)
    normalised = u / (second_moment.sqrt() + eps)
    return normalised * (u.norm() / normalised.norm().clamp(min=eps))


def cautious_decay_(param: torch.Tensor, update: torch.Tensor, decay: float) -> None:
    """Decoupled weight decay ``param -= decay * param`` only where ``update`` (the direction the
    step subtracts) has the sign of ``param``: there the update already pulls the weight toward
    zero and the decay goes along; elsewhere the decay would fight the gradient (cautious weight
    decay, as in modded-nanogpt)."""
    mask = (update * param) > 0
    param.sub_(param * mask, alpha=decay)


def _muon_with_ns_dtype(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    class MuonNS(base):  # type: ignore[misc, valid-type]
        """``torch.optim.Muon`` with its Newton-Schulz iteration in a chosen precision.

        torch's runs it in bf16 always. On a CPU without bf16 instructions bf16 matmuls are
        emulated, and the iteration takes several times longer than in fp32 (oneDNN limited to
        AVX2 here: a 256x1024x256 bf16 matmul 78 ms, fp32 11 ms). Everything else is torch's
        update exactly: momentum, Nesterov, the shape-adjusted lr, decoupled weight decay, and
        the same state, so a checkpoint moves between the two (a test runs this step in bf16
        against torch's and gets the same bits).

        It is also where the Muon levers live, each off by default: ``ns_coefficients_schedule``
        (``polar-express``: Polar Express's per-iteration coefficients), ``normuon`` (rows
        evened out by a running second moment, kept in ``state["second_moment"]``) and
        ``cautious_wd`` (decay only where update and weight agree in sign).
        """

        def __init__(
            self,
            params: Any,
            *,
            ns_dtype: torch.dtype,
            ns_coefficients_schedule: str = "muon",
            normuon: bool = False,
            cautious_wd: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(params, **kwargs)
            self.ns_dtype = ns_dtype
            # the levers (``--ns-coefficients``, ``--normuon``, ``--cautious-wd``) come from the
            # run's config each time it is built, so they are not in the saved param groups;
            # NorMuon's second moments are state, saved and restored with the momentum buffers
            self.ns_coefficients_schedule = ns_coefficients_schedule
            self.normuon = normuon
            self.cautious_wd = cautious_wd

        def _schedule(self, group: dict[str, Any]) -> tuple[Sequence[Coefficients], float]:
            if self.ns_coefficients_schedule == "polar-express":
                return POLAR_EXPRESS_COEFFICIENTS, POLAR_EXPRESS_SAFETY
            return [group["ns_coefficients"]] * group["ns_steps"], 0.0

        @torch.no_grad()
        def step(self, closure: Any = None) -> None:
            for group in self.param_groups:
                if group.get("adjust_lr_fn") not in (None, "original"):
                    raise ValueError("MuonNS implements torch's default lr adjustment only")
                momentum = group["momentum"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(
                            p.grad, memory_format=torch.preserve_format
                        )
                    buf = state["momentum_buffer"]
                    buf.lerp_(p.grad, 1 - momentum)
                    update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                    schedule, safety = self._schedule(group)
                    update = newton_schulz(update, schedule, group["eps"], self.ns_dtype, safety)
                    if self.normuon:
                        if "second_moment" not in state:
                            state["second_moment"] = torch.zeros(
                                p.shape[0], 1, dtype=torch.float32, device=p.device
                            )
                        update = normuon_normalise(update, state["second_moment"], NORMUON_BETA2, NORMUON_EPS)
                    rows, cols = p.shape[:2]
                    if self.cautious_wd:
                        cautious_decay_(p, update, group["lr"] * group["weight_decay"])
                    else:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update, alpha=-group["lr"] * math.sqrt(max(1, rows / cols)))

    return MuonNS


# MuonNS's levers when they change nothing: torch.optim.Muon's own step
MUON_LEVERS_OFF = {"ns_coefficients_schedule": "muon", "normuon": False, "cautious_wd": False}


def _require_muon() -> type[torch.optim.Optimizer]:
    muon = getattr(torch.optim, "Muon", None)
    if muon is None:
        raise ConfigError(
            f"--optimizer muon needs torch.optim.Muon (PyTorch 2.9 or newer); this is {torch.__version__}",
            "upgrade torch, or use --optimizer adamw",
        )
    return muon


def build_optimizer(
    model: nn.Module,
    config: OptimizerConfig,
    device: torch.device,
    ns_dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.optim.Optimizer | MuonAdamW, ParamGroupCounts]:
    """AdamW over ``param_groups`` (the fused kernel: one pass over all tensors), or
    ``MuonAdamW`` with ``--optimizer muon``: ``torch.optim.Muon`` itself when its Newton-Schulz
    iteration runs in bf16 (``ns_dtype``; ``lmforge.device.newton_schulz_dtype`` decides) and
    the Muon levers are off, ``MuonNS`` otherwise."""
    groups, counts = param_groups(model, config.weight_decay, config)
    adamw_groups = [g for g in groups if g["optimizer"] == "adamw"]
    adamw = torch.optim.AdamW(
        adamw_groups,
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=fused_adamw(device),
    )
    if config.optimizer == "adamw":
        return adamw, counts
    muon_class = _require_muon()
    muon_groups = [g for g in groups if g["optimizer"] == "muon"]
    levers = {
        "ns_coefficients_schedule": config.ns_coefficients,
        "normuon": config.normuon,
        "cautious_wd": config.cautious_wd,
    }
    if ns_dtype == torch.bfloat16 and levers == MUON_LEVERS_OFF:
        muon = muon_class(muon_groups, lr=config.lr, momentum=config.muon_momentum)
    else:
        muon = _muon_with_ns_dtype(muon_class)(
            muon_groups, lr=config.lr, momentum=config.muon_momentum, ns_dtype=ns_dtype, **levers
        )
    return MuonAdamW(muon, adamw, config), counts


def set_hyperparameters(
    optimizer: torch.optim.Optimizer | MuonAdamW, config: OptimizerConfig, device: torch.device
) -> None:
    """Apply ``config``'s betas, eps, weight decay and lr ratios to an optimizer whose state was
    loaded from a checkpoint: the saved hyperparameters come along with it, the current config's
    win (a resumed run may change --weight-decay or --embed-lr)."""
    for i, group in enumerate(optimizer.param_groups):
        # checkpoints from before the per-group fields hold AdamW's [decayed matrices, the rest]
        lr_field = group.setdefault("lr_field", "lr" if i == 0 else "embed_lr")
        group["lr_scale"] = lr_scale(lr_field, config)
        group["weight_decay"] = config.weight_decay if lr_field not in UNDECAYED_LR_FIELDS else 0.0
        if group.get("optimizer", "adamw") == "adamw":
            group.update(betas=(config.beta1, config.beta2), eps=config.eps)
            group["fused"] = fused_adamw(device)
    if isinstance(optimizer, MuonAdamW):
        optimizer.momentum, optimizer.momentum_warmup = config.muon_momentum, config.muon_momentum_warmup

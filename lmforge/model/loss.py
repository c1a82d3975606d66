"""The language-model loss without the (B, T, vocab) logits tensor.

The plain path, ``F.cross_entropy(lm_head(x)[..., :V].reshape(-1, V).float(), y)``,
makes the logits, a contiguous copy of the real-vocabulary slice, an fp32 copy of
that under autocast, the log-softmax, and as many again in backward: for GPT-2 at
batch 4 x 1024 that is over a gigabyte per micro-batch, and on a CPU the copies
cost as much time as the head's matmul itself.

``linear_cross_entropy`` walks the positions in chunks instead. For each chunk it
makes that chunk's logits (in the autocast dtype, like the Linear layer would),
the loss, and at once the gradient of the loss with respect to the chunk's
logits (softmax minus one-hot), which it turns into the gradients of the hidden
states and of the head's weight right away; backward only scales them. The
head's matmuls are the same three as before (no recomputation), and no more than
one chunk of logits exists at a time.

The matmuls use every row of the head, padded ones included: 50,304 rows (a multiple of 64)
keep the GEMMs on aligned, tensor-core-sized tiles, where the real 50,257 would not. The
padded columns' logits are masked out of the softmax (as -inf), so the loss is over the real
vocabulary and the padded rows get a zero gradient.

With a ``softcap`` c the loss is that of the soft-capped logits ``c * tanh(logits / c)``
(the modern recipe's head), computed as ``2c * sigmoid(2 logits / c) - c`` (the same function;
sigmoid is several times faster than tanh on a CPU), and the chain rule's ``1 - tanh²`` factor
is applied to the chunk's gradient in the same pass, so the gradient is exactly that of the
capped logits.

On a CPU the elementwise passes walk blocks of rows small enough to stay in the cache: over a
whole chunk each pass reads and writes hundreds of megabytes, and together they cost as much
as the matmuls.

``token_losses`` is the forward-only variant for evaluation: the per-position losses of the
positions that have a target, and only those positions go through the head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Logit elements per chunk. On a GPU 2**26 fp32 values (256 MiB) keep the matmuls at full speed
# and the working set far below one (B, T, vocab) tensor. On a CPU a matmul with fewer rows runs
# measurably slower (2048 x 256 x 50257: 2**24 per chunk took 1.5x the time of one chunk), and
# memory is plentiful: 2**28 (1 GiB) makes one chunk of a GPT-2 micro-batch of 4 x 1024.
CHUNK_ELEMENTS = {"cuda": 2**26, "cpu": 2**28}
DEFAULT_CHUNK_ELEMENTS = 2**26
# GPU chunks are a multiple of this many rows: whole tiles of the GEMMs' row dimension
GPU_CHUNK_ROW_MULTIPLE = 128
# Logit elements per block of the elementwise work inside a chunk. On a CPU 2**20 fp32 values
# (4 MiB) stay in the cache across the block's passes: tiny preset, 1024 x 50257 logits, the
# passes took ~3x less time than over the whole chunk. A GPU has no such cache to fit: one block.
BLOCK_ELEMENTS = {"cpu": 2**20}
MIN_BLOCK_ROWS = 8
# With a cap c the logits lie in [-c, c]: exp(2c) * 2**24 vocabulary rows stays far inside fp32
# (3.4e38) up to c = 30, so the softmax needs no max-subtraction pass
MAX_UNSHIFTED_SOFTCAP = 30.0
# Under fp16 the logits' gradient goes back into the fp16 block for the two backward matmuls.
# Unscaled, most of it (softmax probabilities ~1/vocab ~ 2e-5) would sit among fp16's subnormals
# (< 6.1e-5) or flush to zero, before the GradScaler's scale is ever applied (it multiplies in
# backward). Scaled by 2**8 those values are normal numbers; the matmuls' outputs are divided
# by it again in fp32, and stay below fp16's 65,504 (the head's gradient of one chunk of rows
# would need entries above 256 to overflow).
FP16_GRAD_SCALE = 2.0**8


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _block_losses(
    block: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    softcap: float,
    want_grad: bool,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """The loss of each row of a block of logits, (rows, 1) fp32. With ``want_grad`` the block is
    overwritten with d(summed loss)/d(logits) times ``grad_scale``. ``block`` holds the raw
    logits, or with a ``softcap`` c the matmul's ``2 logits / c``; columns from
    ``vocab_size`` on are padding, never predicted. ``targets`` is (rows, 1)."""
    z = block.float()  # the block itself in fp32; an fp32 copy of a bf16 block
    padded = z.size(1) > vocab_size
    if padded:
        z[:, vocab_size:] = float("-inf")  # out of the softmax (and the sigmoid gives them 0)
    if softcap:
        # c tanh(l / c) = 2c sigmoid(2l / c) - c: sigmoid is ~6x faster than tanh on a CPU
        sig = z.sigmoid_()
        target_logit = sig.gather(1, targets).mul_(2 * softcap).sub_(softcap)
        probs = torch.mul(sig, 2 * softcap)  # the capped logits + c, in [0, 2c]
        row_max = None if softcap <= MAX_UNSHIFTED_SOFTCAP else probs.amax(dim=-1, keepdim=True)
        shift = -softcap if row_max is None else row_max - softcap
    else:
        target_logit = z.gather(1, targets)
        row_max = shift = z.amax(dim=-1, keepdim=True)
        probs = z
    if row_max is not None:
        probs.sub_(row_max)
    probs = probs.exp_()  # the unnormalised softmax
    if padded and softcap:
        probs[:, vocab_size:] = 0.0  # exp of a capped logit is never 0 by itself
    row_sum = probs.sum(dim=-1, keepdim=True)
    losses = row_sum.log() + shift - target_logit
    if not want_grad:
        return losses
    # d(sum of losses)/d(logits) = softmax - one_hot(target), times 1 - tanh(l / c)^2 =
    # 4 s (1 - s) with a cap (the 4 goes in with the softmax's normalisation)
    scale = (4.0 if softcap else 1.0) * grad_scale
    grad = probs.mul_(row_sum.reciprocal_().mul_(scale))
    grad.scatter_add_(1, targets, torch.full_like(target_logit, -scale))
    if softcap:
        sig.addcmul_(sig, sig, value=-1.0).mul_(grad)  # s - s^2, times the softmax part
    # the gradient is in z now (with or without a cap); a bf16 block gets it back in its dtype
    if block.dtype != torch.float32:
        block.copy_(z)
    return losses


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, vocab_size, chunk_rows, block_rows, compute_dtype, softcap):
        # x (N, C), weight (padded vocab Vp, C), targets (N,) with -1 = ignored
        w = weight.to(compute_dtype)  # (Vp, C): every row, for aligned matmuls
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_scale = FP16_GRAD_SCALE if compute_dtype == torch.float16 else 1.0
        grad_x = torch.empty_like(x) if want_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=x.device)
        n_valid = (targets != -1).sum()
        for start in range(0, x.size(0), chunk_rows):
            xc = x[start : start + chunk_rows].to(compute_dtype)  # (n, C)
            tc = targets[start : start + chunk_rows]
            valid = (tc != -1)[:, None]  # (n, 1); ignored rows are masked on the (n, C) side
            tc = tc.clamp(min=0)[:, None]
            # (n, Vp): the only logits that exist at one time. With a cap the matmul makes
            # 2 logits / c for the sigmoid (the scale applied on the narrow side)
            logits = (xc * (2.0 / softcap) if softcap else xc) @ w.t()
            # the elementwise passes walk row blocks that stay in the CPU's cache; from DRAM each
            # of them would cost as much as the matmul
            for b in range(0, logits.size(0), block_rows):
                rows = slice(b, b + block_rows)
                losses = _block_losses(
                    logits[rows], tc[rows], vocab_size, softcap, want_x or want_w, grad_scale
                )
                loss_sum += (losses * valid[rows]).sum()
            if want_x:
                gx = (logits @ w).mul_(valid)  # (n, C)
                grad_x[start : start + chunk_rows] = gx if grad_scale == 1.0 else gx.float() / grad_scale
            if want_w:
                xv = xc * valid
                if xv.dtype == grad_w.dtype:
                    grad_w.addmm_(logits.t(), xv)  # (Vp, C), no temporary
                else:
                    grad_w += (logits.t() @ xv).float().div_(grad_scale)
        ctx.save_for_backward(grad_x, grad_w, n_valid)
        ctx.weight_dtype = weight.dtype
        return loss_sum / n_valid  # the mean over the targets that count, like F.cross_entropy

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w, n_valid = ctx.saved_tensors
        scale = grad_loss / n_valid
        dx = grad_x * scale.to(grad_x.dtype) if grad_x is not None else None
        dw = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return dx, dw, None, None, None, None, None, None


def chunk_rows_for(chunk_elements: int, head_rows: int, device_type: str) -> int:
    """Rows of one chunk of ``head_rows``-wide logits: on a GPU a multiple of
    ``GPU_CHUNK_ROW_MULTIPLE`` (whole GEMM tiles), elsewhere at least one row."""
    rows = chunk_elements // head_rows
    if device_type == "cuda":
        return max(GPU_CHUNK_ROW_MULTIPLE, rows - rows % GPU_CHUNK_ROW_MULTIPLE)
    return max(1, rows)


def _rows_per_chunk_and_block(
    x: torch.Tensor, head_rows: int, chunk_elements: int | None, block_elements: int | None
) -> tuple[int, int]:
    device_type = x.device.type
    if chunk_elements is None:
        chunk_elements = CHUNK_ELEMENTS.get(device_type, DEFAULT_CHUNK_ELEMENTS)
    chunk_rows = chunk_rows_for(chunk_elements, head_rows, device_type)
    block_elements = BLOCK_ELEMENTS.get(device_type) if block_elements is None else block_elements
    # at least MIN_BLOCK_ROWS: with a vocabulary of hundreds of thousands, one or two rows per block
    # would cost more in Python's loop than the cache saves
    block_rows = chunk_rows if block_elements is None else max(MIN_BLOCK_ROWS, block_elements // head_rows)
    return chunk_rows, block_rows


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    chunk_elements: int | None = None,
    softcap: float = 0.0,
    block_elements: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight[:vocab_size].T`` against ``targets`` (-1 = ignored),
    equal to ``F.cross_entropy`` on the full logits, without making them (on
    ``softcap * tanh(logits / softcap)`` when ``softcap`` > 0).

    ``x`` is (..., C), ``targets`` (...), ``weight`` (rows >= vocab_size, C).
    """
    x2 = x.reshape(-1, x.size(-1))  # (N, C)
    t2 = targets.reshape(-1)  # (N,)
    chunk_rows, block_rows = _rows_per_chunk_and_block(x, weight.size(0), chunk_elements, block_elements)
    args = (x2, weight, t2, vocab_size, chunk_rows, block_rows, _compute_dtype(x, weight), float(softcap))
    if block_rows < chunk_rows:
        return _apply_eager(*args)
    return _LinearCrossEntropy.apply(*args)


@torch.compiler.disable
def _apply_eager(*args: object) -> torch.Tensor:
    """The loss outside ``torch.compile``'s graph, for row blocks: the compiler would unroll their
    loop (a minute of compilation for the tiny preset's 52 blocks), and in the CPU's cache the
    eager passes ran faster than the fused code over a whole chunk (tiny, bf16: 494 ms a step
    against 558)."""
    return _LinearCrossEntropy.apply(*args)


@torch.compiler.disable  # which rows are scored changes from batch to batch: no graph to keep
@torch.no_grad()
def token_losses(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    softcap: float = 0.0,
    want_argmax: bool = False,
    chunk_elements: int | None = None,
    block_elements: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-position cross-entropy (fp32, the shape of ``targets``, 0 where the target is -1)
    and with ``want_argmax`` whether each target is the most likely token (False where -1).

    Only the positions with a target go through the head, chunk by chunk as in
    ``linear_cross_entropy``; forward only (evaluation). ``x`` is (..., C)."""
    t2 = targets.reshape(-1)
    scored = (t2 != -1).nonzero().squeeze(1)  # (n,): a host sync, once per batch
    xs = x.reshape(-1, x.size(-1)).index_select(0, scored)  # (n, C)
    ts = t2.index_select(0, scored)[:, None]  # (n, 1)
    compute_dtype = _compute_dtype(x, weight)
    w = weight.to(compute_dtype)  # (Vp, C)
    chunk_rows, block_rows = _rows_per_chunk_and_block(x, weight.size(0), chunk_elements, block_elements)
    losses = torch.empty(len(scored), dtype=torch.float32, device=x.device)
    argmax = torch.empty(len(scored), dtype=torch.bool, device=x.device) if want_argmax else None
    for start in range(0, len(scored), chunk_rows):
        xc = xs[start : start + chunk_rows].to(compute_dtype)
        logits = (xc * (2.0 / softcap) if softcap else xc) @ w.t()  # (n, Vp)
        n = logits.size(0)
        for b in range(0, n, block_rows):
            rows = slice(start + b, start + min(b + block_rows, n))  # of the scored rows
            # without a gradient to make, F.cross_entropy's fused pass over a block in the cache
            # is the fastest loss; the padded columns are masked out of its softmax
            z = logits[b : b + block_rows].float()  # the block itself in fp32, a copy of bf16
            if softcap:
                z.sigmoid_().mul_(2 * softcap).sub_(softcap)  # c tanh(l / c), as in _block_losses
            z[:, vocab_size:] = float("-inf")
            t = ts[rows, 0]
            losses[rows] = F.cross_entropy(z, t, reduction="none")
            if argmax is not None:
                argmax[rows] = z.argmax(dim=-1) == t
    out = torch.zeros(t2.shape, dtype=torch.float32, device=x.device).index_copy_(0, scored, losses)
    out_argmax = None
    if argmax is not None:
        out_argmax = torch.zeros(t2.shape, dtype=torch.bool, device=x.device).index_copy_(0, scored, argmax)
        out_argmax = out_argmax.view(targets.shape)
    return out.view(targets.shape), out_argmax

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
one chunk of logits exists at a time. The loss is over the real vocabulary only:
padded head rows get a zero gradient.

With a ``softcap`` c the loss is that of the soft-capped logits ``c * tanh(logits / c)``
(the modern recipe's head), and the chain rule's ``1 - tanh²`` factor is applied to the
chunk's gradient in the same pass, so the gradient is exactly that of the capped logits.
"""

from __future__ import annotations

import torch

# Logit elements per chunk. On a GPU 2**26 fp32 values (256 MiB) keep the matmuls at full speed
# and the working set far below one (B, T, vocab) tensor. On a CPU a matmul with fewer rows runs
# measurably slower (2048 x 256 x 50257: 2**24 per chunk took 1.5x the time of one chunk), and
# memory is plentiful: 2**28 (1 GiB) makes one chunk of a GPT-2 micro-batch of 4 x 1024.
CHUNK_ELEMENTS = {"cuda": 2**26, "cpu": 2**28}
DEFAULT_CHUNK_ELEMENTS = 2**26


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, vocab_size, chunk_rows, compute_dtype, softcap):
        # x (N, C), weight (padded vocab, C), targets (N,) with -1 = ignored
        w = weight[:vocab_size].to(compute_dtype)  # (V, C)
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.empty_like(x) if want_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=x.device)
        n_valid = (targets != -1).sum()
        for start in range(0, x.size(0), chunk_rows):
            xc = x[start : start + chunk_rows].to(compute_dtype)  # (n, C)
            tc = targets[start : start + chunk_rows]
            valid = tc != -1
            tc = tc.clamp(min=0)
            logits = (xc @ w.t()).float()  # (n, V): the only logits that exist at one time
            if softcap:
                tanh = logits.div_(softcap).tanh_()  # in place: the raw logits are not needed again
                logits = tanh * softcap
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            loss_sum += ((lse - logits.gather(1, tc[:, None]).squeeze(1)) * valid).sum()
            if not (want_x or want_w):
                continue
            # d(sum of losses)/d(logits) = softmax - one_hot(target), zero on ignored rows (in place)
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(grad.size(0), device=grad.device), tc] -= 1.0
            grad.mul_(valid[:, None])
            if softcap:
                grad.mul_(tanh.square_().neg_().add_(1.0))  # d(c tanh(l / c))/dl = 1 - tanh²
            grad = grad.to(compute_dtype)
            if want_x:
                grad_x[start : start + chunk_rows] = grad @ w  # (n, C)
            if want_w:
                grad_w[:vocab_size] += (grad.t() @ xc).float()  # (V, C)
        ctx.save_for_backward(grad_x, grad_w, n_valid)
        ctx.weight_dtype = weight.dtype
        return loss_sum / n_valid  # the mean over the targets that count, like F.cross_entropy

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w, n_valid = ctx.saved_tensors
        scale = grad_loss / n_valid
        dx = grad_x * scale.to(grad_x.dtype) if grad_x is not None else None
        dw = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return dx, dw, None, None, None, None, None


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    chunk_elements: int | None = None,
    softcap: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight[:vocab_size].T`` against ``targets`` (-1 = ignored),
    equal to ``F.cross_entropy`` on the full logits, without making them (on
    ``softcap * tanh(logits / softcap)`` when ``softcap`` > 0).

    ``x`` is (..., C), ``targets`` (...), ``weight`` (rows >= vocab_size, C).
    """
    x2 = x.reshape(-1, x.size(-1))  # (N, C)
    t2 = targets.reshape(-1)  # (N,)
    if chunk_elements is None:
        chunk_elements = CHUNK_ELEMENTS.get(x.device.type, DEFAULT_CHUNK_ELEMENTS)
    chunk_rows = max(1, chunk_elements // vocab_size)
    return _LinearCrossEntropy.apply(
        x2, weight, t2, vocab_size, chunk_rows, _compute_dtype(x, weight), float(softcap)
    )

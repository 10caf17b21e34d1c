"""Moving Average Batch Normalization (Yan et al., "Towards Stabilizing Batch Statistics in Backward
Propagation of Batch Normalization", ICLR 2020)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import (
    NormConfigError,
    add_bn_state,
    check_eps,
    check_input,
    check_int,
    check_layer,
    check_number,
)


class MovingAverageBatchNorm(nn.Module):
    """MABN: centering-free BN whose forward AND backward batch statistics are moving averages.

    Training divides by the root of the mean of the last `buffer_size` batch second moments (SMAS),
    renormalized by a clipped r against `running_var`; the backward averages its own batch statistic
    the same way. All state is in buffers (a loaded layer continues bit-identically) and no step
    reads a device tensor on the host. See docs/norms.md#mabn.

    Args:
        dim: 2 for NCHW feature maps, 1 for (N, C) features.
        momentum: the weight of the OLD running_var (the paper's convention, not torch's).
        buffer_size: the SMAS window B of both rings.
        warmup_iters: iterations t < warmup_iters use the raw batch statistic (as do t <= B).
        renorm_iters: r is 1 for iterations t <= max(renorm_iters, warmup_iters).
        r_max: then r is clipped to [1/r_max, r_max].
    """

    # registered by add_bn_state; declared for type checkers
    weight: nn.Parameter
    bias: nn.Parameter
    running_var: torch.Tensor

    def __init__(
        self,
        num_channels: int,
        dim: int = 2,
        eps: float = 1e-5,
        momentum: float = 0.98,
        buffer_size: int = 16,
        warmup_iters: int = 100,
        renorm_iters: int = 1000,
        r_max: float = 5.0,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        self.buffer_size = buffer_size
        self.warmup_iters = warmup_iters
        self.renorm_iters = renorm_iters
        self.r_max = r_max
        add_bn_state(self, num_channels, running_mean=False, counter=False)
        self.register_buffer("chi2_buffer", torch.zeros(buffer_size, num_channels))
        self.register_buffer("psi_buffer", torch.zeros(buffer_size, num_channels))
        self.register_buffer("iters", torch.tensor(0, dtype=torch.long))
        self.register_buffer("backward_iters", torch.tensor(0, dtype=torch.long))
        # constants, not state (not in the state_dict): the zero running_mean handed to torch's
        # batch-norm kernels, and 1 as a 0-d tensor (an op with a Python-number operand costs about
        # twice one with a ready tensor, and these tiny per-channel ops are all overhead); more in
        # _constants()
        self.register_buffer("_zeros", torch.zeros(num_channels), persistent=False)
        self.register_buffer("_one", torch.tensor(1), persistent=False)
        self._constants_for: torch.Tensor | None = None
        self._constants_cache: tuple[torch.Tensor, ...] = ()
        self._iters = 0  # host mirrors of the two counters
        self._backward_iters = 0
        self._r2, self._inv_r2 = r_max * r_max, 1.0 / (r_max * r_max)
        # devices whose images the loss averages over (normbench.norms.devices sets it): psi is kept
        # as one device's own loss gives it, so each simulated device's ring equals a real one's
        self.loss_devices = 1
        # see _ring
        self._rings: dict[str, tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]] = {}

    # ---------------------------------------------------------------------------- schedule
    @property
    def iteration(self) -> int:
        """Training forwards done so far (the last iteration's t); read from the host mirror, no
        sync."""
        return self._iters

    @property
    def fixed_r_iters(self) -> int:
        """r is 1 for iterations t <= this, clipped after."""
        return max(self.renorm_iters, self.warmup_iters)

    def uses_batch_stats(self, t: int) -> bool:
        """Iteration t normalizes with this batch's chi2 (and its backward with this batch's
        psi)."""
        return t <= self.buffer_size or t < self.warmup_iters

    # ------------------------------------------------------------------------------ state
    def reset_running_stats(self) -> None:
        """Back to a fresh layer's statistics and schedule (parameters untouched)."""
        self.running_var.fill_(1.0)
        self.chi2_buffer.zero_()
        self.psi_buffer.zero_()
        self.iters.zero_()
        self.backward_iters.zero_()
        self._iters = self._backward_iters = 0

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # the one place the counters are read back to the host (load time, not a training step)
        self._iters = int(self.iters)
        self._backward_iters = int(self.backward_iters)

    def _constants(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(eps, 0, 1/buffer_size per ring row): 0-d, 0-d and (buffer_size,) tensors of
        running_var's dtype and device, made again when running_var is replaced (.to(), .double(),
        ...: a float32 buffer converted to float64 would not hold 1e-5 exactly)."""
        running_var = self._buffers["running_var"]
        if self._constants_for is not running_var:
            like = dict(dtype=running_var.dtype, device=running_var.device)
            self._constants_cache = (
                torch.full((), self.eps, **like),
                torch.zeros((), **like),
                torch.full((self.buffer_size,), 1.0 / self.buffer_size, **like),
            )
            self._constants_for = running_var
        return self._constants_cache  # type: ignore[return-value]

    def _ring(self, name: str) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """(ring buffer, its transpose, its rows): the views are made once per buffer tensor, and
        again when .to() / load_state_dict(assign=True) / a copy replaced or re-allocated it."""
        ring = self._buffers[name]
        views = self._rings.get(name)
        if views is None or views[0] is not ring or views[2][0].data_ptr() != ring.data_ptr():
            views = self._rings[name] = (ring, ring.t(), ring.unbind(0))
        return views

    def _ring_mean(
        self, views: tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]], filled: int
    ) -> torch.Tensor:
        """Mean of a ring's filled rows (all once `filled` >= buffer_size), all rows as one
        matrix-vector product (a third of what .mean(0) costs on tiny tensors)."""
        if filled < self.buffer_size:
            return views[0][:filled].mean(0)
        return torch.mv(views[1], self._constants()[2])

    # ---------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_channels)
        # e.g. under autocast: MABN computes in its parameters' dtype
        if x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        if not self.training:
            return F.batch_norm(
                x, self._zeros, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        if x.dim() == 4 and x.is_cuda and not x.is_contiguous():
            # channels_last: torch's CUDA eval-mode batch-norm backward asserts on it
            x = x.contiguous()
        # CUDA autocast would run the ring means (mv) in bf16/fp16
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return _MABNFunction.apply(x, self.weight, self.bias, self)
        return _MABNFunction.apply(x, self.weight, self.bias, self)

    @torch.no_grad()
    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), float64, with eval output = scale * x + shift per channel (for folding
        into a conv)."""
        scale = self.weight.double() * torch.rsqrt(self.running_var.double() + self.eps)
        return scale, self.bias.double().clone()

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, eps={self.eps}, momentum={self.momentum}, "
            f"buffer_size={self.buffer_size}, warmup_iters={self.warmup_iters}, "
            f"renorm_iters={self.renorm_iters}, r_max={self.r_max}, dim={self.dim}"
        )


class _MABNFunction(torch.autograd.Function):
    """One training iteration of a MovingAverageBatchNorm `layer` (which holds the state and
    options)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        layer: MovingAverageBatchNorm,
    ) -> torch.Tensor:
        # (speed: the per-channel tensors are tiny, so each op costs its dispatch; the code keeps
        # their number low)
        t = _count_forward(layer)
        raw = layer.uses_batch_stats(t)
        n = x.numel() // layer.num_channels
        var = _forward_variance(layer, x, n, t, raw)
        var_eps, denom, denom_eps = _renorm_denominator(layer, var, t)
        layer._buffers["running_var"].lerp_(var, 1.0 - layer.momentum)  # after r was taken
        # y = weight * x / sqrt(denom + denom_eps) + bias = weight * r * z + bias, by the eval-mode
        # BN kernel (running_mean 0, running_var denom)
        y = torch.batch_norm(
            x,
            weight,
            bias,
            layer._buffers["_zeros"],
            denom,
            False,
            0.0,
            denom_eps,
            torch.backends.cudnn.enabled,
        )
        ctx.save_for_backward(x, weight)
        ctx.layer, ctx.raw, ctx.n = layer, raw, n
        ctx.denom, ctx.denom_eps, ctx.var_eps = denom, denom_eps, var_eps
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "MABN's backward is not differentiable (no double backward / create_graph=True)"
            )
        x, weight = ctx.saved_tensors
        layer: MovingAverageBatchNorm = ctx.layer
        buffers = layer._buffers
        need_x, need_weight, need_bias, _ = ctx.needs_input_grad
        # the eval-mode BN backward kernel (running_mean 0, running_var denom) gives in one pass dx0
        # = dy * weight * r / sqrt(var+eps) = g / sqrt(var+eps),  dweight = sum(dy * r * z),  dbias
        # = sum(dy)
        dx, dweight, dbias = _bn_backward(
            dy,
            x,
            weight,
            buffers["_zeros"],
            ctx.denom,
            None,
            None,
            False,
            ctx.denom_eps,
            [need_x, True, need_bias],
        )
        k = layer._backward_iters + 1
        layer._backward_iters = k
        buffers["backward_iters"].add_(buffers["_one"])
        ring = layer._ring("psi_buffer")
        psi = ring[2][(k - 1) % layer.buffer_size]
        # psi = E[g z] = weight * sum(dy r z) / n, for one device's loss
        torch.addcmul(buffers["_zeros"], weight, dweight, value=layer.loss_devices / ctx.n, out=psi)
        if need_x:
            psibar = psi if ctx.raw else layer._ring_mean(ring, k)
            # dx = (g - z * psibar) / sqrt(var+eps) = dx0 - x * psibar / (var+eps)
            var_eps = (
                ctx.var_eps
                if ctx.var_eps is not None
                else torch.add(ctx.denom, layer._constants()[0])
            )
            coef = torch.div(psibar, var_eps)
            coef = coef if layer.dim == 1 else coef.view(-1, 1, 1)
            dx.addcmul_(x, coef, value=-1.0 / layer.loss_devices)
        return dx, dweight if need_weight else None, dbias if need_bias else None, None


_bn_backward = torch.ops.aten.native_batch_norm_backward.default


def _count_forward(layer: MovingAverageBatchNorm) -> int:
    """Count one training forward (host mirror and buffer together) and return its iteration t."""
    t = layer._iters + 1
    layer._iters = t
    layer._buffers["iters"].add_(layer._buffers["_one"])
    return t


def _forward_variance(
    layer: MovingAverageBatchNorm, x: torch.Tensor, n: int, t: int, raw: bool
) -> torch.Tensor:
    """var of iteration t: this batch's chi2 = E[x^2] if `raw`, else the mean of the chi2 ring
    (SMAS); either way chi2 is written into the ring slot of iteration t."""
    zero = layer._constants()[1]
    # x^2 / n: its sums over the axes are E[x^2]
    square = torch.addcmul(zero, x, x, value=1.0 / n)
    axes = (0, 2, 3) if layer.dim == 2 else (0,)
    ring = layer._ring("chi2_buffer")
    slot = ring[2][(t - 1) % layer.buffer_size]
    if raw:
        var = torch.sum(square, axes)
        slot.copy_(var)
        return var
    torch.sum(square, axes, out=slot)  # chi2 of this batch, straight into its ring slot
    return layer._ring_mean(ring, t)


def _renorm_denominator(
    layer: MovingAverageBatchNorm, var: torch.Tensor, t: int
) -> tuple[torch.Tensor | None, torch.Tensor, float]:
    """(var + eps or None, denom, denom_eps) with r / sqrt(var + eps) = 1 / sqrt(denom + denom_eps);
    reads running_var before this step's update."""
    if t <= layer.fixed_r_iters:  # r = 1
        return None, var, layer.eps
    # r = clip(sqrt(var+eps) / sqrt(running_var+eps), 1/r_max, r_max) enters only as r /
    # sqrt(var+eps) = 1 / sqrt(denom) with denom = (var+eps) * clip((running_var+eps) /
    # (var+eps), 1/r_max^2, r_max^2)
    eps = layer._constants()[0]
    var_eps = torch.add(var, eps)
    denom = (
        torch.add(layer._buffers["running_var"], eps)
        .div_(var_eps)
        .clamp_(layer._inv_r2, layer._r2)
        .mul_(var_eps)
    )
    return var_eps, denom, 0.0


def moving_average_batch_norm(
    num_channels: int,
    dim: int = 2,
    *,
    eps: float = 1e-5,
    momentum: float = 0.98,
    buffer_size: int = 16,
    warmup_iters: int = 100,
    renorm_iters: int = 1000,
    r_max: float = 5.0,
    center_weights: bool = True,
) -> nn.Module:
    """MABN with the official defaults (see docs/norms.md#mabn).

    Args:
        momentum: the weight of the OLD value (running = 0.98 * running + 0.02 * var, the paper's
            convention, not torch's).
        r_max: >= 1; bounds r to [1/r_max, r_max] once r is released after
            max(renorm_iters, warmup_iters) iterations.
        buffer_size: the SMAS window.
        center_weights: read by the backbone builder (weight centralization of every conv, on by
            default); does not change this layer.
    """
    check_layer("mabn", num_channels, dim)
    eps = check_eps("mabn", eps)
    momentum = check_number("mabn", "momentum", momentum, 0, 1)
    buffer_size = check_int("mabn", "buffer_size", buffer_size, minimum=1)
    warmup_iters = check_int("mabn", "warmup_iters", warmup_iters, minimum=0)
    renorm_iters = check_int("mabn", "renorm_iters", renorm_iters, minimum=0)
    r_max = check_number("mabn", "r_max", r_max, 1)
    # the backbone reads it by truthiness: only a real bool is safe
    if not isinstance(center_weights, bool):
        raise NormConfigError(
            f"norm 'mabn': center_weights must be true or false, got {center_weights!r}"
        )
    return MovingAverageBatchNorm(
        num_channels,
        dim,
        eps=eps,
        momentum=momentum,
        buffer_size=buffer_size,
        warmup_iters=warmup_iters,
        renorm_iters=renorm_iters,
        r_max=r_max,
    )

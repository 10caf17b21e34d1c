"""Normalization layers compared by normbench: BN, LN, IN, GN (Wu & He, ECCV 2018), FRN, none, and
the variants registered in NORMS below (SyncBN, Batch Renorm, Ghost BN, EvoNorm-B0/S0, GN+WS,
...)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from . import _registration
from ._common import NormConfigError
from .batch_norm import batch_norm
from .batch_renorm import BatchRenorm, batch_renorm
from .conv_weight import CONV_WEIGHTS, convert_convs
from .cross_iteration_bn import cross_iteration_batch_norm
from .cross_iteration_bn import reference as cbn_reference
from .devices import RUNNING_STATS, PerDevice
from .evonorm import EvoNormB0, EvoNormS0, evonorm_b0, evonorm_s0
from .frn import FilterResponseNorm, filter_response_norm
from .ghost_batch_norm import GhostBatchNorm, ghost_batch_norm
from .group_norm import GroupNorm, gn_ws, group_norm, resolve_groups
from .identity import identity
from .instance_norm import instance_norm
from .l2norm import l2norm, l2norm_reference
from .layer_norm import LayerNorm, layer_norm
from .mabn import MovingAverageBatchNorm, moving_average_batch_norm
from .switchable_norm import switchable_norm, switchable_norm_reference
from .sync_batch_norm import SyncBatchNorm, sync_batch_norm, sync_world_size
from .weight_norm import mean_only_batch_norm, weight_norm_bias, weight_norm_reference

__all__ = [
    "NORMS",
    "NormSpec",
    "build_norm",
    "norm_options",
    "register_norm",
    "unregister_norm",
    "resolve_groups",
    "NormConfigError",
    "GroupNorm",
    "LayerNorm",
    "FilterResponseNorm",
    "CONV_WEIGHTS",
    "convert_convs",
    "SyncBatchNorm",
    "sync_world_size",
    "BatchRenorm",
    "GhostBatchNorm",
    "MovingAverageBatchNorm",
    "EvoNormB0",
    "EvoNormS0",
    "PerDevice",
    "RUNNING_STATS",
]


@dataclass(frozen=True)
class NormSpec:
    # factory(num_channels, dim[, act], *, **options) -> nn.Module, see build_norm
    factory: Callable[..., nn.Module]
    description: str  # one line for `normbench list norms`, names the paper
    batch_dependent: bool  # uses batch statistics in training: batch=1 is an error
    # carries its own activation (FRN's TLU): backbone adds none; its
    includes_activation: bool
    # factory takes `act` (act=False: the form without that
    # activation)
    supports_1d: bool  # has a meaningful form on (N, C) features
    conv_weight: str | None = None  # every conv of the model gets this weight reparametrization
    # (conv_weight.CONV_WEIGHTS: "center" for MABN, "standardize"
    # for GN+WS)
    # SyncBN can synchronise its batch statistics across processes (sync_bn=true; validate.py)
    syncable: bool = False
    # its statistics span every device (SyncBN): simulated devices share them rather than each
    # keeping its own (see per_device)
    synchronized: bool = False
    # `normbench check`'s formula reference: reference(module, train, act) -> f(x, params) giving
    # the module's output from its parameters (a dict name -> tensor) by the paper's formula, for
    # the first training step of a fresh layer (train=True) or in eval mode after that step;
    # None: selfcheck's own table (the first-round norms) or only the generic properties (plugins)
    reference: Callable[..., Callable[..., Any]] | None = None
    # options that make `normbench check` exercise the interesting path on a 5-image batch
    check_options: dict[str, Any] = field(default_factory=dict)
    # N(a*x) == N(x) for a > 0 (a fresh layer's first training step; without its own activation):
    # what `normbench check` holds a norm to; False for a layer that does not normalize (none)
    scale_invariant: bool = True
    # the module that registered this norm with register_norm (a plugin); None: a built-in
    plugin: str | None = None

    @property
    def per_device(self) -> bool:
        """With simulated devices each device gets its own statistics and state (PerDevice)."""
        return self.batch_dependent and not self.synchronized


NORMS: dict[str, NormSpec] = {
    "bn": NormSpec(
        batch_norm,
        "Batch Normalization (Ioffe & Szegedy, ICML 2015): per channel over (N, H, W) of the "
        "batch, running statistics in eval",
        True,
        False,
        True,
        syncable=True,
    ),
    "ln": NormSpec(
        layer_norm,
        "Layer Normalization (Ba et al., 2016) as in the GN paper: each sample over (C, H, W), "
        "per-channel affine",
        False,
        False,
        True,
    ),
    "in": NormSpec(
        instance_norm,
        "Instance Normalization (Ulyanov et al., 2016): each sample and channel over (H, W); no "
        "norm on fully connected layers",
        False,
        False,
        False,
    ),
    "gn": NormSpec(
        group_norm,
        "Group Normalization (Wu & He, ECCV 2018): each sample over groups of C/G channels and "
        "(H, W)",
        False,
        False,
        True,
    ),
    "frn": NormSpec(
        filter_response_norm,
        "Filter Response Normalization + TLU (Singh & Krishnan, CVPR 2020): x / "
        "sqrt(mean_HW(x^2) + eps), affine, max(y, tau)",
        False,
        True,
        True,
    ),
    "none": NormSpec(
        identity,
        "No normalization (identity): the baseline",
        False,
        False,
        True,
        scale_invariant=False,
    ),
    "mabn": NormSpec(
        moving_average_batch_norm,
        "Moving Average Batch Normalization (Yan et al., ICLR 2020): centering-free BN with "
        "moving-average forward/backward statistics, every conv centred",
        True,
        False,
        True,
        conv_weight="center",
    ),
    "syncbn": NormSpec(
        sync_batch_norm,
        "Synchronized BN (cross-GPU BN, Peng et al., MegDet, CVPR 2018) via nn.SyncBatchNorm: BN "
        "statistics over all processes' batches; one process: exactly BN",
        True,
        False,
        True,
        syncable=True,
        synchronized=True,
    ),
    "brn": NormSpec(
        batch_renorm,
        "Batch Renormalization (Ioffe, NeurIPS 2017): BN corrected towards the running "
        "statistics by clipped r, d (warm-up from BN)",
        True,
        False,
        True,
    ),
    "gbn": NormSpec(
        ghost_batch_norm,
        "Ghost Batch Normalization (Hoffer et al., NeurIPS 2017): BN statistics over virtual "
        "batches of ghost_batch images",
        True,
        False,
        True,
    ),
    "evonorm_b0": NormSpec(
        evonorm_b0,
        "EvoNorm-B0 (Liu et al., NeurIPS 2020): x / max(batch std, v*x + instance std), affine; "
        "replaces norm + activation; no norm on fc layers",
        True,
        True,
        False,
    ),
    "evonorm_s0": NormSpec(
        evonorm_s0,
        "EvoNorm-S0 (Liu et al., NeurIPS 2020): x * sigmoid(v*x) / group std (GN's groups), "
        "affine; replaces norm + activation",
        False,
        True,
        True,
    ),
    "gn_ws": NormSpec(
        gn_ws,
        "Group Normalization + Weight Standardization (Qiao et al., 2019): GN, and every conv's "
        "filters standardized",
        False,
        False,
        True,
        conv_weight="standardize",
    ),
    "l2norm": NormSpec(
        l2norm,
        "L2Norm (ParseNet, Liu et al., 2015; SSD, ECCV 2016): each position's C-vector divided by "
        "its L2 norm, learned per-channel scale (init 20) and shift",
        False,
        False,
        True,
        reference=l2norm_reference,
    ),
    "sn": NormSpec(
        switchable_norm,
        "Switchable Normalization (Luo et al., ICLR 2019): mean and variance as learned softmax "
        "mixtures of the IN, LN and BN statistics (fc: LN and BN)",
        True,
        False,
        True,
        reference=switchable_norm_reference,
    ),
    "wn": NormSpec(
        weight_norm_bias,
        "Weight Normalization (Salimans & Kingma, NeurIPS 2016): every conv and linear "
        "w = g * v / ||v||, no activation normalization (a per-channel bias)",
        False,
        False,
        True,
        conv_weight="weight_norm",
        reference=weight_norm_reference,
        scale_invariant=False,
    ),
    "wn_mobn": NormSpec(
        mean_only_batch_norm,
        "Weight Normalization + mean-only BN (Salimans & Kingma, NeurIPS 2016): w = g * v / ||v||, "
        "then x - batch mean + bias (running mean in eval)",
        True,
        False,
        True,
        conv_weight="weight_norm",
        reference=weight_norm_reference,
        scale_invariant=False,
    ),
    "cbn": NormSpec(
        cross_iteration_batch_norm,
        "Cross-Iteration BN (Yao et al., CVPR 2021): BN statistics over the last k iterations, "
        "Taylor-compensated to the preceding conv's current weights; BN during burn-in",
        True,
        False,
        True,
        reference=cbn_reference,
    ),
}


def norm_options(name: str) -> dict[str, Any]:
    """The keyword options of a registered norm with their defaults (what configs/norm/<name>.yaml
    holds).

    These are the factory's KEYWORD-ONLY parameters. Its positional-or-keyword parameters --
    num_channels, dim and, for a norm with its own activation, act -- describe the layer and come
    from the backbone, so they are not options (tests/norms/test_norms.py checks every factory keeps
    to this)."""
    return _registration.factory_options(_spec(name).factory)


def _spec(name: str) -> NormSpec:
    spec = NORMS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise NormConfigError(f"unknown norm {name!r}; registered norms: {', '.join(NORMS)}")
    return spec


def build_norm(
    name: str, num_channels: int, dim: int = 2, *, act: bool = True, **options: Any
) -> nn.Module:
    """Build norm `name` for a layer of `num_channels` channels.

    dim=2: NCHW feature maps; dim=1: (N, C) features. act=False asks for the norm without its
    built-in activation (FRN without TLU, EvoNorm without its nonlinearity), for positions where the
    original network has a norm with no activation after it; for norms without a built-in activation
    it changes nothing. `act` is a layer argument, not an option: it is passed to the factories of
    norms with `includes_activation` only, and never appears in norm_options or configs/norm/*.yaml.
    Raises NormConfigError (a ValueError) for an unknown name, an option the norm does not take, a
    bad value, an unsupported dim, or an `act` that is not a bool.
    """
    spec = _spec(name)
    valid = norm_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        takes = ", ".join(valid) if valid else "no options"
        raise NormConfigError(
            f"norm {name!r} has no option {', '.join(unknown)}; it takes: {takes}"
        )
    if not isinstance(act, bool):
        raise NormConfigError(f"norm {name!r}: act must be True or False, got {act!r}")
    layer = {"act": act} if spec.includes_activation else {}
    return spec.factory(num_channels, dim, **layer, **options)


def register_norm(
    name: str,
    factory: Callable[..., nn.Module],
    *,
    description: str,
    batch_dependent: bool,
    includes_activation: bool,
    supports_1d: bool,
    conv_weight: str | None = None,
    syncable: bool = False,
    synchronized: bool = False,
    scale_invariant: bool = True,
    reference: Callable[..., Callable[..., Any]] | None = None,
    check_options: dict[str, Any] | None = None,
) -> NormSpec:
    """Add a norm of your own to NORMS, so that `norm=<name>` works in every command (a plugin).

    Traits as NormSpec's. Options: the factory's keyword-only parameters with their defaults, as for
    the built-ins (factory(num_channels, dim[, act], *, option=default)), stored as the config group
    option norm/<name> (Hydra's ConfigStore), so `norm.<option>=value` composes. A layer that is a
    per-channel affine map at eval says so with `eval_affine()` -> (scale, shift), as MABN does, and
    normbench.fuse folds it. `plugin` is the calling module, which may register the name again.
    Raises NormConfigError (one line) for a name taken by a built-in or another module, a bad name,
    a trait that is not a bool, or a factory that breaks the convention.
    """
    frame = inspect.currentframe()
    caller = frame.f_back if frame is not None else None
    module = str(caller.f_globals.get("__name__")) if caller is not None else "?"
    taken = NORMS.get(_registration.check_name(name))
    if taken is not None and taken.plugin != module:
        owner = "a built-in norm" if taken.plugin is None else f"registered by {taken.plugin!r}"
        raise NormConfigError(
            f"cannot register norm {name!r} from {module!r}: the name is taken ({owner}); pick "
            "another name"
        )
    flags = {
        "batch_dependent": batch_dependent,
        "includes_activation": includes_activation,
        "supports_1d": supports_1d,
        "syncable": syncable,
        "synchronized": synchronized,
        "scale_invariant": scale_invariant,
    }
    _registration.check_traits(name, flags, conv_weight)
    options = _registration.check_factory(name, factory, includes_activation)
    checked = dict(check_options or {})
    _registration.check_extras(name, description, reference, checked, options)
    spec = NormSpec(
        factory,
        description,
        conv_weight=conv_weight,
        reference=reference,
        check_options=checked,
        plugin=module,
        **flags,
    )
    NORMS[name] = spec
    _registration.store_config(name, options, module)
    return spec


def unregister_norm(name: str) -> None:
    """Remove a norm that register_norm added, and its config (the built-ins stay)."""
    spec = _spec(name)
    if spec.plugin is None:
        raise NormConfigError(f"norm {name!r} is built in: only plugin norms can be unregistered")
    del NORMS[name]
    _registration.forget_config(name)

"""The CNN backbones (CIFAR ResNet-20/56, ResNet-18/50, ShuffleNet V2) with every registered norm;
equality with torchvision's models under BN; zero-init of the residual gamma; activation handling
(including the activation-free form of FRN/EvoNorm where torchvision has a norm without ReLU); bad
options."""

from __future__ import annotations

import functools
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import DictConfig
from torch import nn

from normbench.backbones import BACKBONES, build_model, count_parameters
from normbench.config import compose
from normbench.norms import NORMS, build_norm, convert_convs

CNN = ["resnet20", "resnet56", "resnet18", "resnet50", "shufflenet_v2"]
SIZE = 16  # small images keep the all-norms grid fast; every backbone leaves >= 2x2 maps at 16 px
# read at collection time: new norms are tested as soon as they are registered
NORMS_NOW = sorted(NORMS)


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one intra-op thread is as fast, and stays fast when other processes
    share the cores (two OpenMP threads on a busy 2-core machine made a ResNet-50 step 10x
    slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _composed(backbone: str, norm: str, overrides: tuple[str, ...]) -> DictConfig:
    return compose([f"backbone={backbone}", f"norm={norm}", *overrides])


def build(
    backbone: str,
    norm: str = "bn",
    *overrides: str,
    in_channels: int = 3,
    image_size: int = SIZE,
    num_classes: int = 10,
):
    """build_model(compose([backbone=..., norm=..., *overrides, data.in_channels=..., ...])); one
    Hydra compose per (backbone, norm, overrides) (~60 ms each). The cached config's data shape is
    set on every call, and build_model only reads the config, so sharing it between calls is
    safe."""
    cfg = _composed(backbone, norm, overrides)
    cfg.data.in_channels, cfg.data.image_size, cfg.data.num_classes = (
        in_channels,
        image_size,
        num_classes,
    )
    return build_model(cfg)


def _slow_resnet50(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n == "resnet50" else n for n in names]


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(type(m), "last_norm")]


# ---- every backbone x every norm x 1 and 3 input channels ----


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("norm", NORMS_NOW)
@pytest.mark.parametrize("backbone", _slow_resnet50(CNN))
def test_every_backbone_with_every_norm(backbone, norm, in_channels):
    torch.manual_seed(0)
    model, choice = build(backbone, norm, in_channels=in_channels)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # MABN's centred / GN+WS's standardized convs: every conv converted
    if choice.conv_weight is not None:
        assert all(type(m) is not nn.Conv2d for m in convs)
    # batch 2: the GN paper's smallest
    x = torch.randn(2, in_channels, SIZE, SIZE, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    # max |g|
    assert grads and torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=float("inf")))
    # the gradient reaches the stem (every parameter of it: a WN conv's g and v)
    assert all(p.grad.abs().sum() > 0 for p in convs[0].parameters())
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


# ---- equality with torchvision under BN ----


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _same_function(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> None:
    """theirs loads our state_dict and computes the same outputs, with batch statistics and in
    eval."""
    theirs.load_state_dict(ours.state_dict())
    for train in (True, False):
        ours.train(train)
        theirs.train(train)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


def _torchvision_resnet(depth: int, num_classes: int, in_channels: int, small: bool) -> nn.Module:
    model = getattr(torchvision.models, f"resnet{depth}")(num_classes=num_classes)
    if small:  # what our small stem is defined to equal
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("stem", ["imagenet", "small"])
@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_with_bn_is_torchvisions(depth, stem, in_channels):
    """ImageNet stem: state_dict keys, shapes, parameter count and outputs equal torchvision's
    resnet18/50 (conv1 taking `in_channels`). Small stem: the same, against torchvision's model with
    conv1 replaced by a 3x3 stride-1 conv and no max-pool."""
    image_size = 224 if stem == "imagenet" else 32  # stem=auto picks the stem from the image size
    ours, _ = build(f"resnet{depth}", "bn", in_channels=in_channels, image_size=image_size)
    assert ours.small_stem == (stem == "small")
    theirs = _torchvision_resnet(depth, 10, in_channels, stem == "small")
    assert _shapes(ours) == _shapes(theirs)
    assert count_parameters(ours) == count_parameters(theirs)
    side = 64 if stem == "imagenet" else 16
    _same_function(ours, theirs, torch.randn(2, in_channels, side, side))


@pytest.mark.parametrize("depth,count", [(18, 11_689_512), (50, 25_557_032)])
def test_resnet_parameter_count_for_imagenet_classes(depth, count):
    ours, _ = build(f"resnet{depth}", "bn", image_size=224, num_classes=1000)
    assert (
        count_parameters(ours)
        == count_parameters(getattr(torchvision.models, f"resnet{depth}")())
        == count
    )


SHUFFLENETS = {
    0.5: torchvision.models.shufflenet_v2_x0_5,
    1.0: torchvision.models.shufflenet_v2_x1_0,
    1.5: torchvision.models.shufflenet_v2_x1_5,
    2.0: torchvision.models.shufflenet_v2_x2_0,
}


@pytest.mark.parametrize("stem", ["imagenet", "small"])
@pytest.mark.parametrize("width", sorted(SHUFFLENETS))
def test_shufflenet_with_bn_is_torchvisions(width, stem):
    """Every width: keys, shapes, parameter count and outputs equal torchvision's shufflenet_v2_x*;
    the small stem equals torchvision's with a stride-1 conv1 and no max-pool (same parameter
    count)."""
    image_size = 224 if stem == "imagenet" else 32
    ours, _ = build("shufflenet_v2", "bn", f"backbone.width={width}", image_size=image_size)
    assert ours.small_stem == (stem == "small")
    theirs = SHUFFLENETS[width](num_classes=10)
    if stem == "small":
        theirs.conv1[0] = nn.Conv2d(3, 24, 3, stride=1, padding=1, bias=False)
        theirs.maxpool = nn.Identity()
    assert _shapes(ours) == _shapes(theirs)
    assert count_parameters(ours) == count_parameters(theirs)
    side = 64 if stem == "imagenet" else 16
    _same_function(ours, theirs, torch.randn(2, 3, side, side))


def test_shufflenet_one_channel_and_imagenet_classes():
    ours, _ = build("shufflenet_v2", "bn", in_channels=1, image_size=224, num_classes=1000)
    theirs = torchvision.models.shufflenet_v2_x1_0()
    theirs.conv1[0] = nn.Conv2d(1, 24, 3, stride=2, padding=1, bias=False)
    assert _shapes(ours) == _shapes(theirs)
    imagenet_count = count_parameters(torchvision.models.shufflenet_v2_x1_0())
    # 1 of 3 channels
    assert imagenet_count == 2_278_604 and count_parameters(ours) == imagenet_count - 2 * 24 * 9
    _same_function(ours, theirs, torch.randn(2, 1, 64, 64))


# ---- the CIFAR ResNets ----


def _cifar_resnet_count(
    n: int, in_channels: int = 3, classes: int = 10, projection: bool = False
) -> int:
    """He et al.'s 6n+2 network counted by hand: stem conv + BN, 3n blocks of two 3x3 convs + 2 BN,
    fc."""
    total = in_channels * 16 * 9 + 2 * 16
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += c_in * c * 9 + c * c * 9 + 4 * c
            if projection and c_in != c:
                total += c_in * c + 2 * c
            c_in = c
    return total + 64 * classes + classes


@pytest.mark.parametrize(
    "backbone,n,paper_millions", [("resnet20", 3, 0.27), ("resnet56", 9, 0.85)]
)
def test_cifar_resnet_structure_and_parameter_count(backbone, n, paper_millions):
    model, _ = build(backbone, "bn", image_size=32)
    assert count_parameters(model) == _cifar_resnet_count(n)
    assert round(count_parameters(model) / 1e6, 2) == paper_millions  # the paper's Table 6
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == 6 * n + 2  # option A shortcuts have no weights: 6n+2 layers
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [n] * 3
    assert [getattr(model, f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3)] == [16, 32, 64]
    x = torch.randn(2, 3, 32, 32)
    features = model.layer3(model.layer2(model.layer1(model.act1(model.bn1(model.conv1(x))))))
    assert features.shape == (2, 64, 8, 8)  # 32 -> 16 -> 8 as in the paper


def test_cifar_resnet_depth_and_projection_options():
    model, _ = build("resnet20", "bn", "backbone.depth=32", "backbone.shortcut=B", in_channels=1)
    assert count_parameters(model) == _cifar_resnet_count(5, in_channels=1, projection=True)
    assert isinstance(model.layer2[0].shortcut, nn.Sequential)
    zero_pad, _ = build("resnet20", "bn")
    block = zero_pad.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)  # option A: subsample, then 16 zero channels
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2]) and not out[:, 16:].any()


# ---- options: zero-init of the residual gamma, activations, biases, init ----


@pytest.mark.parametrize(
    "backbone,blocks",
    [
        ("resnet20", 9),
        ("resnet56", 27),
        ("resnet18", 8),
        pytest.param("resnet50", 16, marks=pytest.mark.slow),
    ],
)
def test_zero_init_residual_sets_last_gamma_of_every_block(backbone, blocks):
    default, _ = build(backbone, "bn")
    assert all((m.weight == 1).all() for m in default.modules() if isinstance(m, nn.BatchNorm2d))
    model, _ = build(backbone, "bn", "backbone.zero_init_residual=true")
    last = {id(b.last_norm) for b in _blocks(model)}
    assert len(last) == blocks
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 0).all() if id(m) in last else (m.weight == 1).all()


def _has_scale(norm: str) -> bool:
    return isinstance(getattr(build_norm(norm, 16), "weight", None), nn.Parameter)


WITH_SCALE = [n for n in NORMS_NOW if _has_scale(n)]
WITHOUT_SCALE = [n for n in NORMS_NOW if not _has_scale(n)]  # none


@pytest.mark.parametrize("norm", WITH_SCALE)
def test_zero_init_residual_starts_blocks_as_identity(norm):
    """gamma = 0 in the last norm: every identity-shortcut block maps a non-negative input to itself
    (the GN paper's reason for the option), and gamma still gets a gradient (the block is not
    dead)."""
    model, _ = build("resnet20", norm, "backbone.zero_init_residual=true")
    block = model.layer1[1]
    x = torch.rand(4, 16, 8, 8)
    out = block(x)
    torch.testing.assert_close(out, x)
    model(torch.randn(4, 3, SIZE, SIZE)).square().mean().backward()
    assert any(b.last_norm.weight.grad.abs().sum() > 0 for b in _blocks(model))


@pytest.mark.parametrize("norm", WITHOUT_SCALE)
def test_zero_init_residual_needs_a_norm_with_a_scale(norm):
    with pytest.raises(
        ValueError, match=f"norm={norm} has no learnable scale.*zero_init_residual=false"
    ):
        build("resnet18", norm, "backbone.zero_init_residual=true")


def test_shufflenet_has_no_zero_init_residual():
    with pytest.raises(ValueError, match="no residual addition"):
        build("shufflenet_v2", "bn", "backbone.zero_init_residual=true")


OWN_ACTIVATION = [n for n in NORMS_NOW if NORMS[n].includes_activation]


@pytest.mark.parametrize("norm", OWN_ACTIVATION)
@pytest.mark.parametrize("backbone", _slow_resnet50(CNN))
def test_norm_with_own_activation_gets_no_relu_after_it(backbone, norm):
    """FRN+TLU / EvoNorm replace norm + ReLU pairs: no ReLU follows them; only the activation after
    each residual addition stays (ShuffleNet V2 has no additions, so no ReLU at all)."""
    model, _ = build(backbone, norm)
    relus = {name for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    blocks = {name for name, m in model.named_modules() if hasattr(type(m), "last_norm")}
    assert relus == {f"{name}.act_out" for name in blocks}
    for name, m in model.named_modules():
        if re.fullmatch(r"(.*\.)?act\d", name):
            assert isinstance(m, nn.Identity), name


def _norms_followed_by_relu(backbone: str, overrides: tuple[str, ...]) -> dict[str, bool]:
    """{name of each norm in the BN model: whether its output goes straight into a ReLU}, read off a
    forward pass (hooks: a norm's output tensor is the very tensor a ReLU receives). The BN models
    compute what torchvision's do (test_*_with_bn_is_torchvisions), so this is where torchvision has
    norm + ReLU."""
    model, choice = build(backbone, "bn", *overrides)
    built = {id(m) for m in choice.built}
    outputs: dict[str, torch.Tensor] = {}
    relu_inputs: list[torch.Tensor] = []
    for name, m in model.named_modules():
        if id(m) in built:
            m.register_forward_hook(lambda mod, inp, out, name=name: outputs.__setitem__(name, out))
        elif isinstance(m, nn.ReLU):
            m.register_forward_pre_hook(lambda mod, inp: relu_inputs.append(inp[0]))
    model(torch.randn(2, 3, SIZE, SIZE))
    assert len(outputs) == len(built)
    return {name: any(out is r for r in relu_inputs) for name, out in outputs.items()}


# (backbone, overrides, norms with no ReLU after them in torchvision / the paper)
POSITION_CASES = [
    # bn2 of the 9 blocks (option A shortcuts have no norm)
    ("resnet20", (), 9),
    ("resnet20", ("backbone.shortcut=B",), 11),  # + the 2 projection shortcuts' norms
    ("resnet18", (), 8 + 3),  # bn2 of 8 blocks + downsample.1 of 3
    # bn3 of 16 blocks + downsample.1 of 4
    pytest.param("resnet50", (), 16 + 4, marks=pytest.mark.slow),
    # the depthwise convs' norms: branch2.4 of 16 units, branch1.1 of 3
    ("shufflenet_v2", (), 16 + 3),
]


@pytest.mark.parametrize("norm", OWN_ACTIVATION)
@pytest.mark.parametrize("backbone,overrides,linear", POSITION_CASES)
def test_own_activation_norm_is_activation_free_where_torchvision_has_no_relu(
    backbone, overrides, linear, norm
):
    """Where torchvision has norm + ReLU, FRN/EvoNorm come with their activation; where it has a
    norm and no ReLU (before each residual addition, in projection shortcuts, after ShuffleNet's
    depthwise convs), they come in their act=False form: no TLU / EvoNorm nonlinearity, no tau /
    v."""
    followed = _norms_followed_by_relu(backbone, overrides)
    assert sum(not f for f in followed.values()) == linear and any(followed.values())
    model, choice = build(backbone, norm, *overrides)
    built = {id(m) for m in choice.built}
    ours = {name: m for name, m in model.named_modules() if id(m) in built}
    assert set(ours) == set(followed)  # same positions, same names as with BN (torchvision's)
    for name, m in ours.items():
        params = {k for k, _ in m.named_parameters()}
        if followed[name]:
            assert m.act is True and params & {"tau", "v"}, name
        else:
            assert m.act is False and not params & {"tau", "v"} and "act=False" in repr(m), name
    for block in _blocks(model):  # the module right before each residual addition
        params = {k for k, _ in block.last_norm.named_parameters()}
        assert block.last_norm.act is False and not params & {"tau", "v"}


@pytest.mark.parametrize("backbone", _slow_resnet50(CNN))
def test_frn_branch_ends_linear_and_tlu_elsewhere(backbone):
    """With FRN (tau = 0 at init, so a TLU output is >= 0), the norms without TLU give negative
    values into the residual addition / the 1x1 conv after a depthwise conv; the ones with TLU never
    do."""
    model, choice = build(backbone, "frn")
    outputs: dict[int, torch.Tensor] = {}
    for m in choice.built:
        m.register_forward_hook(lambda mod, inp, out: outputs.__setitem__(id(mod), out))
    model(torch.randn(2, 3, SIZE, SIZE))
    for m in choice.built:
        out = outputs[id(m)]
        assert (out < 0).any() if not m.act else (out >= 0).all(), repr(m)
    assert sum(not m.act for m in choice.built) > 0


@pytest.mark.parametrize(
    "backbone,relus",
    [
        ("resnet20", 1 + 9 * 2),
        ("resnet18", 1 + 8 * 2),
        pytest.param("resnet50", 1 + 16 * 3, marks=pytest.mark.slow),
        ("shufflenet_v2", None),
    ],
)
def test_bn_is_followed_by_relu_where_torchvision_has_one(backbone, relus):
    model, _ = build(backbone, "bn")
    ours = sum(isinstance(m, nn.ReLU) for m in model.modules())
    if relus is None:  # ShuffleNet: one ReLU module per ReLU application in torchvision too
        relus = sum(
            isinstance(m, nn.ReLU) for m in torchvision.models.shufflenet_v2_x1_0().modules()
        )
    assert ours == relus
    for block in _blocks(model):
        assert isinstance(block.act1, nn.ReLU) and isinstance(block.act_out, nn.ReLU)


@pytest.mark.parametrize("backbone", CNN)
def test_conv_bias_only_without_norm(backbone):
    for norm, bias in (("bn", False), ("none", True)):
        model, _ = build(backbone, norm)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert all((m.bias is not None) == bias for m in convs), norm
        assert model.fc.bias is not None


def test_he_init_by_default_then_xavier_and_conv_conversion_apply():
    torch.manual_seed(0)
    model, _ = build("resnet20", "none")
    # He et al. 2015, fan_out: std sqrt(2 / (out * k * k))
    for conv in (model.conv1, model.layer3[2].conv2):
        std = (2 / (conv.out_channels * 9)) ** 0.5
        assert abs(conv.weight.std().item() - std) < 0.15 * std and not conv.bias.any()
    model, _ = build("resnet20", "bn", "backbone.init=xavier")
    conv = model.layer2[0].conv1
    fan_in, fan_out = conv.weight[0].numel(), conv.weight.shape[0] * conv.weight[0, 0].numel()
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert bound * 0.9 < conv.weight.abs().max() <= bound
    for backbone in ("resnet20", "resnet18", "shufflenet_v2"):
        model, _ = build(backbone, "gn")
        keys = _shapes(model)
        convs = sum(type(m) is nn.Conv2d for m in model.modules())
        assert convert_convs(model, "center") == convs and _shapes(model) == keys
        assert torch.isfinite(model(torch.randn(2, 3, SIZE, SIZE))).all()


# ---- bad options ----

BAD_OPTIONS = [  # (backbone, overrides, image size, message)
    ("resnet20", ["backbone.depth=21"], SIZE, "6n\\+2"),
    ("resnet56", ["backbone.depth=2"], SIZE, "6n\\+2"),
    ("resnet20", ["backbone.shortcut=C"], SIZE, "shortcut 'C'"),
    ("resnet20", [], 2, "2 px images leave a 1x1 final feature map; use images of at least 5 px"),
    ("resnet20", ["backbone.zero_init_residual=maybe"], SIZE, "true or false"),
    ("resnet18", ["backbone.stem=tiny"], SIZE, "unknown resnet18 stem 'tiny'"),
    (
        "resnet50",
        ["backbone.stem=imagenet"],
        SIZE,
        "1x1 final feature map.*at least 33 px or backbone.stem=small",
    ),
    ("resnet18", ["backbone.activation=gelu"], SIZE, "unknown activation 'gelu'"),
    (
        "shufflenet_v2",
        ["backbone.width=0.75"],
        SIZE,
        "width 0.75; choose one of 0.5, 1.0, 1.5, 2.0",
    ),
    ("shufflenet_v2", ["backbone.width=wide"], SIZE, "unknown shufflenet_v2 width 'wide'"),
    ("shufflenet_v2", [], 8, "1x1 final feature map; use images of at least 9 px"),
]


@pytest.mark.parametrize("backbone,overrides,image_size,message", BAD_OPTIONS)
def test_bad_options_raise_value_error(backbone, overrides, image_size, message):
    with pytest.raises(ValueError, match=message):
        build(backbone, "bn", *overrides, image_size=image_size)


def test_bad_option_is_one_line_user_error(normbench):
    result = normbench(
        "run", "backbone=shufflenet_v2", "backbone.width=3", "data=synthetic", "log.progress=none"
    )
    assert result.code == 2
    assert (
        result.err.strip().count("\n") == 0
        and "width" in result.err
        and "Traceback" not in result.err
    )


# ---- listing and running ----


def test_listed_parameter_counts_are_true():
    """`normbench list backbones` prints each description; the counts in it are BN, 10 classes, 3 x
    32 x 32."""

    def numbers(name):
        return [
            int(n.replace(",", ""))
            for n in re.findall(r"\d{1,3}(?:,\d{3})+", BACKBONES[name].description)
        ]

    assert numbers("resnet20") == [count_parameters(build("resnet20", image_size=32)[0])]
    assert numbers("resnet56") == [count_parameters(build("resnet56", image_size=32)[0])]
    for name in ("resnet18", "resnet50"):
        assert numbers(name) == [
            count_parameters(build(name, image_size=32)[0]),
            count_parameters(build(name, image_size=224)[0]),
        ]
    assert numbers("shufflenet_v2") == [
        count_parameters(build("shufflenet_v2", "bn", f"backbone.width={w}")[0])
        for w in (0.5, 1.0, 1.5, 2.0)
    ]


def test_list_backbones_shows_counts_and_inputs(normbench):
    result = normbench("list", "backbones")
    assert result.code == 0
    lines = {line.split()[0]: line for line in result.out.splitlines()}
    for name in CNN:
        assert "params" in lines[name] and "input:" in lines[name] and "px" in lines[name]


@pytest.mark.parametrize(
    "backbone,norm",
    [
        ("resnet20", "gn"),
        ("resnet56", "frn"),
        ("resnet18", "bn"),
        pytest.param("resnet50", "gn", marks=pytest.mark.slow),
        ("shufflenet_v2", "ln"),
    ],
)
def test_run_trains_a_few_steps(normbench, backbone, norm):
    result = normbench(
        "run",
        f"backbone={backbone}",
        f"norm={norm}",
        "data=synthetic",
        "data.in_channels=3",
        f"data.image_size={SIZE}",
        "data.train_size=32",
        "data.test_size=16",
        "batch=8",
        "epochs=1",
        "log.progress=none",
    )
    assert result.code == 0, result.err
    record = result.record()
    assert record["status"] == "completed" and record["setup"]["steps_per_epoch"] == 4
    assert record["setup"]["parameters"] == count_parameters(build(backbone, norm)[0])
    assert record["metrics"]["train_loss"] == record["metrics"]["train_loss"]  # not NaN

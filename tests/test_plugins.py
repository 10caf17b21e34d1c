"""Norm plugins: register_norm, the entry-point group normbench.norms, --plugin MODULE and
NORMBENCH_PLUGINS; a plugin norm trains through `normbench run` and `sweep` and shows in tables and
`normbench list norms`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY
from test_cli_errors import assert_one_line_error
from torch import nn

from normbench.backbones import BACKBONES, build_model
from normbench.config import compose
from normbench.errors import UserError
from normbench.fuse import fold_norms
from normbench.norms import (
    NORMS,
    NormConfigError,
    PerDevice,
    build_norm,
    norm_options,
    register_norm,
    unregister_norm,
)
from normbench.plugins import PLUGINS_ENV, load_worker_plugins, worker_plugins

# A whole plugin module: RMS normalization of each sample over (C, H, W), per-channel affine.
PLUGIN = """
import torch
from torch import nn

from normbench.norms import register_norm


class RMSNorm(nn.Module):
    def __init__(self, num_channels, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale = torch.rsqrt(x.pow(2).mean(tuple(range(1, x.dim())), keepdim=True) + self.eps)
        return x * scale * self.weight.view(shape) + self.bias.view(shape)


def rms_norm(num_channels, dim=2, *, eps=1e-5):
    return RMSNorm(num_channels, eps)


register_norm(
    "{name}",
    rms_norm,
    description="RMS normalization of each sample over (C, H, W), per-channel affine",
    batch_dependent=False,
    includes_activation=False,
    supports_1d=True,
)
"""


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Writes plugin modules into a folder on sys.path; afterwards their norms, modules and configs
    are gone again (other tests iterate over NORMS)."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    before, written = set(NORMS), []

    def write(module: str, source: str) -> Path:
        path = site / f"{module}.py"
        path.write_text(source)
        written.append(module)
        return path

    write.site = site
    yield write
    for name in set(NORMS) - before:
        unregister_norm(name)
    for module in written:
        sys.modules.pop(module, None)


def _entry_point_package(plugins, group_line: str) -> None:
    """An installed distribution (dist-info with entry_points.txt) without pip."""
    info = plugins.site / "ep_norms_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-norms-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[normbench.norms]\n{group_line}\n")


def test_plugins_train_through_run_and_show_in_a_sweep_table(normbench, plugins, tmp_path):
    plugins("ep_norms_mod", PLUGIN.replace("{name}", "ep_rms"))
    _entry_point_package(plugins, "rms = ep_norms_mod")
    plugins("cli_norms_mod", PLUGIN.replace("{name}", "cli_rms"))
    out = tmp_path / "outputs"

    by_entry_point = normbench("run", *TINY, "norm=ep_rms")  # installed: no option needed
    assert by_entry_point.code == 0 and "completed:" in by_entry_point.out, by_entry_point.err
    assert by_entry_point.record()["config"]["norm"] == {"name": "ep_rms", "eps": 1e-5}
    assert by_entry_point.record()["setup"]["norm_plugin"] == "ep_norms_mod"  # says whose code
    by_option = normbench("run", "--plugin", "cli_norms_mod", *TINY, "norm=cli_rms")
    assert by_option.code == 0 and "completed:" in by_option.out, by_option.err

    swept = normbench(
        "sweep", "--plugin", "cli_norms_mod", *TINY, f"out={out}", "norm=ep_rms,cli_rms"
    )
    assert swept.code == 0, swept.err
    # the same configs, so the same run keys: both runs are found done
    assert "2 cells: 0 completed, 2 skipped (already completed)" in swept.out
    table = next((out / "sweeps").glob("*/table.md")).read_text()
    assert "| ep_rms |" in table and "| cli_rms |" in table


@pytest.mark.slow
def test_sweep_worker_processes_register_the_same_plugins(normbench, plugins, tmp_path):
    plugins("worker_norms_mod", PLUGIN.replace("{name}", "worker_rms"))
    result = normbench(
        "sweep",
        "--plugin",
        "worker_norms_mod",
        *TINY,
        f"out={tmp_path / 'outputs'}",
        "norm=worker_rms,bn",
        "--jobs",
        "2",
    )
    assert result.code == 0, result.err
    assert "2 cells: 2 completed" in result.out, result.out
    assert "| worker_rms |" in result.out


def test_worker_state_brings_back_the_plugin_norms(plugins):
    plugins("state_norms_mod", PLUGIN.replace("{name}", "state_rms"))
    __import__("state_norms_mod")
    state = worker_plugins()
    assert state["modules"] == ["state_norms_mod"] and str(plugins.site) in state["sys_path"]
    # a fresh worker: the norm, the module and the plugin's folder are unknown there
    unregister_norm("state_rms")
    del sys.modules["state_norms_mod"]
    sys.path.remove(str(plugins.site))
    load_worker_plugins(state)
    assert NORMS["state_rms"].plugin == "state_norms_mod"


def test_an_entry_point_may_name_a_function_that_registers(normbench, plugins):
    source = PLUGIN.replace("register_norm(\n", "def register():\n    register_norm(\n")
    plugins("ep_function_mod", source.replace("{name}", "ep_fn_rms"))
    _entry_point_package(plugins, "fn = ep_function_mod:register")
    result = normbench("list", "norms")
    assert result.code == 0 and "plugin: ep_function_mod]" in result.out, result.err


def test_a_plugin_that_fails_to_load_is_one_line_exit_2(normbench, plugins, monkeypatch):
    plugins("broken_norms_mod", "raise RuntimeError('boom\\nsecond line')\n")
    broken = normbench("run", "--plugin", "broken_norms_mod", *TINY, "norm=bn")
    assert_one_line_error(broken, ["'broken_norms_mod' (--plugin)", "RuntimeError: boom"])
    assert not broken.root.exists(), "nothing is written"

    missing = normbench("list", "norms", "--plugin", "no_such_norms_mod")
    assert_one_line_error(missing, ["No module named 'no_such_norms_mod'", "installed"])
    not_a_module = normbench("check", "--plugin", "./mine.py")
    assert_one_line_error(not_a_module, ["is not a module name"])

    monkeypatch.setenv(PLUGINS_ENV, "no_such_env_mod")
    from_env = normbench("list", "norms")
    assert_one_line_error(from_env, ["'no_such_env_mod' (NORMBENCH_PLUGINS)"])
    monkeypatch.delenv(PLUGINS_ENV)

    _entry_point_package(plugins, "gone = gone_norms_mod")
    from_entry = normbench("list", "norms")
    assert_one_line_error(from_entry, ["entry point 'gone' of ep-norms-pkg", "gone_norms_mod"])


def test_a_name_clash_is_one_clear_error(normbench, plugins):
    plugins("clash_a_mod", PLUGIN.replace("{name}", "clash_rms"))
    plugins("clash_b_mod", PLUGIN.replace("{name}", "clash_rms"))
    result = normbench("list", "norms", "--plugin", "clash_a_mod", "--plugin", "clash_b_mod")
    assert_one_line_error(
        result, ["cannot register norm 'clash_rms' from 'clash_b_mod'", "by 'clash_a_mod'"]
    )
    with pytest.raises(NormConfigError, match="'bn'.*a built-in norm"):
        register_norm(
            "bn",
            NORMS["ln"].factory,
            description="mine",
            batch_dependent=False,
            includes_activation=False,
            supports_1d=True,
        )
    assert NORMS["bn"].plugin is None and NORMS["clash_rms"].plugin == "clash_a_mod"


def _rms(num_channels, dim=2, *, eps=1e-5, mode="a", limit=None):
    return build_norm("ln", num_channels, dim, eps=eps)


def _register(name="opt_rms", factory=_rms, **changes):
    traits = {
        "description": "LN by another name",
        "batch_dependent": False,
        "includes_activation": False,
        "supports_1d": True,
    }
    return register_norm(name, factory, **{**traits, **changes})


def test_options_come_from_the_factory_and_compose_like_a_built_in(plugins, cfg_of):
    spec = _register()
    assert spec.plugin == __name__  # the module that called register_norm
    assert norm_options("opt_rms") == {"eps": 1e-5, "mode": "a", "limit": None}
    cfg = cfg_of(["norm=opt_rms", "norm.eps=0.01"])
    assert dict(cfg.norm) == {"name": "opt_rms", "eps": 0.01, "mode": "a", "limit": None}
    with pytest.raises(UserError, match="unknown config key 'norm.groups'"):
        cfg_of(["norm=opt_rms", "norm.groups=2"])
    # the same module registering the name again (a reload) replaces it
    assert _register(description="again").description == NORMS["opt_rms"].description == "again"
    unregister_norm("opt_rms")
    assert "opt_rms" not in NORMS
    with pytest.raises(NormConfigError, match="built in"):
        unregister_norm("gn")


def _positional_option(num_channels, dim=2, eps=1e-5):
    return nn.Identity()


def _no_default(num_channels, dim=2, *, eps):
    return nn.Identity()


def _object_default(num_channels, dim=2, *, scale=torch.ones(1)):
    return nn.Identity()


def _no_act(num_channels, dim=2):
    return nn.Identity()


def _kwargs(num_channels, dim=2, **options):
    return nn.Identity()


BAD_REGISTRATIONS = [
    ({"name": "my norm"}, "a letter followed by"),
    ({"name": 3}, "a letter followed by"),
    ({"factory": _positional_option}, "keyword-only options"),
    ({"factory": _kwargs}, "keyword-only options"),
    ({"factory": _no_act, "includes_activation": True}, "factory(num_channels, dim, act"),
    ({"factory": _no_default}, "option eps needs a default"),
    ({"factory": _object_default}, "option scale needs a default that a config can hold"),
    ({"factory": "ln"}, "must be callable"),
    ({"batch_dependent": "yes"}, "batch_dependent must be True or False"),
    ({"conv_weight": "whiten"}, "conv_weight must be None or one of"),
    ({"description": "two\nlines"}, "description must be one line"),
    ({"reference": 1.0}, "reference must be callable"),
    ({"check_options": {"groups": 2}}, "check_options names groups"),
]


@pytest.mark.parametrize("changes,words", BAD_REGISTRATIONS, ids=[w for _, w in BAD_REGISTRATIONS])
def test_register_norm_refuses_what_a_built_in_could_not_be(plugins, changes, words):
    with pytest.raises(NormConfigError, match=words.replace("(", r"\(")):
        _register(**changes)
    assert "opt_rms" not in NORMS and "my norm" not in NORMS


def test_list_norms_marks_plugins_with_their_module(normbench, plugins):
    plugins("listed_norms_mod", PLUGIN.replace("{name}", "listed_rms"))
    result = normbench("list", "norms", "--plugin", "listed_norms_mod")
    assert result.code == 0, result.err
    lines = {line.split()[0]: line for line in result.out.splitlines()}
    assert lines["listed_rms"].endswith("[batch-independent, plugin: listed_norms_mod]")
    assert "plugin" not in lines["bn"]


def test_normbench_plugins_loads_every_module_it_names(normbench, plugins, monkeypatch):
    plugins("env_a_mod", PLUGIN.replace("{name}", "env_a_rms"))
    plugins("env_b_mod", PLUGIN.replace("{name}", "env_b_rms"))
    monkeypatch.setenv(PLUGINS_ENV, "env_a_mod, env_b_mod,")
    result = normbench("list", "norms")
    assert result.code == 0, result.err
    assert "plugin: env_a_mod]" in result.out and "plugin: env_b_mod]" in result.out


def test_plugin_finds_a_module_in_the_current_folder(normbench, plugins, tmp_path, monkeypatch):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "here_norms_mod.py").write_text(PLUGIN.replace("{name}", "here_rms"))
    plugins("here_norms_mod", "")  # only so that the fixture forgets the module afterwards
    (plugins.site / "here_norms_mod.py").unlink()
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [path for path in sys.path if path not in ("", ".")])
    result = normbench("list", "norms", "--plugin", "here_norms_mod")
    assert result.code == 0 and "plugin: here_norms_mod]" in result.out, result.err


def test_check_loads_plugins(normbench, plugins):
    plugins("checked_norms_mod", PLUGIN.replace("{name}", "checked_rms"))
    result = normbench("check", "--plugin", "checked_norms_mod", "--norm", "checked_rms")
    # the properties every norm must have (selfcheck), about the plugin's norm only
    assert result.code == 0 and "0 failed" in result.out, result.out + result.err
    assert "checked_rms" in result.out and "bn" not in result.out.split()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and robust on a busy machine
    yield
    torch.set_num_threads(threads)


def _torch_bn(num_channels, dim=2, *, momentum=0.1):
    return (nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d)(num_channels, momentum=momentum)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_trains_a_step_with_plugin_norms(plugins, backbone, one_thread):
    _register("plug_ln")
    _register("plug_bn", _torch_bn, batch_dependent=True)  # per simulated device: PerDevice
    torch.manual_seed(0)
    cases = [("plug_ln", 1), ("plug_bn", 3)]
    for norm, devices in cases[1:] if backbone == "resnet50" else cases:  # resnet50: 2-3 s a step
        cfg = compose([f"backbone={backbone}", f"norm={norm}", f"devices={devices}"])
        cfg.data.in_channels, cfg.data.image_size, cfg.data.num_classes = 3, 16, 10
        model, choice = build_model(cfg)
        assert choice.built and all(isinstance(m, PerDevice) == (devices > 1) for m in choice.built)
        x = torch.randn(6, 3, 16, 16, requires_grad=True)
        nn.functional.cross_entropy(model(x), torch.arange(6) % 10).backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


class _Scale(nn.Module):
    """y = 2x + 1 per channel: affine at eval, and says so as the built-ins do."""

    def forward(self, x):
        return 2 * x + 1

    def eval_affine(self):
        return torch.full((3,), 2.0, dtype=torch.float64), torch.ones(3, dtype=torch.float64)


def _scale(num_channels, dim=2):
    return _Scale()


def test_a_plugin_layer_with_eval_affine_folds_into_its_conv(plugins):
    _register("scale_affine", _scale)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), build_norm("scale_affine", 3)).eval()
    folded, count = fold_norms(model)
    x = torch.randn(2, 2, 5, 5)
    assert count == 1 and torch.allclose(folded(x), model(x), atol=1e-5)


def test_help_says_how_to_load_a_plugin(normbench):
    result = normbench("run", "--help")
    text = " ".join(result.out.split())
    assert "--plugin MODULE" in text and "NORMBENCH_PLUGINS=mod1,mod2" in text
    assert "normbench.norms.register_norm" in text

"""The converged study's presets (configs/experiment/*_study*.yaml) hold the protocol the results
page states, and the backbone variants share gn_study's protocol exactly."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from normbench.config import compose, compose_with_hydra

# the keys that make the protocol: data split, devices, schedule, epochs, evaluation
PROTOCOL = ("data", "eval", "devices", "accum", "epochs", "lr", "lr_scaling", "lr_ref_batch")
PROTOCOL += ("optim",)
VARIANTS = ["gn_study_fcnorm", "shufflenet_study", "resnet20_study"]


def _one(preset: str, *extra: str):
    return compose([f"experiment={preset}", "norm=bn", "batch=2", "seed=0", *extra])


def test_gn_study_is_the_stated_protocol():
    cfg = _one("gn_study")
    backbone = cfg.backbone
    assert (backbone.name, backbone.activation, backbone.pool) == ("lenet", "relu", "max")
    assert backbone.fc_norm is False  # norms after the convolutions only, as the paper's ResNets
    assert (cfg.data.name, cfg.data.train_size, cfg.data.val_size) == ("fashion_mnist", 10000, 5000)
    assert cfg.data.test_size is None  # the full test set
    assert (cfg.devices, cfg.accum, cfg.epochs) == (8, 1, 36)
    assert (cfg.lr, cfg.lr_scaling, cfg.lr_ref_batch) == (0.1, "linear", 256)
    assert list(cfg.optim.milestones) == [0.3, 0.6, 0.9] and cfg.optim.gamma == 0.1
    assert (cfg.optim.weight_decay, cfg.optim.warmup_epochs, cfg.optim.momentum) == (1e-4, 1, 0.9)
    assert cfg.eval.precise_batches == 200
    grid = compose_with_hydra(["experiment=gn_study"]).hydra.sweeper.params
    assert grid.batch == "32,16,8,4,2" and grid.seed == "0,1,2"


@pytest.mark.parametrize("preset", VARIANTS)
def test_study_variants_share_the_protocol(preset):
    main = OmegaConf.to_container(_one("gn_study"))
    variant = OmegaConf.to_container(_one(preset))
    for key in PROTOCOL:
        assert variant[key] == main[key], key


def test_the_variants_change_what_they_say():
    assert _one("gn_study_fcnorm").backbone.fc_norm is True
    shufflenet = _one("shufflenet_study")
    assert (shufflenet.backbone.name, shufflenet.backbone.width) == ("shufflenet_v2", 0.5)
    assert "fc_norm" not in shufflenet.backbone  # a LeNet key never leaks into another backbone
    resnet = _one("resnet20_study")
    assert (resnet.backbone.name, resnet.backbone.zero_init_residual) == ("resnet20", True)
    assert "fc_norm" not in resnet.backbone

"""Figures a paper can take (issue 16): `plot --out` writes the format its suffix names, one style
per norm that stays the same between figures, paper names in the legend, a caption that says what
was run and what the bars mean, `--chance`, `--size`, `--where`, and nothing clipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from normbench.errors import UserError
from normbench.study.events import RunCurves
from normbench.study.figure_parts import save_figure
from normbench.study.figures import make_curves_figure, make_figure
from normbench.study.run_records import load_runs
from normbench.study.style import NORM_STYLES, norm_name, norm_style
from normbench.study.tables import build_table
from normbench.study.where import parse_where

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MAGIC = {".pdf": b"%PDF-", ".png": b"\x89PNG\r\n\x1a\n"}
PAPER_NAMES = {
    "bn": "BN",
    "gn": "GN",
    "ln": "LN",
    "in": "IN",
    "frn": "FRN",
    "mabn": "MABN",
    "syncbn": "SyncBN",
    "brn": "BRN",
    "gbn": "GBN",
    "evonorm_b0": "EvoNorm-B0",
    "evonorm_s0": "EvoNorm-S0",
    "gn_ws": "GN+WS",
    "sn": "SN",
    "wn": "WN",
    "wn_mobn": "WN+MOBN",
    "l2norm": "L2Norm",
    "cbn": "CBN",
    "none": "no norm",
}


def write_run(root: Path, norm: str, batch: int, seed: int, error: float, **config) -> Path:
    """A completed run record of ResNet-20 on CIFAR-10 with 8 simulated devices."""
    run_dir = root / "runs" / f"{norm}-b{batch}-s{seed}-{config.get('epochs', 4)}"
    run_dir.mkdir(parents=True)
    cfg = {
        "backbone": {"name": "resnet20"},
        "data": {"name": "cifar10", "num_classes": 10, "train_size": 50000},
        "optim": {"name": "sgd"},
        "norm": {"name": norm},
        "epochs": 4,
        "devices": 8,
        "batch": batch,
        "seed": seed,
        "lr": 0.1,
        **config,
    }
    record = {
        "status": "completed",
        "config": cfg,
        "setup": {"train_images": cfg["data"]["train_size"], "steps_per_epoch": 4},
        "metrics": {"test_error": error, "train_loss": 0.5},
    }
    (run_dir / "record.json").write_text(json.dumps(record))
    return run_dir


def records(root: Path, norms=("bn", "gn"), seeds=(0,), **config) -> Path:
    for i, norm in enumerate(norms):
        for batch in (32, 2):
            for seed in seeds:
                write_run(root, norm, batch, seed, 20.0 + i + seed + 10 * (batch == 2), **config)
    return root


def lines_of(fig) -> dict[str, tuple]:
    """Legend label -> (colour, marker, line style) of each norm's error-bar line."""
    ax = fig.axes[0]
    return {
        container.get_label(): (
            container.lines[0].get_color(),
            container.lines[0].get_marker(),
            container.lines[0].get_linestyle(),
        )
        for container in ax.containers
    }


def legend_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


@pytest.mark.parametrize("suffix", [".pdf", ".svg", ".png", ".PDF"])
def test_the_suffix_chooses_the_format(tmp_path, normbench, suffix):
    records(tmp_path)
    target = tmp_path / "figs" / f"fig{suffix}"
    result = normbench("plot", str(tmp_path), "--out", str(target))
    assert result.code == 0, result.err
    data = target.read_bytes()
    if suffix.lower() == ".svg":
        assert data.lstrip().startswith(b"<?xml") and b"<svg" in data[:2000]
    else:
        assert data.startswith(MAGIC[suffix.lower()])
    if suffix == ".pdf":
        # fonts embedded as TrueType (Type 42), not Type 3 bitmaps-by-procedure
        assert b"/FontFile2" in data and b"/Type3" not in data
    # the same records give the same bytes (no creation date in the file)
    again = tmp_path / f"again{suffix}"
    assert normbench("plot", str(tmp_path), "--out", str(again)).code == 0
    assert again.read_bytes() == data


@pytest.mark.parametrize("name", ["fig.jpg", "fig", "fig.pdf.txt"])
def test_an_unknown_suffix_is_one_line_and_writes_nothing(tmp_path, normbench, name):
    records(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for extra in ([], ["--curves"]):
        result = normbench("plot", str(tmp_path), "--out", str(tmp_path / "out" / name), *extra)
        assert result.code == 2 and result.err.count("\n") == 1
        assert ".pdf" in result.err and ".svg" in result.err and ".png" in result.err
    assert sorted(tmp_path.rglob("*")) == before


def test_every_built_in_norm_has_its_paper_name_and_a_style_of_its_own():
    shipped = {path.stem for path in (CONFIGS / "norm").glob("*.yaml")}
    assert set(NORM_STYLES) == shipped == set(PAPER_NAMES)
    assert {norm: norm_name(norm) for norm in shipped} == PAPER_NAMES
    styles = [norm_style(norm) for norm in shipped]
    # no two built-in norms share a marker drawn the same way, nor a whole style
    assert len({(s.marker, s.filled) for s in styles}) == len(styles)
    assert len(set(styles)) == len(styles)


def test_a_plugin_norm_keeps_its_name_and_gets_a_stable_style_unlike_any_built_in():
    assert norm_name("my_norm") == "my_norm"
    style = norm_style("my_norm")
    assert style == norm_style("my_norm") and not style.filled
    built_in_dashes = {s.linestyle for _, s in NORM_STYLES.values()}
    assert style.linestyle not in built_in_dashes
    assert len({norm_style(f"plugin{i}") for i in range(20)}) > 10  # not one style for all
    # the same in another process whatever its string hash seed (figures of two sessions agree)
    code = "from normbench.study.style import norm_style; print(norm_style('my_norm'))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert other.stdout.strip() == str(style)


def test_styles_differ_between_norms_and_stay_the_same_between_figures(tmp_path):
    first = lines_of(make_figure(build_table(records(tmp_path / "a", ("bn", "gn", "frn")))))
    second = lines_of(make_figure(build_table(records(tmp_path / "b", ("gn", "frn", "sn", "x")))))
    assert len(set(first.values())) == 3 and len(set(second.values())) == 4
    assert len({marker for _, marker, _ in first.values()}) == 3  # told apart by marker alone
    for name in ("GN", "FRN"):
        assert first[name] == second[name]
    assert second["x"][2] not in {style for _, _, style in first.values()}  # the plugin's dashes


def test_legend_uses_paper_names_in_table_order(tmp_path):
    fig = make_figure(build_table(records(tmp_path, ("gn", "none", "evonorm_s0", "bn"))))
    assert legend_texts(fig) == ["BN", "EvoNorm-S0", "GN", "no norm"]
    assert fig.legends[0].get_title().get_text() == ""  # norms need no legend title
    seeds = records(tmp_path / "seeds", ("bn",), seeds=(1, 2))
    by_batch = make_figure(build_table(seeds, rows="batch", cols="seed"))
    assert legend_texts(by_batch) == ["32", "2"]
    assert by_batch.legends[0].get_title().get_text() == "batch"


def test_caption_says_what_was_run_and_what_the_bars_are(tmp_path):
    one = make_figure(build_table(records(tmp_path / "one"))).get_suptitle()
    flat = one.replace("\n", " ")
    for said in ("ResNet-20 on CIFAR-10", "50,000 training images", "4 epochs", "8 devices"):
        assert said in flat
    assert "one seed per point (no error bars)" in flat and "±" not in flat
    three = make_figure(build_table(records(tmp_path / "three", seeds=(0, 1, 2)))).get_suptitle()
    assert "mean ± sample std over 3 seeds" in three and "one seed" not in three
    write_run(tmp_path / "three", "bn", 8, 0, 25.0)
    uneven = make_figure(build_table(tmp_path / "three")).get_suptitle().replace("\n", " ")
    assert "mean ± sample std over 1–3 seeds; points of one seed have no bar" in uneven
    mixed = records(tmp_path / "mixed", ("bn",), epochs=4)
    records(mixed / "more", ("gn",), epochs=8)
    said = make_figure(build_table(mixed)).get_suptitle().replace("\n", " ")
    assert "4/8 epochs" in said  # a setting that differs is listed, not hidden


def test_where_selects_the_runs_and_the_caption_says_so(tmp_path, normbench):
    records(tmp_path, ("bn", "gn", "frn"))
    fig = make_figure(build_table(tmp_path, where=parse_where(["norm=bn,gn"])))
    assert legend_texts(fig) == ["BN", "GN"]
    assert "where norm=bn,gn" in fig.get_suptitle().replace("\n", " ")
    target = tmp_path / "bn_gn.png"
    assert normbench("plot", str(tmp_path), "--where", "norm=bn,gn", "--out", str(target)).code == 0
    curves = normbench("plot", str(tmp_path), "--curves", "--where", "batch=64")
    assert curves.code == 2 and "no run record matches --where batch=64" in curves.err
    bad = normbench("plot", str(tmp_path), "--where", "norm=xx", "--out", str(tmp_path / "x.png"))
    assert bad.code == 2 and bad.err.count("\n") == 1 and not (tmp_path / "x.png").exists()


def test_chance_line(tmp_path, normbench):
    records(tmp_path)
    fig = make_figure(build_table(tmp_path), chance=True)
    level = [line for line in fig.axes[0].lines if line.get_label().startswith("chance")]
    assert len(level) == 1 and list(level[0].get_ydata()) == [90.0, 90.0]
    assert legend_texts(fig) == ["BN", "GN", "chance (90%)"]  # after the norms
    assert not any(t.startswith("chance") for t in legend_texts(make_figure(build_table(tmp_path))))
    bad = normbench("plot", str(tmp_path), "--chance", "--metric", "train_loss")
    assert bad.code == 2 and "--chance" in bad.err and bad.err.count("\n") == 1
    other = {"name": "cifar100", "num_classes": 100, "train_size": 50000}
    write_run(tmp_path, "ln", 32, 0, 30.0, data=other)
    with pytest.raises(UserError, match="data.num_classes"):
        make_figure(build_table(tmp_path), chance=True)
    for options in (["--curves", "--chance"], ["--x", "images"]):
        wrong = normbench("plot", str(tmp_path), *options)
        assert wrong.code == 2 and wrong.err.count("\n") == 1


def png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the IHDR chunk's width


def test_sizes_are_column_and_page_wide_at_300_dpi(tmp_path, normbench):
    records(tmp_path)
    widths = {}
    for size in ("column", "page"):
        target = tmp_path / f"{size}.png"
        assert normbench("plot", str(tmp_path), "--size", size, "--out", str(target)).code == 0
        widths[size] = png_width(target)
    assert widths == {"column": 990, "page": 2070}  # 3.3 in and 6.9 in at 300 dpi
    assert normbench("plot", str(tmp_path)).code == 0
    assert png_width(tmp_path / "error_vs_batch.png") == 990  # column by default
    column = make_figure(build_table(tmp_path), size="column")
    ticks = column.axes[0].get_yticklabels()
    assert ticks and all(t.get_fontsize() >= 7 for t in ticks)  # legible printed 3.3 in wide
    assert column.get_size_inches()[0] == pytest.approx(3.3)
    vector = tmp_path / "page.pdf"
    assert normbench("plot", str(tmp_path), "--size", "page", "--out", str(vector)).code == 0
    assert b"/MediaBox [ 0 0 496.8 " in vector.read_bytes()  # 6.9 in in points
    bad = normbench("plot", str(tmp_path), "--size", "poster")
    assert bad.code == 2


def texts_inside(fig, tmp_path: Path) -> None:
    """The caption, legend, titles and axis labels lie inside the figure, the legend does not
    overlap the caption, and the saved image has no ink on its edges (nothing cut off there)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [fig._suptitle, *(t for legend in fig.legends for t in legend.get_texts())]
    texts += [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label)]
    for text in texts:
        if text.get_text().strip():
            extent = text.get_window_extent(renderer)
            assert fig.bbox.x0 <= extent.x0 and extent.x1 <= fig.bbox.x1, text.get_text()
            assert fig.bbox.y0 <= extent.y0 and extent.y1 <= fig.bbox.y1, text.get_text()
    caption = fig._suptitle.get_window_extent(renderer)
    assert fig.legends and not fig.legends[0].get_window_extent(renderer).overlaps(caption)
    target = save_figure(fig, tmp_path / "look.png")
    pixels = matplotlib.image.imread(target)[..., :3]
    edges = [pixels[:3], pixels[-3:], pixels[:, :3], pixels[:, -3:]]
    assert all((edge > 0.99).all() for edge in edges)


def curves_of(root: Path) -> dict[Path, RunCurves]:
    """Made-up curves for each run under root: 8 loss points, 2 epochs of test error; the bn runs
    at batch 2 logged a single point."""
    out = {}
    for run in load_runs(root):
        one = run.get("norm") == "bn" and run.get("batch") == 2
        steps = [1.0] if one else [i / 4 for i in range(1, 9)]
        loss = pd.Series([2.0 - s / 4 for s in steps], index=steps)
        error = pd.Series([50.0] if one else [60.0, 40.0], index=[1] if one else [1, 2])
        out[run.path] = RunCurves(run, loss, error)
    return out


@pytest.mark.parametrize("size", ["column", "page"])
def test_nothing_is_clipped_and_a_one_point_line_has_a_marker(tmp_path, size):
    records(tmp_path, ("bn", "gn", "frn", "brn", "evonorm_s0", "gn_ws", "wn_mobn"), seeds=(0, 1))
    table = build_table(tmp_path)
    texts_inside(make_figure(table, size=size, chance=True), tmp_path)
    fig = make_curves_figure(table, curves_of(tmp_path), size=size)
    texts_inside(fig, tmp_path)
    loss_b2, error_b2 = fig.axes[1], fig.axes[3]  # panels: batch 32, 2; rows: loss, error
    by_label = {line.get_label(): line for line in loss_b2.lines}
    assert len(by_label["bn"].get_xdata()) == 1 and by_label["bn"].get_marker() == "o"
    assert by_label["gn"].get_marker() in (None, "None", "")  # many points: a plain line
    for line in error_b2.lines:  # test error: a line with markers, never lone dots
        assert line.get_marker() not in (None, "None", "") and line.get_linestyle() != "None"
    assert legend_texts(fig) == ["BN", "BRN", "EvoNorm-S0", "FRN", "GN", "GN+WS", "WN+MOBN"]
    assert "line = mean over 2 seed(s), band = min..max" in fig.get_suptitle().replace("\n", " ")
    assert fig.get_size_inches()[0] == pytest.approx(3.3 if size == "column" else 6.9)


def test_curves_against_images_seen(tmp_path, normbench):
    from torch.utils.tensorboard import SummaryWriter

    from normbench.study.events import run_curves

    run_dir = write_run(tmp_path, "bn", 16, 0, 30.0, data={"name": "cifar10", "train_size": 64})
    writer = SummaryWriter(str(run_dir / "tb"))
    for step in range(1, 9):
        writer.add_scalar("train/loss", 2.0 - step / 10, step)
    writer.add_scalar("epoch/test_error", 50.0, 1)
    writer.add_scalar("epoch/test_error", 40.0, 2)
    writer.close()
    (run,) = load_runs(tmp_path)
    curves = run_curves(run, images=True)
    assert list(curves.train_loss.index) == [16 * s for s in range(1, 9)]  # step / 4 x 64
    assert list(curves.test_error.index) == [64, 128]
    assert list(run_curves(run).test_error.index) == [1, 2]
    target = tmp_path / "curves.pdf"
    result = normbench("plot", str(tmp_path), "--curves", "--x", "images", "--out", str(target))
    assert result.code == 0, result.err
    assert target.read_bytes().startswith(b"%PDF-")
    table = build_table(tmp_path)
    fig = make_curves_figure(table, {run.path: curves}, x="images")
    assert fig.axes[1].get_xlabel() == "images seen" and fig.axes[0].get_xlim()[0] == 0

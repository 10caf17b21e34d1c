"""`normbench bench` (normbench.bench): every section runs and prints, the JSON holds what the
README cites, bad options exit 2. No timing assertions: speed is what the bench prints, not what a
test can hold."""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stdout

import pytest
import torch

from normbench import cli
from normbench.bench.timing import interleaved


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    """One `normbench bench --quick` run with two norms, shared by the tests below (it takes ~10-20
    s; the `normbench` fixture is per test)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = sys.argv
    sys.argv = [
        "normbench",
        "bench",
        "--quick",
        "--device",
        "cpu",
        "--norms",
        "bn,frn",
        "--out",
        str(out),
    ]
    text = io.StringIO()
    try:
        with redirect_stdout(text):
            cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = argv
    return code, text.getvalue(), json.loads(out.read_text())


def test_quick_bench_prints_every_section_and_the_machine(quick_bench):
    code, text, _ = quick_bench
    assert code == 0, text
    assert text.startswith("machine: ")
    assert f"torch {torch.__version__}" in text
    for header in (
        "== loop overhead",
        "== train step per norm",
        "== eval latency",
        "== simulated devices",
    ):
        assert header in text
    assert "normbench/minimal" in text and "DataLoader/normbench" in text
    # two loop ratios at batch 256, one at batch 2, frn
    assert text.count("PASS") + text.count("MISS") >= 3
    assert "load average" in text and "wrote " in text


def test_quick_bench_json_has_the_measurements(quick_bench):
    _, _, result = quick_bench
    assert result["quick"] is True
    assert result["machine"]["device"] == "cpu" and result["machine"]["gpu"] is None
    assert result["machine"]["torch"] == torch.__version__

    loop = result["loop"]
    assert [row["batch"] for row in loop["rows"]] == [256, 2]
    assert [row["images"] for row in loop["rows"]] == [1024, 128]
    for row in loop["rows"]:
        assert set(row["seconds"]) == {"normbench", "minimal", "dataloader"}
        assert all(s > 0 for s in row["seconds"].values())
        assert row["judged_on"] == "cpu"
        assert row["normbench_over_minimal"] == pytest.approx(
            row["cpu_seconds"]["normbench"] / row["cpu_seconds"]["minimal"]
        )
        assert row["normbench_over_minimal_wall"] == pytest.approx(
            row["seconds"]["normbench"] / row["seconds"]["minimal"]
        )
        assert row["pass_over_minimal"] == (
            row["normbench_over_minimal"] <= row["target_over_minimal"]
        )
    assert (
        loop["rows"][0]["target_over_minimal"] == 1.05
        and loop["rows"][1]["target_over_minimal"] == 1.10
    )
    assert loop["rows"][0]["target_dataloader_over_normbench"] == 2.5
    assert "target_dataloader_over_normbench" not in loop["rows"][1]

    norms = result["norms"]
    assert [row["norm"] for row in norms["rows"]] == ["bn", "frn"]
    bn, frn = norms["rows"]
    assert bn["over_bn"] == 1.0 and bn["pass"] is None and bn["saved_over_bn"] == 1.0
    # on CPU the target is judged on process CPU time (immune to other processes' load), wall time
    # shown too
    assert norms["judged_on"] == "cpu" and frn["over_bn"] == frn["over_bn_cpu"]
    assert frn["over_bn_cpu"] == pytest.approx(frn["cpu_ms_per_step"] / bn["cpu_ms_per_step"])
    assert frn["over_bn_wall"] == pytest.approx(frn["ms_per_step"] / bn["ms_per_step"])
    assert frn["pass"] == (frn["over_bn"] <= norms["target_over_bn"] == 1.3)
    # FRN keeps its input and its pre-TLU output for backward where BN keeps the input: more saved
    # memory
    assert bn["saved_mb"] > 0 and frn["saved_mb"] > bn["saved_mb"]
    assert bn["peak_mb"] is None  # CUDA only
    assert len(bn["all_ms"]) == norms["repeats"] == 2

    fold = result["fold"]
    assert {(row["backbone"], row["batch"]) for row in fold["rows"]} == {
        ("lenet", 1),
        ("lenet", 8),
        ("resnet18", 1),
        ("resnet18", 8),
    }
    for row in fold["rows"]:
        assert row["norms_folded"] == (4 if row["backbone"] == "lenet" else 20)
        assert row["max_abs_diff"] < 1e-4
        assert row["speedup"] == pytest.approx(row["unfolded_ms"] / row["folded_ms"])


def test_quick_bench_json_has_the_devices_section(quick_bench):
    _, text, result = quick_bench
    devices = result["devices"]
    assert devices["judged_on"] == "cpu" and devices["setups"] == ["devices", "plain", "accum"]
    assert [table["backbone"] for table in devices["backbones"]] == ["lenet_relu", "resnet20"]
    assert [table["input"] for table in devices["backbones"]] == ["1x28x28", "3x32x32"]
    for table in devices["backbones"]:
        # --norms picks this section's norms too
        cells = [(row["norm"], row["batch"], row["devices"]) for row in table["rows"]]
        assert cells == [("bn", 2, 8), ("bn", 4, 4), ("frn", 2, 8), ("frn", 4, 4)]
        for row in table["rows"]:
            assert row["images_per_step"] == 16
            per_s, cpu_per_s = row["images_per_s"], row["cpu_images_per_s"]
            assert set(per_s) == set(cpu_per_s) == {"devices", "plain", "accum"}
            assert all(v > 0 for v in per_s.values())
            # on CPU the targets are judged on process CPU time, as in the norms section
            assert row["devices_over_plain"] == pytest.approx(
                cpu_per_s["devices"] / cpu_per_s["plain"]
            )
            assert row["devices_over_accum"] == pytest.approx(
                cpu_per_s["devices"] / cpu_per_s["accum"]
            )
            assert row["devices_over_plain_wall"] == pytest.approx(
                per_s["devices"] / per_s["plain"]
            )
            assert row["pass_over_plain"] == (row["devices_over_plain"] >= 0.8)
            accum_target = row["norm"] == "bn" and row["batch"] == 2
            assert row["pass_over_accum"] == (
                row["devices_over_accum"] >= 3.0 if accum_target else None
            )
    assert "-- lenet_relu, 1x28x28 input" in text and "-- resnet20, 3x32x32 input" in text
    assert "devices/plain (wall)" in text and "devices/accum (wall)" in text


def quick_norms_bench(normbench, out, norms: str, *options: str):
    """`normbench bench --quick` on the CPU: the norms section only, one repeat, JSON to `out`."""
    args = ["--device", "cpu", "--only", "norms", "--norms", norms, "--repeats", "1"]
    return normbench("bench", "--quick", *args, *options, "--out", str(out))


def test_norms_section_with_fast_path_options(normbench, tmp_path):
    out = tmp_path / "norms.json"
    result = quick_norms_bench(normbench, out, "gn", "--amp", "--channels-last")
    assert result.code == 0, result.err
    assert "fast path: amp=true channels_last=true" in result.out
    assert "== loop overhead" not in result.out and "== eval latency" not in result.out
    data = json.loads(out.read_text())
    assert set(data) >= {"machine", "norms"} and "loop" not in data and "fold" not in data
    assert data["norms"]["fast_path"] == ["amp=true", "channels_last=true"]
    # bn always, as the reference
    assert [row["norm"] for row in data["norms"]["rows"]] == ["bn", "gn"]


def test_a_norm_the_fast_path_cannot_run_is_reported_and_the_others_are_timed(
    normbench, tmp_path, monkeypatch
):
    # e.g. an inductor assertion under --compile on one norm (seen on an H100 with torch 2.11): one
    # row, not a crash
    from normbench.norms.frn import FilterResponseNorm

    def broken(self, x):
        raise RuntimeError("InductorError: AssertionError: 128 v.s. 2048\nmore")

    monkeypatch.setattr(FilterResponseNorm, "forward", broken)
    out = tmp_path / "norms.json"
    result = quick_norms_bench(normbench, out, "frn,gn")
    assert result.code == 0, result.err
    assert "frn" in result.out and "failed" in result.out and "128 v.s. 2048" in result.out
    rows = {row["norm"]: row for row in json.loads(out.read_text())["norms"]["rows"]}
    assert rows["frn"] == {
        "norm": "frn",
        "error": "RuntimeError: InductorError: AssertionError: 128 v.s. 2048",
        "pass": False,
    }
    assert rows["gn"]["over_bn"] > 0 and rows["bn"]["over_bn"] == 1.0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--only", "loops"], "--only: unknown name 'loops' (did you mean 'loop'?)"),
        (["--only", "device"], "--only: unknown name 'device' (did you mean 'devices'?)"),
        (["--norms", "bn,grn"], "--norms: unknown name 'grn'"),
        (["--norms", ","], "--norms needs at least one name"),
        (["--device", "tpu"], "--device must be auto, cpu or cuda"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--norm-batch", "1", "--only", "norms"], "--norm-batch must be >= 2"),
        (["--image-size", "4"], "--image-size must be >= 9"),
        (["--compile", "fast"], "--compile must be one of default, reduce-overhead, max-autotune"),
    ],
)
def test_bad_options_exit_2_with_one_line(normbench, args, message):
    result = normbench("bench", "--quick", *args)
    assert result.code == 2
    assert result.err.startswith("error: ") and message in result.err
    assert len(result.err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when no GPU is visible")
def test_cuda_without_gpu_is_a_user_error(normbench):
    result = normbench("bench", "--quick", "--device", "cuda")
    assert result.code == 2 and "no CUDA GPU is visible" in result.err


def test_interleaved_rotates_the_order_and_times_every_call():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = interleaved(
        calls, repeats=3, sync=lambda: None, warmup=1, after_warmup=lambda: order.append("|")
    )
    assert order == list("abc") + ["|"] + list("abc") + list("abc") + list("bca") + list("cab")
    for clock in (times.wall, times.cpu):
        assert {k: len(v) for k, v in clock.items()} == {"a": 3, "b": 3, "c": 3}
        assert all(t >= 0 for v in clock.values() for t in v)
    assert set(times.median("wall")) == {"a", "b", "c"}

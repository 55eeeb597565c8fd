"""``python -m fastmomentum bench --torch``: the parameter sets, the rows' checks, the table.

The runs use the MLP or a tiny set and the test knobs (2 samples of 2 ms): these tests check
that every row is built, checked, timed and put in its columns, never how fast anything is.
Everything but the shapes and the skip without torch needs torch (CI's parity stage has it).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from fastmomentum.commands.bench import main
from fastmomentum.commands.bench.torch_report import JSON_SCHEMA, _ms
from fastmomentum.commands.bench.torch_sets import SETS, ParamSet

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch is not installed")

FAST = dict(samples=2, min_sample_s=0.002)
ROW_NAMES = ["fastmomentum", "torch-default", "torch-foreach", "torch-fused",
             "fastmomentum-clip", "clip+torch-fused"]
N_CELLS = 8  # set, thr, row, ms/step, fm x, want, met, busy
TINY = ParamSet("tiny", "a tiny set", ((3, 5), (5,), (2, 2, 3, 3)), 3, 56, 1.0)


def data_rows(stdout: str) -> list[list[str]]:
    """The table's rows (lines that start with a set's name)."""
    names = {*SETS, TINY.name}
    return [line.split() for line in stdout.splitlines()
            if line.strip() and line.split()[0] in names]


# --- the parameter sets (no torch needed) ---------------------------------------------------------


def test_the_sets_have_the_published_counts():
    counts = {name: (len(s.shapes), sum(math.prod(shape) for shape in s.shapes))
              for name, s in SETS.items()}
    # torchvision's resnet50 (25,557,032), Hugging Face's bert-base-uncased BertModel
    # (109,482,240), 784*128 + 128 + 128*10 + 10.
    assert counts == {"resnet50": (161, 25_557_032), "bert-base": (199, 109_482_240),
                      "mlp": (4, 101_770)}
    resnet = SETS["resnet50"].shapes
    assert sum(len(s) == 4 for s in resnet) == 53  # 1 + 16 blocks x 3 + 4 downsamples
    assert resnet[0] == (64, 3, 7, 7) and resnet[-2:] == ((1000, 2048), (1000,))
    bert = SETS["bert-base"].shapes
    assert bert[:3] == ((30522, 768), (512, 768), (2, 768))
    assert sum(s == (3072, 768) for s in bert) == sum(s == (768, 3072) for s in bert) == 12
    assert sum(len(s) == 2 for s in bert) == 3 + 12 * 6 + 1  # embeddings, 6 Linear a layer, pooler


def test_a_set_whose_shapes_miss_a_tensor_is_refused():
    with pytest.raises(AssertionError, match="the shapes give 3 tensors and 101642 parameters, "
                                             "not 4 and 101770"):
        ParamSet("mlp", "no first bias", ((128, 784), (10, 128), (10,)), 4, 101_770, 2.0)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="torchvision is not installed")
def test_resnet50_shapes_are_torchvisions():
    import torchvision

    model = torchvision.models.resnet50()
    assert tuple(tuple(p.shape) for p in model.parameters()) == SETS["resnet50"].shapes


def test_milliseconds_have_four_significant_digits():
    assert [_ms(s) for s in (0.0213, 1.234e-5, 0.41, 2.5)] == ["21.30", "0.01234", "410.0",
                                                              "2500"]


def test_without_torch_the_mode_is_skipped_with_a_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert main(["--torch", "mlp", "--json", "never-written.json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# --torch: skipped, torch is not installed (")
    assert "pip install torch (no JSON written)" in out


@pytest.mark.parametrize("extra", [["--sizes", "1e3"], ["--dtype", "float32"],
                                   ["--layout", "single"], ["--impl", "numpy"],
                                   ["--variant", "nesterov"], ["--plot", "x.png"], ["--full"],
                                   ["--state-dtype", "int8"], ["--device", "cuda"]])
def test_the_array_tables_options_are_refused_with_torch(extra, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--torch", *extra])
    assert exc.value.code == 2
    assert "--torch" in capsys.readouterr().err


def test_unknown_sets_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--torch", "resnet18"])
    assert exc.value.code == 2
    assert "invalid choice: 'resnet18'" in capsys.readouterr().err


# --- runs (torch) -------------------------------------------------------------------------------


@needs_torch
def test_every_row_is_checked_timed_and_reported_on_the_mlp(tmp_path, capsys):
    path = tmp_path / "torch.json"
    argv = ["--torch", "mlp", "--threads", "1", "--json", str(path)]
    assert main(argv, **FAST) == 0
    out = capsys.readouterr().out
    assert "## mlp: MLP 784-128-10, 4 tensors, 101,770 parameters" in out
    assert "WARNING: fewer samples" in out
    rows = data_rows(out)
    assert [(r[0], r[1], r[2]) for r in rows] == [("mlp", "1", n) for n in ROW_NAMES]
    by_name = {r[2]: r for r in rows}
    for row in by_name.values():
        assert len(row) == N_CELLS, row
        assert float(row[3]) > 0 and float(row[4]) > 0, row
    assert by_name["fastmomentum"][4] == by_name["fastmomentum-clip"][4] == "1.00"
    assert by_name["torch-fused"][5] == ">=2.00" and by_name["clip+torch-fused"][5] == ">=1.25"
    assert [by_name[n][5] for n in ROW_NAMES if n not in ("torch-fused", "clip+torch-fused")] \
        == ["--"] * 4
    assert "# mlp, 1 thread: vs torch-default " in out

    data = json.loads(path.read_text())
    assert data["schema"] == JSON_SCHEMA and data["command"].endswith(" ".join(argv))
    assert data["failed"] == [] and list(data["rows"]) == ROW_NAMES
    assert data["sets"]["mlp"]["parameters"] == 101_770
    records = {r["name"]: r for r in data["records"]}
    assert list(records) == ROW_NAMES
    for name, r in records.items():
        fm = records["fastmomentum" if r["group"] == "step" else "fastmomentum-clip"]
        assert r["status"] == "ok" and len(r["samples"]) == 2 and r["threads"] == 1
        assert r["speedup"] == pytest.approx(r["seconds"] / fm["seconds"])
        assert r["threads_set"] == 1
        want = {"torch-fused": 2.0, "clip+torch-fused": 1.25}.get(name)
        assert r["target"] == want
        assert r["target_met"] is (None if want is None else r["speedup"] >= want)


@needs_torch
def test_a_set_at_two_thread_counts_gives_every_row_at_each():
    from fastmomentum.commands.bench.torch_run import run_torch

    results = run_torch(sets=[TINY], threads=[1, 2], out=None, **FAST)
    got = [(r.name, r.threads, r.status) for r in results.records]
    assert sorted(got) == sorted((n, t, "ok") for n in ROW_NAMES for t in (1, 2))
    assert all(r.seconds is not None and r.seconds > 0 for r in results.records)


@needs_torch
@pytest.mark.parametrize(("row", "wrong"), [
    ("fastmomentum", {"weight_decay": 0.0}),
    ("fastmomentum", {"momentum": 0.0}),
    ("torch-fused", {"lr": 0.1 * 1.01}),
    ("fastmomentum-clip", {"max_grad_norm": None}),
])
def test_a_wrong_row_is_failed_not_timed_and_the_exit_is_nonzero(row, wrong, monkeypatch,
                                                                 capsys):
    import torch

    import fastmomentum.torch as fmt
    from fastmomentum.commands.bench import torch_rows

    real = torch_rows.optimizer

    def optimizer(name, params):
        if name != row:
            return real(name, params)
        kw = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
        if row == "fastmomentum-clip":
            kw["max_grad_norm"] = 1.0
        kw.update(wrong)
        return (fmt.SGD(params, **kw) if row.startswith("fastmomentum")
                else torch.optim.SGD(params, fused=True, **kw))

    monkeypatch.setattr(torch_rows, "optimizer", optimizer)
    assert main(["--torch", "mlp", "--threads", "1"], **FAST) == 1
    out = capsys.readouterr().out
    rows = {r[2]: r for r in data_rows(out)}
    assert rows[row][3] == "FAILED"
    assert all(float(rows[n][3]) > 0 for n in ROW_NAMES if n != row)
    assert f"# FAILED: {row}, mlp, 1 thread(s): AssertionError: " in out
    assert "vs torch.optim.SGD(foreach=False)" in out


@needs_torch
@pytest.mark.parametrize("row", ["fastmomentum", "fastmomentum-clip", "torch-default",
                                 "torch-foreach", "torch-fused"])
def test_the_rows_that_share_tensors_never_write_the_gradients(row):
    # The step rows step the same parameters in turn, and fastmomentum-clip shares them too:
    # fair only if no row changes what the others read.
    from fastmomentum.commands.bench import torch_rows

    params = torch_rows.make_params(TINY)
    before = [p.grad.clone() for p in params]
    step = torch_rows.build(row, params)
    step()
    assert all(p.grad is not None and bool((p.grad == g).all())
               for p, g in zip(params, before, strict=True))


@needs_torch
def test_the_gradients_are_clipped_on_every_set():
    import torch

    from fastmomentum.commands.bench import torch_rows

    for pset in (SETS["mlp"], TINY):
        params = torch_rows.make_params(pset)
        norm = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])))
        assert 2 * torch_rows.MAX_GRAD_NORM < norm < 2 * torch_rows.GRAD_NORM


@needs_torch
def test_what_the_thread_settings_could_not_do_is_noted(capsys):
    import os

    from fastmomentum.commands.bench.torch_run import run_torch

    many = (os.cpu_count() or 1) + 1
    results = run_torch(sets=[TINY], threads=[many], **FAST)
    note = f"{many} threads on {many - 1} logical CPUs: oversubscribed"
    assert note in results.notes
    assert f"# note: {note}" in capsys.readouterr().out

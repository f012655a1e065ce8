"""``migu plot`` and the HTML report from small hand-made results and artifacts: every figure is a
PNG of its documented size, every CSV equals an independent computation, no matching runs is an error."""

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from migu.artifacts import save_artifact
from migu.cli import main
from migu.report import agreement, drawing, figdata, figures
from migu.report.html import markdown_to_html, write_report

TASKS = ["a", "b", "c"]


def _matrix(learn: list[float], final: list[float]) -> list[list[float | None]]:
    """T + 1 rows, seen-only (row 0 and the entries above the diagonal empty): task j scores
    ``learn[j]`` just after it is learned, 1 less in between, ``final[j]`` after the last task."""
    t = len(learn)
    rows: list[list[float | None]] = [[None] * t]
    for i in range(1, t + 1):
        row: list[float | None] = [None] * t
        for j in range(i):
            row[j] = final[j] if i == t else learn[j] if j == i - 1 else learn[j] - 1.0
        rows.append(row)
    return rows


def _write(root: Path, name: str, method: str, seed: int, matrix: list, **methods) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    run = {
        "model": "m", "method": method, "seed": seed, "sequence": TASKS, "accuracy_matrix": matrix,
        "score_matrices": {"accuracy": {"higher_is_better": True, "matrix": matrix, "columns": TASKS},
                           "loss": {"higher_is_better": False, "matrix": matrix, "columns": TASKS}},
        "config": {"data": {"order": "o1"}, "train": {"lr": 1e-4}, "methods": methods},
    }  # fmt: skip
    (folder / "results.json").write_text(json.dumps(run))
    return folder


# hand-made kept rows of one 8-row FFN layer ("enc.layer.1.ffn.up", widest of the last block)
MASKS = {
    "a": [1, 1, 1, 1, 0, 0, 0, 0],
    "b": [0, 0, 1, 1, 1, 1, 0, 0],
    "c": [1, 0, 0, 0, 0, 0, 1, 0],
}


def _save_masks(folder: Path, masks: dict[str, list[int]]) -> None:
    for i, task in enumerate(TASKS):
        rows = np.array(masks[task], dtype=bool)
        save_artifact(folder / "artifacts", i, task, "migu", "kept_rows", {
            "enc.layer.0.attention.q/ever": np.ones(4, bool), "enc.layer.0.attention.q/last": np.ones(4, bool),
            "enc.layer.1.ffn.up/ever": rows, "enc.layer.1.ffn.up/last": rows,
            "enc.layer.1.ffn.down/ever": np.ones(4, bool), "enc.layer.1.ffn.down/last": np.ones(4, bool),
        })  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results") / "bench"
    sweep = {
        "finetune+migu": {0.3: [70, 60, 80], 0.7: [80, 62, 74]},
        "lora+migu": {0.5: [50, 55, 90], 0.9: [65, 57, 88]},
    }
    for method, points in sweep.items():
        for t, final in points.items():
            _write(root, f"{method}_t{t}", method, 0, _matrix([90, 70, 90], final), migu={"threshold": t})
    _write(root, "ft+migu_t0.7_s1", "finetune+migu", 1, _matrix([88, 70, 90], [78, 66, 74]), migu={"threshold": 0.7})
    for layers, final in (("attention", [75, 60, 85]), ("ffn", [72, 61, 83])):
        _write(root, f"migu_{layers}", "finetune+migu", 0, _matrix([90, 70, 90], final),
               migu={"threshold": 0.7, "layers": layers})  # fmt: skip
    _write(root, "migu_q", "finetune+migu", 0, _matrix([90, 70, 90], [71, 64, 82]),
           migu={"threshold": 0.7, "layers": "attention", "include": [r"\.query$"]})  # fmt: skip
    for seed, final in enumerate(([60, 50, 95], [64, 52, 93], [58, 49, 94])):
        _write(root, f"ft_s{seed}", "finetune", seed, _matrix([95, 75, 95], final))
    # plain finetuning that records the rows MIGU would keep (MIGU's observe mode)
    observe = _write(root, "ft_observe", "finetune+migu", 0, _matrix([95, 75, 95], [60, 50, 95]),
                     migu={"threshold": 0.7, "mask_mode": "observe"})  # fmt: skip
    _save_masks(observe, MASKS)
    _save_masks(root / "finetune+migu_t0.7", {**MASKS, "b": [1, 1, 1, 0, 0, 0, 0, 1]})
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _size(name: str, panels: int = 1) -> tuple[int, int]:
    w, h = drawing.OVERLAP_PANEL if name == "overlap" else drawing.SIZES[name]
    return round(w * panels * drawing.DPI), round(h * drawing.DPI)


@pytest.fixture(scope="module")
def report(results, tmp_path_factory):
    """Every figure and the HTML page, drawn once for the tests below (``migu plot ... --html``)."""
    out = tmp_path_factory.mktemp("report")
    assert main(["plot", str(results), "--out", str(out / "figs"), "--html", str(out / "report.html")]) == 0
    return out


def test_every_figure_png_and_csv(results, report):
    out = report / "figs"
    images = list(out.glob("*.png"))
    names = sorted(p.name for p in images)
    assert names == sorted(["ablation.png", "agreement_m_o1_seed0.png", "overlap_m_o1_seed0.png", "scatter.png",
                            "seeds.png", "threshold.png",
                            *[f"matrix_{d.name}.png" for d in results.iterdir()]])  # fmt: skip
    for image in images:
        kind = image.stem.split("_")[0]
        with Image.open(image) as png:
            assert png.size == _size(kind, panels=2 if kind == "overlap" else 1), image.name
            assert np.asarray(png.convert("L")).std() > 5  # not a blank picture
        assert image.with_suffix(".csv").stat().st_size > 0

    # threshold sweep: AA per T = mean of the final row, averaged over seeds, computed here by hand
    rows = {(r["series"], float(r["threshold"])): r for r in _csv(out / "threshold.csv")}
    assert set(rows) == {("finetune+migu", 0.3), ("finetune+migu", 0.7), ("lora+migu", 0.5), ("lora+migu", 0.9)}
    assert float(rows[("finetune+migu", 0.3)]["aa_mean"]) == pytest.approx((70 + 60 + 80) / 3)
    seeds = [(80 + 62 + 74) / 3, (78 + 66 + 74) / 3]
    assert float(rows[("finetune+migu", 0.7)]["aa_mean"]) == pytest.approx(np.mean(seeds))
    assert float(rows[("finetune+migu", 0.7)]["aa_std"]) == pytest.approx(np.std(seeds, ddof=1))
    assert rows[("finetune+migu", 0.7)]["runs"] == "2"
    # BWT: final minus just-learned over the first two tasks
    assert float(rows[("lora+migu", 0.9)]["bwt_mean"]) == pytest.approx(((65 - 90) + (57 - 70)) / 2)

    # ablation: the T=0.7 runs by masked layers; the threshold-sweep runs elsewhere do not form a series
    abl = {r["layers"]: float(r["aa_mean"]) for r in _csv(out / "ablation.csv")}
    assert abl == pytest.approx({"all_linear": np.mean(seeds), "attention": 220 / 3, "ffn": 216 / 3,
                                 "attention include .query": 217 / 3})  # fmt: skip
    assert "attention include .query" in (out / "ablation.md").read_text()

    # overlap of hand-made masks of the widest FFN layer of the last block, counted here by hand
    ov = {
        (r["method"], r["metric"], r["task_i"], r["task_j"]): float(r["value"])
        for r in _csv(out / "overlap_m_o1_seed0.csv")
    }
    assert {r["layer"] for r in _csv(out / "overlap_m_o1_seed0.csv")} == {"enc.layer.1.ffn.up"}
    assert ov[("finetune+migu(observe)", "Jaccard", "a", "b")] == pytest.approx(2 / 6)  # {2,3} of {0..5}
    assert ov[("finetune+migu(observe)", "overlap ratio", "a", "b")] == pytest.approx(2 / 4)
    assert ov[("finetune+migu(observe)", "overlap ratio", "a", "c")] == pytest.approx(1 / 2)  # {0} of min(4, 2)
    assert ov[("finetune+migu(observe)", "Jaccard", "b", "c")] == 0.0
    assert ov[("finetune+migu", "Jaccard", "a", "b")] == pytest.approx(3 / 5)  # {0,1,2} of {0,1,2,3,7}
    assert ov[("finetune+migu", "overlap ratio", "c", "b")] == pytest.approx(1 / 2)
    assert ov[("finetune+migu(observe)", "Jaccard", "c", "c")] == 1.0

    # stability-plasticity: forgetting (complete below the diagonal) and learning accuracy per group
    sp = {(r["method"], r["seed"]): r for r in _csv(out / "scatter.csv")}
    assert ("finetune+migu(observe)", "0") in sp
    assert sp[("finetune", "mean")]["x_measure"] == "forgetting"
    finals = ([60, 50, 95], [64, 52, 93], [58, 49, 94])
    assert float(sp[("finetune", "mean")]["learning_mean"]) == pytest.approx(
        np.mean([(95 + 75 + f[2]) / 3 for f in finals])
    )
    forgetting = [np.mean([95 - f[0], 75 - f[1]]) for f in finals]
    assert float(sp[("finetune", "mean")]["x_mean"]) == pytest.approx(np.mean(forgetting))
    # seed spread: one AA per finetune run
    aa = {r["seed"]: float(r["aa"]) for r in _csv(out / "seeds.csv") if r["method"] == "finetune"}
    assert aa == pytest.approx({"0": 205 / 3, "1": 209 / 3, "2": 201 / 3})
    # a matrix CSV holds the matrix, empty cells where nothing was evaluated
    m = _csv(out / "matrix_ft_s0.csv")
    assert [r["after"] for r in m] == ["(start)", "after a", "after b", "after c"]
    assert m[0]["a"] == "" and float(m[3]["b"]) == 50.0


def test_agreement_between_two_runs_rows(report):
    # the reference is the run MIGU masked (finetune+migu_t0.7: b differs); the observing run is
    # compared with it per task, on the widest FFN layer of the last block, counted here by hand
    rows = {r["task"]: r for r in _csv(report / "figs" / "agreement_m_o1_seed0.csv")}
    assert {(r["reference"], r["method"], r["layer"]) for r in rows.values()} == {
        ("finetune+migu", "finetune+migu(observe)", "enc.layer.1.ffn.up")
    }
    assert [float(rows[t]["jaccard"]) for t in TASKS] == pytest.approx([1.0, 1 / 7, 1.0])  # b: {2} of 7 rows
    # chance: 4 and 4 rows of 8 share 2 of 6 on average; 2 and 2 share 0.5 of 3.5
    assert [float(rows[t]["chance"]) for t in TASKS] == pytest.approx([1 / 3, 1 / 3, 1 / 7])


def test_chance_jaccard_matches_random_sets():
    rng = np.random.default_rng(0)
    n, a, b = 1536, 460, 300
    draws = []
    for _ in range(2000):
        x, y = np.zeros(n, bool), np.zeros(n, bool)
        x[rng.choice(n, a, replace=False)], y[rng.choice(n, b, replace=False)] = True, True
        draws.append(figdata.jaccard(x, y))
    assert agreement.chance_jaccard(a, b, n) == pytest.approx(np.mean(draws), rel=0.01)
    assert np.isnan(agreement.chance_jaccard(0, 0, n))


def test_agreement_needs_two_runs_with_rows(results, tmp_path):
    with pytest.raises(figdata.NoMatchingRuns, match="two runs"):
        figures.plot([results / "finetune+migu_t0.7"], tmp_path / "out", figures=["agreement"])
    assert not (tmp_path / "out").exists()


def test_rates_figure_draws_each_method_through_its_rates(tmp_path):
    from migu import metrics

    root = tmp_path / "rates"
    made = {}
    for method in ("finetune", "finetune+migu"):
        for lr, seed, learn, final in ((1e-4, 0, [90, 70, 90], [60, 50, 90]), (1e-4, 1, [80, 60, 80], [70, 40, 80]),
                                       (3e-4, 0, [95, 75, 95], [50, 45, 95])):  # fmt: skip
            name = f"{method}_lr{lr}_s{seed}"
            folder = _write(root, name, method, seed, _matrix(learn, final))
            run = json.loads((folder / "results.json").read_text())
            run["config"]["train"]["lr"] = lr
            run["config"]["name"] = name  # differs per run, as the queue's names do: not a setting
            (folder / "results.json").write_text(json.dumps(run))
            made[(method, lr, seed)] = metrics.summary(run["accuracy_matrix"], True)
    out = tmp_path / "figs"
    assert main(["plot", str(root), "--out", str(out), "--figure", "rates"]) == 0
    rows = {(r["method"], float(r["lr"])): r for r in _csv(out / "rates.csv")}
    assert set(rows) == {(m, lr) for m in ("finetune", "finetune+migu") for lr in (1e-4, 3e-4)}
    for (method, lr), row in rows.items():
        assert row["seeds"] == "0"  # seed 1 ran at 1e-4 only: every point averages the same seeds
        assert float(row["learning_mean"]) == pytest.approx(made[(method, lr, 0)]["learning_accuracy"])
        assert float(row["x_mean"]) == pytest.approx(made[(method, lr, 0)]["forgetting"])
    with Image.open(out / "rates.png") as png:
        assert png.size == tuple(round(v * drawing.DPI) for v in drawing.SIZES["rates"])


def test_rates_figure_spreads_a_collapsed_rate_on_a_log_axis():
    from migu.report.tradeoff import wide_spread

    assert wide_spread([0.4, 1.1, 7.3, 29.7])  # the fair queue's order 1: 3e-4 collapsed
    assert not wide_spread([25.0, 37.5]) and not wide_spread([0.3, 2.0, 9.0])  # nothing to spread


def test_rates_figure_needs_two_rates(results, tmp_path):
    with pytest.raises(figdata.NoMatchingRuns, match=r"train\.lr"):
        figures.plot([results], tmp_path / "out", figures=["rates"])


def test_overlap_layer_choice_and_mean(results):
    ov = figdata.overlap(results / "ft_observe", "mean")
    a, b = np.array(MASKS["a"], bool), np.array(MASKS["b"], bool)
    # three layers, two of them all ones: the mean of (1, 1, J) per pair
    assert ov.jaccard[0, 1] == pytest.approx((1 + 1 + figdata.jaccard(a, b)) / 3)
    assert figdata.default_layer({"model.layers.0.mlp.gate_proj": 48, "model.layers.1.self_attn.q_proj": 32,
                                  "model.layers.1.mlp.up_proj": 48, "model.layers.1.mlp.gate_proj": 48,
                                  "model.layers.1.mlp.down_proj": 32}) == "model.layers.1.mlp.gate_proj"  # fmt: skip
    assert figdata.default_layer({"encoder.block.1.layer.1.DenseReluDense.wi": 64,
                                  "decoder.block.1.layer.2.DenseReluDense.wo": 32,
                                  "decoder.block.1.layer.2.DenseReluDense.wi": 64}) == (
        "decoder.block.1.layer.2.DenseReluDense.wi")  # fmt: skip
    with pytest.raises(ValueError, match="no feed-forward layer"):
        figdata.default_layer({"encoder.layer.0.attention.self.query": 32})


def test_no_matching_runs_is_an_error(results, tmp_path, capsys):
    only_ft = tmp_path / "only_ft"
    shutil.copytree(results / "ft_s1", only_ft / "ft_s1")
    out = tmp_path / "none"
    for figure in ("threshold", "ablation", "overlap", "seeds"):
        assert main(["plot", str(only_ft), "--out", str(out), "--figure", figure]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"migu: error: figure '{figure}'") and "\n" not in err
        assert not out.exists()  # nothing left behind
    assert main(["plot", str(results), "--out", str(out), "--score", "f1"]) == 2
    assert "no run has a score named 'f1'; scores found: accuracy, loss" in capsys.readouterr().err
    # a lower-is-better score draws too
    assert main(["plot", str(only_ft), "--out", str(out), "--score", "loss", "--figure", "matrix"]) == 0
    assert (out / "matrix_ft_s1.csv").is_file()


def test_html_report(results, report, tmp_path):
    html = markdown_to_html("## T\n\n| a | b |\n|---|---|\n| 1 <x> | 2 |\n\ntext & more\n")
    assert "<h2>T</h2>" in html and "<th>a</th>" in html and "<td>1 &lt;x&gt;</td>" in html
    assert "<p>text &amp; more</p>" in html
    text = (report / "report.html").read_text()
    assert text.count("<img ") == len(list((report / "figs").glob("*.png")))
    assert "data:image/png;base64," in text and "<table>" in text and "Summary" in text
    # every figure drawn but the rates one (these runs share one learning rate), which says why
    assert "Component ablation" in text and "Do the row choices agree?" in text
    assert re.findall(r"Not drawn: (\w+)", text) == ["rates"]
    assert "http://" not in text and "https://" not in text and "<script" not in text
    # several benchmark folders: an index and one page each
    one, other = tmp_path / "one", tmp_path / "other"
    shutil.copytree(results / "ft_s0", one / "ft_s0")
    shutil.copytree(results / "ft_s1", other / "ft_s1")
    pages = write_report([one, other], tmp_path / "many", tmp_path / "many.html", figures=("matrix",))
    assert [p.name for p in pages] == ["many.html", "many-one.html", "many-other.html"]
    assert 'href="many-one.html"' in pages[0].read_text()
    assert (tmp_path / "many" / "other" / "matrix_ft_s1.png").is_file()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    page = report / "report.html"
    shot = tmp_path / "shot.png"
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--screenshot={shot}",
        "--window-size=1200,1600",
    ]
    subprocess.run([*command, page.as_uri()], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as png:
        assert png.size == (1200, 1600)
        hsv = np.asarray(png.convert("HSV"), dtype=float)
    # the heatmaps (viridis) rendered: a page of text and broken-image icons has no saturated colour
    assert ((hsv[..., 1] > 120) & (hsv[..., 2] > 60)).mean() > 0.02


def test_magnitudes_on_a_tiny_model(bench_dir, tmp_path):
    """``migu magnitudes``: the CSV holds, per sample, the chosen layer's mean |output| per channel
    over the sample's tokens, L1-normalised; checked against a forward hook of this test's own."""
    import torch
    import yaml

    from migu.bench import load_tasks
    from migu.data.prompts import render_input
    from migu.models import load_model

    config = tmp_path / "tiny.yaml"
    data = {"root": str(bench_dir), "order": "tiny", "n_train": 4, "n_test": 2}
    config.write_text(yaml.safe_dump({"model": "tiny-bert", "method": ["finetune", "finetune+migu"], "data": data}))
    out = tmp_path / "mag"
    assert main(["magnitudes", str(config), "--out", str(out), "--per-task", "2", "--channels", "16"]) == 0
    layer = "encoder.layer.1.intermediate.dense"  # the first FFN layer of tiny-bert's last block
    png = out / f"magnitudes_{layer}.png"
    with Image.open(png) as image:
        assert image.size == tuple(round(v * drawing.DPI) for v in drawing.SIZES["magnitudes"])
    rows = _csv(png.with_suffix(".csv"))
    assert len(rows) == 3 * 2 * 64 and {r["task"] for r in rows} == {"alpha", "beta", "gamma"}
    first = np.array([float(r["normalised_magnitude"]) for r in rows if r["sample"] == "0"])

    from migu.analysis.magnitudes import config_of

    run = config_of(config, [])
    example = load_tasks(run)[0].train[0]
    bundle = load_model("tiny-bert", seed=0)
    seen = {}
    module = dict(bundle.model.named_modules())[layer]
    module.register_forward_hook(lambda m, i, o: seen.setdefault("out", o.detach()))
    bundle.model.eval()
    with torch.no_grad():
        bundle.model(**bundle.tokenizer(render_input(example), return_tensors="pt", truncation=True, max_length=128))
    expected = seen["out"].abs().reshape(-1, 64).mean(0).double().numpy()
    np.testing.assert_allclose(first, expected / expected.sum(), rtol=1e-5)
    overlap = _csv(out / f"magnitudes_{layer}_overlap.csv")
    assert len(overlap) == 36 and all(float(r["jaccard"]) == 1.0 for r in overlap if r["sample_i"] == r["sample_j"])


def test_figures_runs_plan(tmp_path):
    """benchmarks/figures_runs.py: 21 runs per seed, the shared run planned once, each at its rate."""
    import importlib.util
    import re

    from migu.bench import load_yaml

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("figures_runs", root / "benchmarks" / "figures_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lrs = {"finetune": ("1e-4", Path("a")), "finetune+migu": ("3e-4", Path("a")), "lora+migu": ("3e-3", Path("b"))}
    raw = load_yaml(root / "configs" / "cpu" / "minilm_standard.yaml")
    configs = module.configs(raw, module.GROUPS, [0], ["order1"], str(tmp_path), ["data.n_train=8"], lrs)
    by_name = {c.run_name(): c for c in configs}
    assert len(by_name) == len(configs) == 21
    observe = by_name["finetune_observe_t0.7_order1_seed0"]
    assert observe.method == "finetune+migu" and observe.train.lr == 1e-4
    assert observe.methods["migu"] == {"threshold": 0.7, "mask_mode": "observe", "skip_first_task": False}
    assert by_name["lora+migu_t0.95_order1_seed0"].train.lr == 3e-3
    assert by_name["finetune+migu_t0_order1_seed0"].methods["migu"]["threshold"] == 0.0
    assert all(c.train.mixed_precision == "no" and c.data.evaluate_tasks == "seen" for c in configs)
    assert all(c.data.n_train == 8 and c.output_dir == str(tmp_path) for c in configs)
    # each Q/K/V/O pattern picks exactly one of a BERT block's four attention layers
    names = [f"encoder.layer.5.attention.{n}" for n in ("self.query", "self.key", "self.value", "output.dense")]
    for part in "qkvo":
        (pattern,) = module.ABLATION[part]["include"]
        assert sum(bool(re.search(pattern, n)) for n in names) == 1
    with pytest.raises(ValueError, match="no learning rate for finetune"):
        module.configs(raw, ("overlap",), [0], ["order1"], str(tmp_path), [], {"finetune+migu": ("1", Path("a"))})


def test_suite_scores_and_runs_without_ffn_masks(tmp_path, capsys):
    """A suite score (its own columns) draws as a matrix only; a run whose MIGU masked no FFN layer
    (LoRA+MIGU) is left out of the default-layer overlap, the other runs are drawn."""
    root = tmp_path / "b"
    observe = _write(root, "obs", "finetune+migu", 0, _matrix([90, 70, 90], [80, 60, 90]),
                     migu={"threshold": 0.7, "mask_mode": "observe"})  # fmt: skip
    _save_masks(observe, MASKS)
    results = json.loads((observe / "results.json").read_text())
    results["score_matrices"]["suite/acc"] = {"higher_is_better": True, "matrix": [[50.0, 40.0]] * 4,
                                              "columns": ["x", "y"]}  # fmt: skip
    (observe / "results.json").write_text(json.dumps(results))
    out = tmp_path / "out"
    assert main(["plot", str(root), "--out", str(out), "--score", "suite/acc", "--figure", "matrix"]) == 0
    assert list(_csv(out / "matrix_obs.csv")[0]) == ["after", "x", "y"]
    assert main(["plot", str(root), "--out", str(out), "--score", "suite/acc", "--figure", "scatter"]) == 2
    assert "only the matrix figure shows it" in capsys.readouterr().err

    lora = _write(root, "lora", "lora+migu", 0, _matrix([90, 70, 90], [85, 65, 90]), migu={"threshold": 0.7})
    attention_only = {
        "enc.layer.0.attention.q/ever": np.ones(4, bool),
        "enc.layer.0.attention.q/last": np.ones(4, bool),
    }
    for i, task in enumerate(TASKS):
        save_artifact(lora / "artifacts", i, task, "migu", "kept_rows", attention_only)
    assert main(["plot", str(root), "--out", str(out), "--figure", "overlap"]) == 0
    assert {r["method"] for r in _csv(out / "overlap_m_o1_seed0.csv")} == {"finetune+migu(observe)"}
    assert main(["plot", str(lora / "results.json"), "--out", str(tmp_path / "o2"), "--figure", "overlap"]) == 2
    assert "no feed-forward layer" in capsys.readouterr().err
    # a named layer draws it
    assert main(["plot", str(lora / "results.json"), "--out", str(tmp_path / "o2"), "--figure", "overlap",
                 "--layer", "enc.layer.0.attention.q"]) == 0  # fmt: skip


def test_points_never_pool_two_models(tmp_path):
    """Runs of two models in one folder (the long benchmark's MiniLM and SmolLM2 pairs) give one
    point per model; one model keeps its plain method labels."""
    matrix = _matrix([90.0, 80.0, 70.0], [60.0, 50.0, 70.0])
    runs = []
    for model in ("minilm", "smollm2"):
        run = json.loads((_write(tmp_path, model, "lora", 0, matrix) / "results.json").read_text())
        runs.append(dict(run, model=model))
    scored = [(r, figdata.score_of(r, "accuracy")) for r in runs]
    assert set(figdata.groups(scored, ())) == {("minilm lora", "o1"), ("smollm2 lora", "o1")}
    assert set(figdata.groups(scored[:1], ())) == {("lora", "o1")}


def test_the_data_folder_does_not_split_a_method(tmp_path):
    """Seeds of one method whose data sat in other folders (a run carried to another machine) are
    one point: data.root says where the data was, not how the run was set up."""
    matrix = _matrix([90.0, 80.0, 70.0], [60.0, 50.0, 70.0])
    runs = []
    for seed, root in ((0, "../shared/data"), (1, "/elsewhere/data")):
        run = json.loads((_write(tmp_path, f"s{seed}", "lora", seed, matrix) / "results.json").read_text())
        run["config"]["data"]["root"] = root
        runs.append(run)
    scored = [(r, figdata.score_of(r, "accuracy")) for r in runs]
    assert {k: len(p.runs) for k, p in figdata.groups(scored, ()).items()} == {("lora", "o1"): 2}

"""Report tables from hand-made results: variants split by config keys, pairing with the baseline."""

import json

from migu.cli import main
from migu.report.runs import config_value, label_of, varying_keys
from migu.report.tables import paired_table, summary_table


def _run(method: str, seed: int, final: list[float], **config) -> dict:
    first = [50.0, 50.0]
    return {
        "model": "m",
        "method": method,
        "seed": seed,
        "sequence": ["a", "b"],
        "accuracy_matrix": [first, [final[0] + 2, 50.0], final],
        "config": {"data": {"order": "o1"}, **config},
    }


def test_variants_and_pairing(tmp_path, capsys):
    runs = [
        _run("finetune", 0, [80.0, 90.0], train={"lr": 1e-4}),
        _run("finetune", 0, [70.0, 90.0], train={"lr": 3e-4}),
        _run("finetune+migu", 0, [84.0, 90.0], train={"lr": 1e-4}, methods={"migu": {"threshold": 0.7}}),
        _run("finetune+migu", 0, [76.0, 88.0], train={"lr": 3e-4}, methods={"migu": {"threshold": 0.7}}),
        _run("finetune+migu", 0, [78.0, 90.0], train={"lr": 3e-4}, methods={"migu": {"threshold": 0.5}}),
    ]
    assert config_value(runs[2], "methods.migu.threshold") == "0.7"
    assert config_value(runs[0], "methods.migu.threshold") == "-"
    assert label_of(runs[3], ("train.lr",)) == "finetune+migu [train.lr=0.0003]"

    by = ("train.lr", "methods.migu.threshold")
    table = summary_table(runs, by)
    assert table.count("finetune+migu [") == 3 and table.count("finetune [") == 2
    # each MIGU variant is paired with the finetune run of the same learning rate
    paired = paired_table(runs, "finetune", ("train.lr",))
    rows = {line.split(" | ")[2]: line.split(" | ")[3] for line in paired.splitlines()[2:]}
    assert rows["finetune+migu [train.lr=0.0001]"] == "2.00"  # (84+90)/2 - (80+90)/2
    assert rows["finetune+migu [train.lr=0.0003]"] == "3.00 ± 1.41"  # +2 (T=0.7) and +4 (T=0.5)
    rates = {line.split(" | ")[2]: line.split(" | ")[8] for line in paired.splitlines()[2:]}
    assert rates["finetune+migu [train.lr=0.0003]"] == "0.0003"  # (paired at the same rate)
    across = paired_table([runs[0], runs[3]], "finetune")  # a pair at two rates says so
    assert across.splitlines()[2].split(" | ")[8] == "0.0001 / 0.0003"
    # without the key the baseline is ambiguous: no pairs rather than a wrong one
    assert paired_table(runs, "finetune") == ""

    for i, run in enumerate(runs):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(run))
    assert main(["report", str(tmp_path), "--by", "train.lr", "--by", "methods.migu.threshold"]) == 0
    out = capsys.readouterr().out
    assert "finetune+migu [train.lr=0.0003, methods.migu.threshold=0.5]" in out
    # unset keys are left out of a label, and keys with one value over all runs out of the table
    assert "| finetune [train.lr=0.0003] |" in out and "threshold=-" not in out
    assert (
        main(["report", str(tmp_path / "2"), str(tmp_path / "3"), "--by", "train.lr", "--by", "methods.migu.threshold"])
        == 0
    )
    out = capsys.readouterr().out
    assert "finetune+migu [train.lr=0.0001]" in out and "threshold" not in out
    # a run that leaves a method setting unset (an older results file) shows the default it ran with
    other = _run("finetune+migu", 0, [70.0, 90.0], train={"lr": 1e-4}, methods={"migu": {"skip_first_task": False}})
    plain = _run("finetune+migu", 0, [80.0, 90.0], train={"lr": 1e-4})
    from migu.methods.registry import effective_method_settings
    from migu.report.runs import with_effective_settings

    assert config_value(plain, "methods.migu.skip_first_task") == "-"  # (the report imports no method code)
    with_effective_settings([other, plain], effective_method_settings)  # (what the CLI's loading does)
    table = summary_table([other, plain], varying_keys([other, plain], ("methods.migu.skip_first_task",)))
    assert "| finetune+migu [methods.migu.skip_first_task=False] |" in table
    assert "| finetune+migu [methods.migu.skip_first_task=True] |" in table


def test_timing_table(tmp_path, capsys):
    run = _run("finetune+migu", 0, [80.0, 90.0])
    run["timings"] = [
        {"task": None, "eval_seconds": 10.0},
        {"task": "a", "seconds": 30.0, "median_step_seconds": 3.0, "eval_seconds": 10.0, "cpu_seconds": 20.0,
         "load_average": 1.0},
        {"task": "b", "seconds": 24.0, "median_step_seconds": 2.0, "eval_seconds": 10.0, "epoch_end_seconds": 6.0,
         "cpu_seconds": 16.0, "load_average": 3.0},
    ]  # fmt: skip
    run["code"] = [{"from_task": 1, "source": "abc", "cpu": "CPU A"}, {"from_task": 2, "source": "abd", "cpu": "CPU A"}]
    (tmp_path / "results.json").write_text(json.dumps(run))
    assert main(["report", str(tmp_path), "--timings", "--baseline", ""]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| m | o1 | finetune+migu | 0 |"))
    # first task 30 s; later tasks 24 s at a median step of 2 s; 36 s of evaluation (6 s of it at
    # epoch ends, per-epoch curves); 90 s in all; 36 CPU seconds in training; load 1 and 3; one CPU
    assert row.split(" | ")[4:12] == ["30.0", "24.0", "2.00", "36.0", "1.5", "0.6", "2.0", "CPU A |"]
    del run["timings"][1]["cpu_seconds"]  # a file from before CPU time was recorded
    run["code"] = [{"from_task": 1, "source": "abc"}, {"from_task": 2, "source": "abd"}]  # ... or the CPU
    (tmp_path / "results.json").write_text(json.dumps(run))
    assert main(["report", str(tmp_path), "--timings", "--baseline", ""]) == 0
    row = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| m | o1 | finetune+migu | 0 |")
    )
    assert row.split(" | ")[9] == "–" and row.endswith("| – |")
    # resumed on another machine and back: each change of CPU with the task it took over at
    run["code"] = [{"from_task": t, "source": "abc", "cpu": c} for t, c in ((1, "A"), (2, "B"), (2, "B"), (5, "A"))]
    (tmp_path / "results.json").write_text(json.dumps(run))
    assert main(["report", str(tmp_path), "--timings", "--baseline", ""]) == 0
    row = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| m | o1 | finetune+migu | 0 |")
    )
    assert row.endswith("| A from task 1; B from task 2; A from task 5 |")
    # a first segment from before CPUs were recorded is not credited to the next one's CPU
    run["code"] = [{"from_task": 1, "source": "abc"}, {"from_task": 2, "source": "abd", "cpu": "B"}]
    (tmp_path / "results.json").write_text(json.dumps(run))
    assert main(["report", str(tmp_path), "--timings", "--baseline", ""]) == 0
    row = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| m | o1 | finetune+migu | 0 |")
    )
    assert row.endswith("| – from task 1; B from task 2 |")
    summary = next(line for line in out.splitlines() if line.startswith("| m | o1 | finetune+migu |"))
    assert summary.endswith("| 1 | 1.5 |")


def test_effect_of_migu_pairs_each_method_with_itself_without_migu(tmp_path, capsys):
    from migu.report.tables import effect_table, without

    assert without("lora+replay+migu", "migu") == "lora+replay"
    assert without("migu", "migu") is None and without("lora", "migu") is None
    runs = [
        _run("lora", 0, [60.0, 80.0], train={"lr": 1e-3}),
        _run("lora", 1, [62.0, 80.0], train={"lr": 1e-3}),
        _run("lora+migu", 0, [66.0, 78.0], train={"lr": 3e-3}),  # its own rate: paired all the same
        _run("lora+migu", 1, [64.0, 80.0], train={"lr": 3e-3}),
        _run("lora+replay", 0, [70.0, 80.0]),
        _run("lora+replay+migu", 0, [69.0, 80.0]),
        _run("olora+migu", 0, [50.0, 50.0]),  # no olora run: no row
    ]
    table = effect_table(runs, "migu")
    rows = {line.split(" | ")[3]: line.split(" | ")[5:-1] for line in table.splitlines()[2:] if line.startswith("|")}
    assert set(rows) == {"lora", "lora+replay"}
    assert table.rstrip().endswith("olora+migu (1)")
    assert rows["lora"][0] == "70.50 ± 0.71" and rows["lora"][1] == "72.00 ± 0.00"
    assert rows["lora"][2] == "1.50 ± 0.71"  # (66+78)/2 - (60+80)/2 = 2, (64+80)/2 - (62+80)/2 = 1
    assert rows["lora"][3] == "[-4.85, +7.85]"  # 1.5 ± t(0.975, 1) 12.706 x 0.71 / sqrt(2)
    assert rows["lora"][8] == "1.50 ± 0.71"  # ΔLA: a[1,1] = final[0] + 2 and a[2,2] = final[1], so as ΔAA
    assert rows["lora+replay"][2] == "-0.50"
    assert rows["lora"][9] == "0.001 / 0.003"  # the rates of a pair at two rates are in the table
    assert (
        rows["lora+replay"][9] == "–" and rows["lora+replay"][3] == "–"
    )  # (one pair: no interval)  # (runs without a recorded rate)
    for i, run in enumerate(runs):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "results.json").write_text(json.dumps(run))
    assert main(["report", str(tmp_path), "--baseline", "", "--effect-of", "migu"]) == 0
    assert "With and without migu" in capsys.readouterr().out


def test_effect_rows_per_order_and_over_all_orders_and_pairs_by_the_tasks_run():
    from migu.report.tables import effect_table, summary_table

    def on(order, run, sequence=("a", "b")):
        run["config"]["data"]["order"] = order
        run["sequence"] = list(sequence)
        return run

    runs = [
        on("o1", _run("lora", 0, [60.0, 80.0])),
        on("o1", _run("lora+migu", 0, [66.0, 78.0])),  # +2
        on("o2", _run("lora", 0, [60.0, 80.0])),
        on("o2", _run("lora+migu", 0, [56.0, 80.0])),  # -2
        on("o3", _run("lora", 0, [60.0, 80.0]), ("a", "c")),  # o3 ran other tasks in one of the two runs:
        on("o3", _run("lora+migu", 0, [60.0, 80.0])),  # no pair
    ]
    lines = [line.split(" | ") for line in effect_table(runs, "migu").splitlines() if line.startswith("| m |")]
    assert [(cells[2], cells[7], cells[-1]) for cells in lines] == [
        ("o1", "2.00", "1 |"),
        ("o2", "-2.00", "1 |"),
        ("all 2 orders", "0.00 ± 2.83", "2 (1 independent) |"),  # (both start with task a at seed 0)
    ]
    assert "Without a partner run" in effect_table(runs, "migu") and "lora+migu (1)" in effect_table(runs, "migu")
    # the summary's pooled row says how many orders it pools, per method
    summary = summary_table(runs[:5])
    assert "| m | all 3 orders | lora |" in summary and "| m | all 2 orders | lora+migu |" in summary


def test_runs_that_are_not_seeds_of_each_other_are_refused(tmp_path, capsys):
    """Two runs of one method, order and seed that differ in a setting would be averaged as two
    seeds: the report stops with one line naming the keys for --by, and works with them."""
    runs = [
        _run("finetune+migu", 0, [84.0, 90.0], name="x", methods={"migu": {"threshold": 0.7}}),
        _run("finetune+migu", 0, [76.0, 88.0], name="y", methods={"migu": {"threshold": 0.5, "layers": "ffn"}}),
    ]
    for i, run in enumerate(runs):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(run))
    assert main(["report", str(tmp_path), "--baseline", ""]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 runs of finetune+migu (m, o1, seed 0) would be averaged as seeds" in err[0]
    assert "they differ in methods.migu.layers, methods.migu.threshold: add --by KEY" in err[0]
    assert main(["report", str(tmp_path), "--baseline", "", "--by", "methods.migu.threshold"]) == 0
    assert "finetune+migu [methods.migu.threshold=0.5]" in capsys.readouterr().out
    # a copy of a run beside it
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "results.json").write_text(json.dumps(runs[0]))
    assert main(["report", str(tmp_path / "0"), str(tmp_path / "copy"), "--baseline", ""]) == 2
    assert "the same run given twice?" in capsys.readouterr().err


def test_pairs_never_cross_settings_protocols_or_rates_and_intervals_count_independent_units():
    """A pair differs in the method alone (its rate aside); a row holds one protocol and one pair of
    rates; the 95% interval is Student's t over units, pairs of one seed and first task averaged."""
    from scipy import stats

    from migu.report.pairing import interval, same_setting, t_interval
    from migu.report.tables import effect_table

    def on(order, seed, run, first="a", protocol=None, **data):
        run["config"]["data"].update(order=order, **data)
        run["config"]["protocol"] = protocol
        run["seed"], run["sequence"] = seed, [first, order]
        return run

    runs = []
    for seed, (d1, d2, d3) in enumerate([(2.0, 4.0, 1.0), (0.0, 2.0, 3.0)]):
        for order, first, d in (("o1", "a", d1), ("o2", "a", d2), ("o3", "c", d3)):
            runs.append(on(order, seed, _run("ft", seed, [60.0, 80.0]), first, "paper"))
            runs.append(on(order, seed, _run("ft+migu", seed, [60.0 + 2 * d, 80.0]), first, "paper"))
    table = effect_table(runs, "migu")
    row = next(line for line in table.splitlines() if "all 3 orders" in line).split(" | ")
    assert row[1] == "paper" and row[7] == "2.00 ± 1.41" and row[-1] == "6 (4 independent) |"
    units = [3.0, 1.0, 1.0, 3.0]  # seed 0: (2+4)/2 and 1; seed 1: (0+2)/2 and 3
    half = stats.t.ppf(0.975, 3) * stats.tstd(units) / 2
    assert row[8] == f"[{2 - half:+.2f}, {2 + half:+.2f}]"
    assert "o1, o2 (seed 0: a)" in table and "o1, o2 (seed 1: a)" in table
    low, high = t_interval([1.0, 2.0, 3.0])
    assert abs(high - 2 - stats.t.ppf(0.975, 2) / 3**0.5) < 1e-12 and abs(2 - low - (high - 2)) < 1e-12
    assert interval([(runs[0], runs[1])], [2.0]).text() == "–"
    # another protocol, another data setting, another rate: never one pair or one row
    other = [on("o1", 0, _run("ft+migu", 0, [70.0, 80.0]), protocol="official")]
    other.append(on("o1", 0, _run("ft+migu", 0, [70.0, 80.0], train={"lr": 3e-4}), protocol="paper"))
    assert not same_setting(runs[0], other[0])
    five, many = (on("o1", 0, _run("ft", 0, [1.0, 1.0]), protocol="paper", n_train=n) for n in (5, 1000))
    assert not same_setting(five, many) and same_setting(many, many)
    assert same_setting(runs[0], other[1])  # (the rate may differ: it has a column, and a row, of its own)
    table = effect_table(runs + other, "migu", ("train.lr",))
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| m | paper | o1 |")]
    assert sorted(cells[-2] for cells in rows) == ["–", "– / 0.0003"]
    assert "ft+migu (1)" in table  # the other protocol's run has no partner


def test_mean_of_adds_the_papers_three_task_mean_beside_the_suites_own(tmp_path, capsys):
    from migu.report.runs import add_mean_column

    run = _run("lora", 0, [60.0, 80.0])
    run["curves"] = {"points": [{"task_index": 0, "epoch": 0}], "scores": {"lm_eval/acc": {
        "higher_is_better": True, "columns": ["hellaswag", "winogrande", "arc", "piqa", "mean"],
        "values": [[42.0, 50.0, 40.0, 68.0, 50.0]]}}}  # fmt: skip
    assert add_mean_column(run, "paper3", ("hellaswag", "winogrande", "arc")) == 1
    entry = run["curves"]["scores"]["lm_eval/acc"]
    assert entry["columns"][-1] == "paper3" and entry["values"][0][-1] == 44.0
    assert add_mean_column(run, "other", ("hellaswag", "boolq")) == 0
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps(_run("lora", 0, [60.0, 80.0])))
    assert main(["report", str(tmp_path), "--mean-of", "x=hellaswag,arc"]) == 2
    assert "no suite score of these runs has the columns hellaswag, arc" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--mean-of", "x"]) == 2


def test_a_setting_in_another_shape_is_another_setting_and_unpaired_runs_are_named():
    from migu.report.pairing import same_setting

    base = _run("ft", 0, [60.0, 80.0], format={}, evaluators=None)
    packed = _run("ft+migu", 0, [60.0, 80.0], format={"layout": "pack"}, evaluators=None)
    suite = _run("ft+migu", 0, [60.0, 80.0], format={}, evaluators={"lm_eval": {"limit": 5}})
    older = _run("ft+migu", 0, [60.0, 80.0], format={})  # (a file from before evaluators existed)
    assert not same_setting(base, packed) and not same_setting(base, suite) and same_setting(base, older)
    table = paired_table([base, packed, _run("ft+random_update", 0, [1.0, 1.0], format={}, evaluators=None)], "ft")
    assert "Without a ft run in the same setting" in table and "ft+migu (1)" in table

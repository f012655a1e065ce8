"""results.json carries its schema version; readers refuse a newer one with one line and read every
older one (the committed results are schema 0)."""

import json
from pathlib import Path

import pytest

from migu.bench import run
from migu.cli import main
from migu.report import load_results
from migu.schema import SCHEMA

from test_runner import _config

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_a_run_writes_its_schema_and_a_newer_one_is_refused(bench_dir, tmp_path, capsys):
    config = _config(bench_dir, tmp_path, method="finetune")
    result = run(config)
    capsys.readouterr()
    assert result["schema"] == SCHEMA
    path = tmp_path / config.run_name() / "results.json"
    assert json.loads(path.read_text())["schema"] == SCHEMA
    newer = {**result, "schema": SCHEMA + 1}
    path.write_text(json.dumps(newer))
    assert main(["report", str(tmp_path), "--baseline", ""]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"has results schema {SCHEMA + 1}, newer than this migu reads" in err[0]
    with pytest.raises(ValueError, match="newer than this migu reads"):
        run(config)  # (not reloaded as this run's results)


def test_every_committed_results_file_reads():
    runs = load_results([RESULTS])
    assert len(runs) > 200 and {r.get("schema", 0) for r in runs} <= set(range(SCHEMA + 1))

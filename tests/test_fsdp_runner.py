"""A sequence under FSDP2 on two CPU processes, launched with the committed Accelerate config:
the loss matrix of one unsharded process, and a killed run resumes after its last finished task."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from migu.bench import run, run_config

from launch import ROOT, kill_a_rank_after, launch


def _corpus(root: Path) -> Path:
    for domain, words in (("d1", "cats purr and sleep in the sun"), ("d2", "stocks fell as markets closed")):
        (root / domain).mkdir(parents=True)
        for split in ("train", "test"):
            rows = [{"text": f"{words} {i} {words}"} for i in range(8)]
            (root / domain / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _raw(data: Path, out: Path) -> dict:
    return {
        "model": "tiny-llama", "method": "finetune+migu", "output_dir": str(out), "progress": False,
        "save_model": True,
        "data": {"source": "jsonl", "kind": "corpus", "root": str(data), "order": ["d1", "d2"], "n_train": 8,
                 "n_test": 4},
        # a micro-batch of 4 split over 2 ranks; no dropout (its masks are drawn per process)
        "train": {"lr": 1e-3, "batch_size": 4, "micro_batch_size": 4, "max_length": 16, "eval_batch_size": 4,
                  "dropout": 0.0},
        "methods": {"migu": {"skip_first_task": False}},
    }  # fmt: skip


def _launch(config: Path) -> subprocess.Popen:
    accelerate = ["accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "accelerate" / "fsdp_cpu.yaml"),
                  "--main_process_port", "0"]  # fmt: skip
    return launch(*accelerate, args=[str(config)])


def test_fsdp_on_two_cpu_processes_matches_one_process_and_resumes(tmp_path):
    pytest.importorskip("accelerate.commands.launch")
    data = _corpus(tmp_path / "data")
    one = run(run_config(_raw(data, tmp_path / "one")))
    config = run_config(_raw(data, tmp_path / "two"))
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    run_dir = tmp_path / "two" / config.run_name()
    progress = run_dir / "state" / "progress.json"

    kill_a_rank_after(_launch(path), run_dir, tasks=1)
    assert not (run_dir / "results.json").exists()
    assert json.loads(progress.read_text())["completed"] == 1

    proc = _launch(path)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming after task 1 of 2" in err
    two = json.loads((run_dir / "results.json").read_text())
    assert two["resumed_at"] == [1] and not (run_dir / "run.lock").exists()
    assert two["diagnostics"][0]["migu"]["masked"] and two["diagnostics"][1]["migu"]["masked"]
    # the same global batches, sharded weights: the unsharded loss matrix up to float summation order
    for a, b in zip(one["score_matrices"]["loss"]["matrix"], two["score_matrices"]["loss"]["matrix"], strict=True):
        assert b == pytest.approx(a, rel=1e-4)
    assert two["score_matrices"]["loss"]["matrix"][1] != one["score_matrices"]["loss"]["matrix"][0]  # it trained
    # save_model under FSDP2: the weights gathered from the shards, as the unsharded run saved them
    import torch
    from transformers import AutoModelForCausalLM

    saved = [AutoModelForCausalLM.from_pretrained(d / config.run_name() / "model").state_dict() for d in
             (tmp_path / "one", tmp_path / "two")]  # fmt: skip
    assert saved[0].keys() == saved[1].keys()
    for name, weight in saved[0].items():
        torch.testing.assert_close(saved[1][name], weight, rtol=1e-3, atol=1e-5, msg=name)

"""``save_model: true``: the trained model lands in RUN_DIR/model as Transformers and PEFT save
it (a PEFT model: its adapters), loads back with their own ``from_pretrained`` equal to the
run's final weights, and does not change the run's identity (fingerprint)."""

import torch

from conftest import write_corpus
from migu.bench import run, run_config
from migu.models import load_model


def _config(bench_dir, out, model, method, save):
    return run_config({
        "model": model, "method": method, "seed": 0, "save_model": save,
        "data": {"root": str(bench_dir), "order": ["alpha", "beta"], "n_train": 8, "n_test": 4,
                 "evaluate_tasks": "diagonal"},
        "train": {"lr": 1e-2, "batch_size": 8, "micro_batch_size": 8, "max_length": 24, "eval_batch_size": 8},
        "output_dir": str(out), "progress": False,
    })  # fmt: skip


def _run_keeping_final_weights(config):
    final = {}

    def keep(index, state):  # the checkpoint after the last task: every tensor the run trained
        path = config.output_dir + "/" + config.run_name() + "/state/" + state["checkpoint"]
        final.update(torch.load(path, weights_only=False)["model"])

    result = run(config, on_task_end=keep)
    return result, final


def test_full_model_saved_and_loaded_with_transformers(bench_dir, tmp_path, capsys):
    from transformers import AutoModel

    config = _config(bench_dir, tmp_path, "tiny-bert", "finetune+migu", True)
    result, final = _run_keeping_final_weights(config)
    folder = tmp_path / config.run_name() / "model"
    assert (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()
    assert not (tmp_path / config.run_name() / ".model.tmp").exists()
    loaded = AutoModel.from_pretrained(folder).state_dict()
    trained = [k for k in final if k in loaded]
    assert len(trained) > 10 and all(torch.equal(loaded[k], final[k]) for k in trained)
    plain = _config(bench_dir, tmp_path / "other", "tiny-bert", "finetune+migu", False)
    assert result["fingerprint"] == run(plain)["fingerprint"]  # saving is not part of the run's identity
    assert not (tmp_path / "other" / plain.run_name() / "model").exists()
    capsys.readouterr()
    run(_config(bench_dir, tmp_path / "other", "tiny-bert", "finetune+migu", True))  # finished without a model
    assert "kept no model" in capsys.readouterr().err


def test_lora_adapter_saved_and_loaded_with_peft(bench_dir, tmp_path):
    from peft import PeftModel

    config = _config(bench_dir, tmp_path, "tiny-llama", "lora+migu", True)
    _, final = _run_keeping_final_weights(config)
    folder = tmp_path / config.run_name() / "model"
    # PEFT saves an adapter not named "default" in a folder of its name (migu's LoRA: task0)
    assert (folder / "task0" / "adapter_config.json").is_file() and (folder / "tokenizer_config.json").is_file()
    base = load_model("tiny-llama", seed=0).model  # the tiny base is built from its seed
    loaded = PeftModel.from_pretrained(base, folder / "task0", adapter_name="task0").state_dict()
    adapters = [k for k in final if "lora_" in k]
    assert adapters and all(torch.equal(loaded[k], final[k]) for k in adapters)


def test_masked_lm_wrapper_saved_as_its_hugging_face_model(tmp_path):
    """A corpus task on an encoder trains migu's MaskedLM (a *ForMaskedLM's children under their
    own names): saved with the config, it loads with AutoModelForMaskedLM."""
    from transformers import AutoModelForMaskedLM

    root = write_corpus(tmp_path / "data")
    config = run_config({
        "model": "tiny-bert", "method": "finetune", "output_dir": str(tmp_path / "out"), "progress": False,
        "save_model": True,
        "data": {"source": "jsonl", "kind": "corpus", "root": str(root), "order": ["d1", "d2"], "n_train": 4,
                 "n_test": 3},
        "train": {"lr": 1e-3, "batch_size": 2, "micro_batch_size": 2, "max_length": 16, "eval_batch_size": 2},
    })  # fmt: skip
    _, final = _run_keeping_final_weights(config)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "out" / config.run_name() / "model").state_dict()
    assert all(torch.equal(loaded[k], final[k]) for k in final if k in loaded)
    assert sum(k in loaded for k in final) > 10


def test_refused_where_accelerate_shards_the_model(bench_dir, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import pytest
    from accelerate.utils import DistributedType

    import migu.bench.runner as runner

    monkeypatch.setattr(
        runner,
        "make_accelerator",
        lambda *_: SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=1),
    )
    with pytest.raises(ValueError, match="save_model: not available when Accelerate shards"):
        run(_config(bench_dir, tmp_path / "out", "tiny-bert", "finetune", True))
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_failed_save_leaves_no_partial_folder(tmp_path):
    import pytest

    from migu.bench.store import RunStore

    class FullDisk:
        def save_pretrained(self, folder):
            raise OSError("No space left on device")

    store = RunStore(tmp_path / "run")
    store.dir.mkdir(parents=True)
    with pytest.raises(OSError, match="No space"):
        store.save_model(load_model("tiny-bert", seed=0).model, FullDisk())
    assert sorted(p.name for p in store.dir.iterdir()) == []  # neither model/ nor .model.tmp

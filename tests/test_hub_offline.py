"""A hub id while the hub cannot be reached and HF_HUB_OFFLINE is unset (issue 41 item 10): one
line at once, instead of the hub client's five retries over about 30 s; a cached id loads from
the cache without them."""

import time

import pytest

from migu.models import load_model, loading

PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def no_hub(monkeypatch):
    """The hub unreachable (every connection refused), offline mode not set."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)

    def refuse(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(loading.socket, "create_connection", refuse)


def test_an_unknown_hub_id_is_one_line_at_once(no_hub):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"^model 'nobody/nothing' is neither packaged .* nor a cached hub id, and "
                       r"https://\S+ cannot be reached: \[Errno -2\] Name or service not known$"):  # fmt: skip
        load_model("nobody/nothing")
    assert time.perf_counter() - start < 5


def test_a_cached_hub_id_loads_from_local_files_only(no_hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: f"/cache/{repo}/{name}")
    assert loading.local_only("someone/cached-model")


def test_offline_mode_and_folders_never_probe_the_hub(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise AssertionError("probed the hub")

    monkeypatch.setattr(loading.socket, "create_connection", fail)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loading.local_only("someone/model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert loading.local_only(tmp_path)

"""Settings precedence (defaults < YAML < env < CLI) and clear errors."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import EnvSettingsSource

from seqinfer.service.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_precedence_defaults_yaml_env_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "c.yaml"
    config.write_text("port: 6000\nmax-batch-size: 7\nidle_ttl_seconds: 5\neviction: lru\n")
    monkeypatch.setenv("SEQINFER_MAX_BATCH_SIZE", "9")
    monkeypatch.setenv("SEQINFER_IDLE_TTL_SECONDS", "11")
    settings = load_settings(config, idle_ttl_seconds=13.0, device=None)
    assert settings.port == 6000  # YAML over default
    assert settings.max_batch_size == 9  # env over YAML
    assert settings.idle_ttl_seconds == 13.0  # CLI over env
    assert settings.eviction == "lru" and settings.device == "auto"  # None = flag not given
    assert load_settings().port == 50051  # the YAML does not leak into a later load


def test_loads_of_different_files_do_not_share_values(tmp_path: Path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("port: 6001\nmax-batch-size: 3\n")
    second.write_text("port: 6002\neviction: lru\n")
    a = load_settings(first)
    b = load_settings(second)
    assert (a.port, a.max_batch_size, a.eviction) == (6001, 3, "reject")
    assert (b.port, b.max_batch_size, b.eviction) == (6002, 256, "lru")
    assert type(a) is Settings and a == Settings(port=6001, max_batch_size=3)


def test_concurrent_loads_do_not_see_each_others_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Load A is held after reading its file and before its sources are built
    while load B runs start to finish; A must still get A's values (a value
    passed through shared state would be B's, or cleared by the time A reads it)."""
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("port: 6001\nmax-batch-size: 3\n")
    second.write_text("port: 6002\neviction: lru\n")
    a_held, b_done = threading.Event(), threading.Event()
    held = threading.local()
    env_init = EnvSettingsSource.__init__

    def held_env_init(self: EnvSettingsSource, *args: Any, **kwargs: Any) -> None:
        # pydantic-settings builds the env source just before it asks the class
        # for its sources: the widest window for one load to leak into another.
        if getattr(held, "hold", False):
            a_held.set()
            assert b_done.wait(10), "load B did not finish"
        env_init(self, *args, **kwargs)

    monkeypatch.setattr(EnvSettingsSource, "__init__", held_env_init)

    def load_a() -> Settings:
        held.hold = True
        return load_settings(first)

    def load_b() -> Settings:
        assert a_held.wait(10), "load A never reached its sources"
        try:
            return load_settings(second)
        finally:
            b_done.set()

    with ThreadPoolExecutor(2) as pool:
        a_future, b_future = pool.submit(load_a), pool.submit(load_b)
        a, b = a_future.result(timeout=20), b_future.result(timeout=20)
    assert (a.port, a.max_batch_size, a.eviction) == (6001, 3, "reject")
    assert (b.port, b.max_batch_size, b.eviction) == (6002, 256, "lru")


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("max_batch_size: 0\n", "max_batch_size"),
        ("no_such_setting: 1\n", "no_such_setting"),
        ("device: tpu\n", "device"),
        ("eviction: random\n", "eviction"),
        ("- a\n- b\n", "mapping"),
        ("port: [unclosed\n", "YAML"),
        ("port: 9464\n", "metrics_port"),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, yaml_text: str, needle: str):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert needle in str(info.value)


def test_missing_config_file_is_reported(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_settings(tmp_path / "missing.yaml")


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`SEQINFER_{name.upper()}`" in readme, f"README lacks setting {name}"


def test_durability_needs_a_state_dir(tmp_path: Path):
    with pytest.raises(ConfigError, match="durability snapshot needs state_dir"):
        load_settings(durability="snapshot")
    settings = load_settings(durability="snapshot", state_dir=tmp_path)
    assert settings.state_dir == tmp_path and settings.snapshot_interval_seconds == 30.0
    assert load_settings().durability == "none"

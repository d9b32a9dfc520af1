"""Settings precedence (defaults < YAML < env < CLI) and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

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

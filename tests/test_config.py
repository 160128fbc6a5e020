from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError

from conftest import ROOT, invoke


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    if path.name == "themes.yaml":
        pytest.skip("the theme schema, not a run config")
    cfg = load_config(path)
    if cfg.themes is not None:
        assert cfg.theme_ids == ["economy", "renewal", "culture", "livelihood", "reform", "openness"]
    else:
        assert cfg.data.tables, "a config without themes derives them from its tables"
    assert path.read_text(encoding="utf-8").startswith("#"), "every config starts with the command that runs it"


def test_set_overrides_are_typed_and_validated(project):
    cfg = load_config("configs/tiny.yaml", ["train.epochs=3", "model.hidden_size=64"])
    assert cfg.train.epochs == 3 and cfg.model.hidden_size == 64
    with pytest.raises(ConfigError, match=r"train.epochs: Input should be a valid number.*'many'"):
        load_config("configs/tiny.yaml", ["train.epochs=many"])


def test_unknown_key_is_one_clear_line(project):
    Path("configs/typo.yaml").write_text(
        Path("configs/tiny.yaml").read_text(encoding="utf-8").replace("epochs:", "epoch:"), encoding="utf-8"
    )
    result = invoke("train", "configs/typo.yaml")
    assert result.exit_code == 2
    assert "invalid config configs/typo.yaml: train.epoch: unknown key" in result.output
    assert "Traceback" not in result.output


def test_all_problems_reported_together(project):
    with pytest.raises(ConfigError) as err:
        load_config("configs/tiny.yaml", ["train.mode=both", "seed=x", "data.bogus=1"])
    message = str(err.value)
    assert "train.mode" in message and "seed" in message and "data.bogus: unknown key" in message


def test_missing_config_file(project):
    result = invoke("prepare", "configs/nope.yaml")
    assert result.exit_code == 2
    assert "config file configs/nope.yaml not found" in result.output


def test_unreachable_hub_model_fails_fast_with_the_offline_hint(project, monkeypatch, tmp_path):
    # An endpoint that refuses connections stands in for "no network"; an empty cache has nothing.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert invoke("prepare", "configs/tiny.yaml").exit_code == 0
    result = invoke("train", "configs/tiny.yaml", "--set", "model.name_or_path=bert-base-chinese")
    assert result.exit_code == 2
    assert "could not load model 'bert-base-chinese'" in result.output
    assert "set model.name_or_path to a pretrained base built by `pipeline pretrain`" in result.output
    assert not (project / "models" / "tiny").exists()

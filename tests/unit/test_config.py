from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_config, write_config
from tinylm.config import RunConfig, load_config
from tinylm.errors import ConfigError

SHIPPED = sorted(REPO.glob("examples/*/*.yaml")) + sorted((REPO / "src/tinylm/recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_yaml_loads(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.model_config_for(100).vocab_size == 100


def test_qa_example_and_sfa_recipe_agree():
    example = yaml.safe_load((REPO / "examples/qa/config.yaml").read_text())
    recipe = yaml.safe_load((REPO / "src/tinylm/recipes/sfa.yaml").read_text())
    for section in ("model", "tokenizer", "train", "generation"):
        assert example[section] == recipe[section], section


def test_unknown_keys_are_all_listed_with_suggestions(tmp_path, qa_file):
    cfg = tiny_config(tmp_path, qa_file)
    cfg["train"]["max_step"] = 3
    cfg["model"]["n_layers"] = 2
    cfg["datta"] = {}
    path = write_config(tmp_path, cfg)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "train.max_step: unknown key (did you mean 'train.max_steps'?)" in msg
    assert "model.n_layers: unknown key (did you mean 'model.n_layer'?)" in msg
    assert "datta: unknown key (did you mean 'data'?)" in msg
    assert len(e.value.problems) == 3


def test_wrong_types_and_model_problems_reported_together(tmp_path, qa_file):
    cfg = tiny_config(tmp_path, qa_file)
    cfg["train"]["batch_size"] = "many"
    cfg["model"]["n_embd"] = 30
    cfg["model"]["n_head"] = 4
    cfg["data"]["prompt_template"] = "no placeholder"
    path = write_config(tmp_path, cfg)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    problems = "\n".join(e.value.problems)
    assert "train.batch_size" in problems and "'many'" in problems
    assert "n_embd" in problems
    assert len(e.value.problems) >= 2  # type errors stop the consistency checks; both sections reported


def test_overrides_apply_and_parse_yaml_values(tmp_path, qa_file):
    path = write_config(tmp_path, tiny_config(tmp_path, qa_file))
    cfg = load_config(path, ["train.max_steps=11", "model.pos=alibi", "train.betas=[0.8, 0.9]"])
    assert cfg.train.max_steps == 11
    assert cfg.model["pos"] == "alibi"
    assert cfg.train.betas == (0.8, 0.9)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["train.max_steps"])
    with pytest.raises(ConfigError, match=r"did you mean 'train\.max_steps'"):
        load_config(path, ["train.max_stepz=3"])


def test_monitoring_val_loss_without_validation_data_is_an_error(tmp_path, qa_file):
    cfg = tiny_config(tmp_path, qa_file, checkpoint={"monitor": "val_loss"})
    with pytest.raises(ConfigError, match=r"checkpoint\.monitor: 'val_loss' needs validation data"):
        load_config(write_config(tmp_path, cfg))


def test_malformed_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  path: [unclosed\nmodel: {}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\n.*line \d+, column \d+: malformed YAML"):
        load_config(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="found a directory"):
        load_config(tmp_path)

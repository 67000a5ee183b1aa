from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_config, write_config
from tinylm.cli import build_parser
from tinylm.config import RunConfig, load_config, load_test_config
from tinylm.errors import ConfigError

SHIPPED = [  # run configs; lm-eval task files (examples/eval, `tinylm eval --tasks`) are tested with the harness
    p
    for p in sorted(REPO.glob("examples/*/*.yaml")) + sorted((REPO / "src/tinylm/recipes").glob("*.yaml"))
    if "task" not in (yaml.safe_load(p.read_text()) or {})
]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_yaml_loads(path: Path):
    if path.name == "test_config.yaml":  # the seed's test schema (`tinylm test`)
        assert load_test_config(path).data.split == "test"
        return
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


def test_set_options_can_be_repeated():
    for command in ("train", "test", "inspect-data", "estimate-memory"):
        args = build_parser().parse_args([command, "c.yaml", "--set", "a=1", "b=2", "--set", "c=3"])
        assert args.set == ["a=1", "b=2", "c=3"]


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


def test_seed_trainer_config_translates_field_for_field(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "qa.json").write_text('{"train": [{"Question": "q", "Answer": "a"}], "test": []}')
    seed = {
        "data": {
            "batch_size": 4,
            "data_dir": str(data),
            "max_length": 99,
            "on_tpu": False,
            "truncate_promt": True,
        },
        "model_name": "smollm2-135m-instruct",
        "model_params": {
            "adam_betas": [0.8, 0.9],
            "do_compute_metrics": True,
            "learning_rate": 2e-5,
            "use_cache": True,
            "warmup_steps_per_cent": 10,
            "weight_decay": 0.01,
            "do_freeze": True,
            "freeze_emb": True,
            "freeze_ln": False,
            "freeze_attn": True,
            "freeze_ff": False,
            "freeze_other": False,
            "layers_not_to_freeze": ["h.29."],
        },
        "seed": 5,
        "trainer": {
            "checkpoint": {
                "dirpath": "runs/x",
                "every_n_train_steps": 7,
                "log_obg": "val_rougeL",
                "mode": "max",
            },
            "ckpt_path": "runs/x/checkpoints/last",
            "params": {
                "accelerator": "gpu",
                "accumulate_grad_batches": 2,
                "gradient_clip_val": 0.5,
                "log_every_n_steps": 3,
                "max_epochs": 4,
                "num_sanity_val_steps": 1,
                "overfit_batches": 0,
                "precision": 16,
                "val_check_interval": 0.5,
            },
        },
        "wandb": {"api": "x", "args": {"group": "g", "job_type": "j", "name": "n", "project_name": "p"}},
    }
    cfg = load_config(write_config(tmp_path, seed))
    assert cfg.init_from == "smollm2-135m-instruct" and cfg.seed == 5 and cfg.out_dir == "runs/x"
    assert (
        cfg.data.path == str(data / "qa.json") and cfg.data.max_length == 99 and cfg.data.val_fraction == 0.1
    )
    assert cfg.data.prompt_template == "Question: {prompt}\nAnswer:"
    t = cfg.train
    assert (t.batch_size, t.max_epochs, t.learning_rate, t.weight_decay, t.betas) == (
        4,
        4,
        2e-5,
        0.01,
        (0.8, 0.9),
    )
    assert (t.warmup, t.grad_clip, t.accumulate_grad_batches, t.precision) == (0.1, 0.5, 2, "16-mixed")
    assert (t.accelerator, t.val_check_interval, t.log_every_n_steps, t.compute_metrics) == (
        "cuda",
        0.5,
        3,
        True,
    )
    assert t.freeze.emb and t.freeze.attn and not t.freeze.ln and t.freeze.keep == ["h.29."]
    c = cfg.checkpoint
    assert (c.every_n_train_steps, c.monitor, c.mode, c.resume) == (
        7,
        "val_rougeL",
        "max",
        "runs/x/checkpoints/last",
    )
    assert cfg.logger.wandb.project == "p" and cfg.logger.wandb.mode == "offline"
    overridden = load_config(write_config(tmp_path, seed), ["trainer.params.max_epochs=9"])
    assert overridden.train.max_epochs == 9


def test_seed_test_config_loads_and_rejects_unknown_keys(tmp_path):
    path = REPO / "examples" / "sft" / "test_config.yaml"
    cfg = load_test_config(path)
    assert cfg.generate_params.max_new_tokens == 32 and cfg.test_params.save_steps == 8
    raw = yaml.safe_load(path.read_text())
    raw["generate_params"]["top_kk"] = 3
    with pytest.raises(
        ConfigError, match=r"generate_params\.top_kk: unknown key \(did you mean 'generate_params\.top_k'\?\)"
    ):
        load_test_config(write_config(tmp_path, raw))


def test_seed_trainer_config_can_train_on_the_chat_template():
    seed = Path(__file__).resolve().parents[2] / "examples/sft/trainer_config.yaml"
    assert load_config(seed, []).data.prompt_template == "Question: {prompt}\nAnswer:"
    assert load_config(seed, ["data.prompt_template=chat"]).data.prompt_template == "chat"
    with pytest.raises(ConfigError, match="prompt_template"):
        load_config(seed, ["data.prompt_template=no placeholder"])


def test_a_training_config_given_to_test_says_which_command_runs_it():
    for name in ("examples/sft/trainer_config.yaml", "examples/qa/config.yaml"):
        with pytest.raises(ConfigError, match=r"this is a training config .* run it with `tinylm train`"):
            load_test_config(REPO / name)

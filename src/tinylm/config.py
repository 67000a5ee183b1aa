"""Typed training configs: the YAML schema, `load_config()`, and `--set key=value` overrides.

A config is validated once, at load: unknown keys (with the closest valid key), wrong types and
inconsistent values are all collected and raised together as one `ConfigError` naming the file and the
YAML key of each problem. Nothing downstream re-reads YAML. This module does not build models or run
anything: it only describes what to run.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model, field_validator

from tinylm.compat.seed import SEED_TRAINER_SCHEMA, is_seed_trainer, seed_unknown_keys, translate_seed_trainer
from tinylm.errors import ConfigError, DataError
from tinylm.files import check_input_file
from tinylm.generate.options import pydantic_field
from tinylm.model import GPTConfig, InvalidConfig


class Section(BaseModel):
    """Base of every config section: unknown keys are rejected, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Ranges shared by several fields. Sizes are bounded so that a typo cannot ask for terabytes.
MAX_TOKENS = 1 << 20  # a context window, a row length, a number of new tokens
MAX_COUNT = 1 << 31  # steps, epochs, batches, intervals
SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed range
MAX_CONFIG_BYTES = 1 << 20


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class DataConfig(Section):
    path: str
    """A data file or folder. Its format is read from the suffix (see tinylm.data.formats)."""
    kind: Literal["qa", "text"] = "qa"
    """`qa`: prompt/response examples; `text`: plain text for pretraining."""
    split: str = "train"
    val_split: str | None = None
    """A split of the same file used for validation (SFT JSON `val`/`test`); else `val_fraction` is held out."""
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    prompt_key: str | None = None
    response_key: str | None = None
    max_length: int = Field(256, ge=2, le=MAX_TOKENS)
    """Tokens per training row (the model's block_size must be at least this)."""
    stride: int | None = Field(None, ge=1, le=MAX_TOKENS)
    """Pretraining windows start every `stride` tokens (None: every token, as nanoGPT samples)."""
    prompt_template: str = "{prompt}\n"
    """How a Q/A prompt is laid out before its response: contains `{prompt}`, or is `chat` for the model's
    chat template (one user message; the response is the assistant's reply)."""
    loss_on: Literal["response", "all"] = "response"
    packing: bool = False
    """Pack several Q/A examples per row, with attention kept inside each example."""


class TokenizerConfig(Section):
    kind: Literal["char", "word", "bpe", "hf"] = "char"
    vocab_size: int | None = Field(None, ge=1, le=MAX_TOKENS)
    path: str | None = None
    """Load an existing tokenizer directory instead of training one on the data."""


class TrainConfig(Section):
    batch_size: int = Field(32, ge=1, le=MAX_TOKENS)
    max_steps: int | None = Field(None, ge=1, le=MAX_COUNT)
    max_epochs: int | None = Field(None, ge=1, le=MAX_COUNT)
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    min_lr: float | None = Field(None, ge=0.0, le=10.0)
    """Floor of the cosine decay; None: learning_rate / 10."""
    warmup: float = Field(0.0, ge=0.0, le=MAX_COUNT)
    """Warmup length: a fraction of all steps if < 1, else a number of steps."""
    weight_decay: float = Field(0.1, ge=0.0)
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    grad_clip: float | None = Field(1.0, gt=0.0)
    accumulate_grad_batches: int = Field(1, ge=1, le=MAX_COUNT)
    precision: Literal["32", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    compile: bool = False
    accelerator: str = "auto"
    devices: int | str = 1
    """How many devices (>= 1, or -1 for all), "auto", or a list of indices such as "0,1"."""
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1, le=1 << 16)
    val_check_interval: int | float = Field(250, gt=0, le=MAX_COUNT)
    """Validate every N optimizer steps (int), or N-th of an epoch (float <= 1)."""
    eval_batches: int = Field(20, ge=1, le=MAX_COUNT)
    stop_at_val_loss: float | None = Field(None, ge=0.0)
    """Stop at the first validation whose val loss is at or under this (time-to-target runs; the learning
    rate schedule stays that of the whole run). None: run all steps."""
    log_every_n_steps: int = Field(50, ge=1, le=MAX_COUNT)
    overfit_batches: int | float = Field(0, ge=0, le=MAX_COUNT)
    num_sanity_val_steps: int = Field(2, ge=0, le=MAX_COUNT)
    num_workers: int = Field(0, ge=0, le=1024)
    compute_metrics: bool = False
    """At each validation, also generate answers for `metric_examples` val examples: BLEU, ROUGE, exact match."""
    metric_examples: int = Field(32, ge=1, le=MAX_COUNT)
    freeze: FreezeConfig | None = None
    lora: LoRAConfig | None = None
    """Train low-rank adapters instead of the weights; checkpoints hold the merged weights."""
    objective: Literal["next_token", "dpo"] = "next_token"
    """`next_token`: cross-entropy on the tokens that carry loss (pretraining, SFT). `dpo`: Direct
    Preference Optimization on {prompt, chosen, rejected} pairs, against the `init_from` model."""
    dpo_beta: float = Field(0.1, gt=0.0, le=1000.0)
    """DPO's beta: how far the tuned model may move from the reference (smaller: further)."""
    dpo_reference: Literal["precomputed", "copy"] = "precomputed"
    """Where DPO's reference log-probabilities come from: computed once before the first step
    (`precomputed`, no memory while training) or a frozen copy of the model run on every batch (`copy`)."""

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: int | str) -> int | str:
        """Lightning's forms, checked here rather than deep inside Fabric: n >= 1, -1, "auto", "0,1"."""
        if isinstance(v, int):
            if v == -1 or 1 <= v <= 1 << 16:
                return v
            raise ValueError(f"expected a number of devices >= 1 (or -1 for all), found {v}")
        text = v.strip()
        if text == "auto" or text == "-1" or re.fullmatch(r"\d+(\s*,\s*\d+)*\s*,?", text):
            return text
        raise ValueError(f'expected a number of devices, -1, "auto" or indices such as "0,1", found {v!r}')


class FreezeConfig(Section):
    """Which parameter groups stay fixed while fine-tuning (the seed's freeze_* flags)."""

    emb: bool = False
    ln: bool = False
    attn: bool = False
    ff: bool = False
    other: bool = False
    keep: list[str] = []
    """Parameter-name patterns never frozen (the seed's layers_not_to_freeze): globs like 'h.5.*' or substrings."""


class LoRAConfig(Section):
    r: int = Field(8, ge=1, le=1 << 16)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] = ["attn.qkv", "attn.proj"]


class CheckpointConfig(Section):
    every_n_train_steps: int | None = Field(None, ge=1, le=MAX_COUNT)
    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    save_top_k: int = Field(1, ge=-1, le=MAX_COUNT)
    """How many best checkpoints to keep: -1 all, 0 none (only `last`)."""
    save_last: bool = True
    resume: str | None = None
    """`auto` (the run's last checkpoint if there is one) or a checkpoint path."""


class WandbConfig(Section):
    project: str = "tinylm"
    name: str | None = None
    group: str | None = None
    job_type: str | None = None
    mode: Literal["offline", "online", "disabled"] = "offline"


class LoggerConfig(Section):
    tensorboard: bool = False
    wandb: WandbConfig | None = None


GenerationDefaults = create_model(
    "GenerationDefaults",
    __base__=Section,
    __doc__="The generation options a checkpoint stores (tinylm.json's `generation`), with the defaults and "
    "rules of `tinylm.generate.options`; the bounds a typo cannot pass are the config's own.",
    max_new_tokens=pydantic_field("max_new_tokens", le=MAX_TOKENS),
    temperature=pydantic_field("temperature", le=100.0),
    top_k=pydantic_field("top_k"),
    top_p=pydantic_field("top_p"),
    stop=pydantic_field("stop"),
)


class RunConfig(Section):
    """Everything `tinylm train` needs: data → tokenizer → model → training → checkpoints."""

    out_dir: str = Field("runs/default", min_length=1)
    seed: int = Field(1337, ge=0, le=SEED_MAX)
    init_from: str | None = None
    """Start from pretrained weights: a tinylm checkpoint, a model name (`tinylm models`) or an HF model dir.
    The model config and tokenizer then come from it; `model` may only override dropout."""
    data: DataConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: dict[str, Any] = {}
    """Fields of `tinylm.model.GPTConfig`; vocab_size defaults to the tokenizer's, block_size to data.max_length."""
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logger: LoggerConfig = LoggerConfig()
    generation: GenerationDefaults = GenerationDefaults()

    def model_config_for(self, vocab_size: int) -> GPTConfig:
        """The model config with vocab_size and block_size filled in from the tokenizer and data."""
        fields = {"vocab_size": vocab_size, "block_size": self.data.max_length, **self.model}
        return _GPT_ADAPTER.validate_python(fields)


_GPT_ADAPTER = TypeAdapter(GPTConfig)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply `key.sub=value` overrides, and validate everything at once."""
    path = Path(path)
    raw = read_yaml(path)
    problems: list[str] = []
    for item in overrides or []:  # in the file's own schema: the seed's keys for a seed config
        problems += apply_override(raw, item)
    if is_seed_trainer(raw):
        problems += seed_unknown_keys(raw, SEED_TRAINER_SCHEMA)
        if (raw.get("data") or {}).get("on_tpu"):
            problems.append("data.on_tpu: TPUs are not supported; set it to false")
        raw = translate_seed_trainer(raw)
    problems += unknown_keys(raw, RunConfig)  # removes them, so type checks below see only known keys
    try:
        cfg = validate(raw, str(path))
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems, str(path))
    return cfg


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError([f"file not found: {path}"], str(path))
    if path.is_dir():
        raise ConfigError([f"expected a YAML file, found a directory: {path}"], str(path))
    try:
        check_input_file(path, "YAML file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise DataError(f"{path.stat().st_size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except DataError as e:
        raise ConfigError([str(e)], str(path)) from None
    except RecursionError:
        raise ConfigError(["nested too deeply"], str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"not UTF-8 text (byte {e.start})"], str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{where}malformed YAML: {getattr(e, 'problem', e)}"], str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"expected a mapping of sections at the top, found {type(raw).__name__}"], str(path)
        )
    return raw


def apply_override(raw: dict[str, Any], item: str) -> list[str]:
    """Set `a.b.c=value` in the raw dict (value parsed as YAML). Returns problems, if any."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        return [f"--set {item!r}: expected key=value, e.g. train.max_steps=100"]
    node = raw
    *parents, leaf = key.strip().split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return [f"--set {key}: '{part}' is not a section"]
        node = child
    node[leaf] = yaml.safe_load(value) if value.strip() else None
    return []


def unknown_keys(raw: Any, schema: Any, prefix: str = "") -> list[str]:
    """Every key of `raw` that `schema` (a pydantic model or dataclass) does not know, with a suggestion.

    The unknown keys are removed from `raw`, so that type checks can still run on the rest.
    """
    if not isinstance(raw, dict):
        return []
    known = _schema_fields(schema)
    problems = []
    for key, value in list(raw.items()):
        name = f"{prefix}{key}"
        if key not in known:
            del raw[key]
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = (
                f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid: {', '.join(sorted(known))})"
            )
            problems.append(f"{name}: unknown key{hint}")
            continue
        sub = _section_type(known[key])
        if sub is not None:
            problems += unknown_keys(value, sub, f"{name}.")
    return problems


def _schema_fields(schema: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(schema):
        return {f.name: None for f in dataclasses.fields(schema)}
    return {name: f.annotation for name, f in schema.model_fields.items()}


def _section_type(annotation: Any) -> Any:
    """The nested section class behind an annotation (`X`, `X | None`), if it is one."""
    candidates = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    if annotation == dict[str, Any]:
        return GPTConfig
    return None


def validate(raw: dict[str, Any], source: str) -> RunConfig:
    """Type-check the raw dict and the model section; raise once with every problem."""
    problems: list[str] = []
    cfg = None
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        problems += [_format_error(err) for err in e.errors()]
    model = raw.get("model") or {}
    if isinstance(model, dict):
        problems += _model_problems(model, raw)
    if cfg is not None:
        problems += _consistency_problems(cfg)
    if problems:
        raise ConfigError(problems, source)
    assert cfg is not None
    return cfg


def _format_error(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union")))
    found = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    shown = f"; found {found!r}" if not isinstance(found, dict) and "found" not in msg else ""
    return f"{key}: {msg}{shown}"


def _model_problems(model: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    trial = {"vocab_size": 256, "block_size": data.get("max_length", 256), **model}
    try:
        _GPT_ADAPTER.validate_python(trial)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            error = (err.get("ctx") or {}).get("error")
            if isinstance(error, InvalidConfig):  # GPTConfig.problems(), as its __post_init__ found them
                problems += [f"model: {p}" for p in error.problems]
            else:
                problems.append(f"model.{_format_error(err)}")
        return problems
    except InvalidConfig as e:
        return [f"model: {p}" for p in e.problems]
    return []


def _consistency_problems(cfg: RunConfig) -> list[str]:
    problems = []
    t, d, c = cfg.train, cfg.data, cfg.checkpoint
    if t.max_steps is None and t.max_epochs is None:
        problems.append("train: set max_steps or max_epochs")
    if "{prompt}" not in d.prompt_template and d.prompt_template != "chat":
        problems.append(
            f"data.prompt_template: must contain '{{prompt}}' or be 'chat' (the model's chat template), "
            f"found {d.prompt_template!r}"
        )
    block = cfg.model.get("block_size")
    if isinstance(block, int) and block < d.max_length:
        problems.append(f"model.block_size: {block} is smaller than data.max_length {d.max_length}")
    has_val = d.val_fraction > 0 or d.val_split is not None
    if c.monitor.startswith("val_") and not has_val:
        problems.append(
            f"checkpoint.monitor: '{c.monitor}' needs validation data; set data.val_fraction or "
            "data.val_split, or monitor 'train_loss'"
        )
    if t.min_lr is not None and t.min_lr > t.learning_rate:
        problems.append(f"train.min_lr: {t.min_lr} is above train.learning_rate {t.learning_rate}")
    if isinstance(t.val_check_interval, float) and t.val_check_interval > 1:
        problems.append(
            f"train.val_check_interval: a fraction of an epoch is at most 1.0, found {t.val_check_interval} "
            "(write a whole number of steps as an integer)"
        )
    if cfg.init_from is not None and set(cfg.model) - {"dropout"}:
        extra = ", ".join(sorted(set(cfg.model) - {"dropout"}))
        problems.append(
            f"model: with init_from the architecture comes from the pretrained model; remove {extra}"
        )
    if t.lora is not None and c.resume is not None:
        problems.append(
            "checkpoint.resume: resuming a LoRA run is not supported yet (checkpoints hold merged weights)"
        )
    if t.freeze is not None and t.lora is not None:
        problems.append("train: choose freeze or lora, not both (lora already freezes the base weights)")
    if cfg.tokenizer.kind == "hf" and cfg.tokenizer.path is None:
        problems.append("tokenizer.path: the 'hf' kind loads a tokenizer directory; give its path")
    return problems + _objective_problems(cfg)


def _objective_problems(cfg: RunConfig) -> list[str]:
    """What DPO needs of the rest of the config, and DPO settings given to another objective."""
    t, d = cfg.train, cfg.data
    if t.objective != "dpo":
        stray = sorted({"dpo_beta", "dpo_reference"} & t.model_fields_set)
        return [f"train.{k}: only used with train.objective: dpo, found {t.objective}" for k in stray]
    problems = []
    if cfg.init_from is None:
        problems.append(
            "init_from: train.objective dpo tunes a pretrained model, which is also its reference; "
            "name one (a checkpoint, a model from `tinylm models`, or a Hugging Face directory)"
        )
    if d.kind != "qa":
        problems.append(f"data.kind: DPO reads {{prompt, chosen, rejected}} pairs, found {d.kind!r}")
    if d.packing:
        problems.append("data.packing: DPO keeps each pair in its own rows; set it to false")
    if d.loss_on != "response":
        problems.append(f"data.loss_on: DPO scores the responses only; set 'response', found {d.loss_on!r}")
    if d.response_key is not None:
        problems.append("data.response_key: DPO reads the responses from 'chosen' and 'rejected'; remove it")
    return problems


CONFIG_HEADER = "# written by `tinylm train`: the resolved config of this run\n"


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (stored in every checkpoint)."""
    return CONFIG_HEADER + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------------------------------------
# The seed's test_config.yaml (`tinylm test`); its trainer_config.yaml is translated by `tinylm.compat.seed`


class SeedTestData(Section):
    data_dir: str
    max_prompt_length: int = Field(256, ge=1, le=MAX_TOKENS)
    padding: bool | str = True
    padding_side: Literal["left", "right"] = "left"
    split: str = "test"
    truncate_promt: bool = True


SeedGenerateParams = create_model(
    "SeedGenerateParams",
    __base__=Section,
    __doc__="The seed's `generate_params` (transformers' names and defaults), with the ranges of the "
    "generation options they map to (`tinylm.generate.options`).",
    do_sample=(bool, False),
    max_new_tokens=pydantic_field("max_new_tokens", le=MAX_TOKENS),
    no_repeat_ngram_size=pydantic_field("no_repeat_ngram_size", le=MAX_TOKENS),
    top_k=(
        int | None,
        Field(None, ge=0, description="0 or None: no top-k filter (as transformers reads 0)."),
    ),
    top_p=pydantic_field("top_p"),
    temperature=pydantic_field("temperature", default=1.0, le=100.0),
    num_beams=pydantic_field("num_beams"),
)


class SeedTestParams(Section):
    do_compute_metrics: bool = True
    log_file: str = "test_log.jsonl"
    save_steps: int = Field(16, ge=1, le=MAX_COUNT)
    test_model_path: str | None = None
    batch_size: int = Field(8, ge=1, le=MAX_TOKENS)


class TestRunConfig(Section):
    """The seed's test_config.yaml, field for field (`tinylm test`)."""

    cuda: bool = False
    data: SeedTestData
    generate_params: SeedGenerateParams = SeedGenerateParams()
    model_name: str
    seed: int = Field(42, ge=0, le=SEED_MAX)
    test_params: SeedTestParams = SeedTestParams()
    use_cache: bool = True
    wandb: dict[str, Any] | None = None


def load_test_config(path: str | Path, overrides: list[str] | None = None) -> TestRunConfig:
    """Read and validate a seed-style test config; every problem reported at once."""
    path = Path(path)
    raw = read_yaml(path)
    if isinstance(raw, dict) and (is_seed_trainer(raw) or "train" in raw):
        raise ConfigError(
            ["this is a training config (it has a 'trainer' or 'train' section): run it with `tinylm train`; "
             "`tinylm test` takes a test config (model_name, data, generate_params, test_params)"],
            str(path),
        )  # fmt: skip
    problems: list[str] = []
    for item in overrides or []:
        problems += apply_override(raw, item)
    problems += unknown_keys(raw, TestRunConfig)
    try:
        cfg = TestRunConfig.model_validate(raw)
    except ValidationError as e:
        problems += [_format_error(err) for err in e.errors()]
        cfg = None
    if problems:
        raise ConfigError(problems, str(path))
    assert cfg is not None
    return cfg

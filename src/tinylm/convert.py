"""Hugging Face and GGUF weights <-> the tinylm GPT: configs, names and tensors, both ways.

Three families map name by name onto `tinylm.model.GPT`:

- ``llama`` (SmolLM2, Llama 2/3 without RoPE scaling): RoPE, RMSNorm, SwiGLU, no biases, GQA.
- ``qwen2``: the same, plus a bias on the q/k/v projections alone (``qkv_bias=True``).
- ``gpt2``: learned positions, LayerNorm, GELU (tanh or exact) or ReLU, biases everywhere; its Conv1D
  weights are stored (in, out), so they are transposed into nn.Linear's (out, in).

HF's separate q/k/v projections are concatenated into tinylm's fused ``attn.qkv`` ([q | k | v] rows) on
import and split again on export. Imported weights are float32 whatever the source dtype: a plain llama GGUF
file (SmolLM2) is read and dequantized in one pass by `tinylm.gguf_llama` (12.6 s for SmolLM2-135M on 2 CPU
cores, where transformers' GGUF loader took 26.5 s); any other GGUF file is dequantized by transformers.

`import_pretrained` turns a Hugging Face folder or GGUF file into a tinylm checkpoint; `export_hf` writes a
GPT as a Hugging Face folder. Which model to convert, where to cache it (`tinylm.hub`) and the `export`
verb (`tinylm.tools.export`) live elsewhere: this module is the mapping.

A causal LM it cannot map (GPT-Neo, Mistral, Phi, ...) is not converted: `import_pretrained` stores it in the
Hugging Face layout (float32), to run through transformers (`tinylm.hf_model.HFCausalLM`); a model that
transformers has no causal LM class for (T5, ViT, ...) raises a `TinylmError` naming its model_type.

What this module does not do: it never downloads (everything loads with ``local_files_only=True``).
transformers is imported inside the functions that need it, since it is slow to import.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tinylm.checkpoint import save_checkpoint
from tinylm.data.formats import read_json
from tinylm.errors import CheckpointError, TinylmError
from tinylm.hf_model import HFCausalLM, check_causal_lm, no_progress_bars
from tinylm.model import GPT, GPTConfig
from tinylm.tokenizers import BPETokenizer, HFTokenizer, Tokenizer, check_hf_folder

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

SUPPORTED_TYPES = ("llama", "qwen2", "gpt2")
GGUF_INSTALL = "pip install gguf accelerate"
_MLP_TO_GPT2 = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}  # tinylm mlp -> activation_function
_GPT2_TO_MLP = {v: k for k, v in _MLP_TO_GPT2.items()} | {"gelu_pytorch_tanh": "gelu_tanh"}


# ----------------------------------------------------------------------------------------------------------
# Configs


def config_from_hf(hf_config: PretrainedConfig) -> GPTConfig:
    """The GPTConfig of a transformers LlamaConfig, Qwen2Config or GPT2Config (dropout 0)."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type in ("llama", "qwen2"):
        return _llama_config(hf_config, model_type)
    if model_type == "gpt2":
        return _gpt2_config(hf_config)
    raise TinylmError(
        f"cannot convert model_type {model_type!r}: tinylm maps {', '.join(SUPPORTED_TYPES)} "
        "(SmolLM2 and Llama are 'llama') onto its GPT"
    )


def _llama_config(c: PretrainedConfig, model_type: str) -> GPTConfig:
    rope = _rope_parameters(c)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    problems = []
    if c.hidden_act != "silu":
        problems.append(f"hidden_act={c.hidden_act!r} (tinylm's swiglu uses 'silu')")
    if rope_type != "default":
        problems.append(f"rope_type={rope_type!r} (tinylm implements plain RoPE, 'default')")
    if model_type == "llama" and (c.attention_bias or c.mlp_bias):
        problems.append("attention_bias/mlp_bias=True (tinylm maps Llama without biases)")
    if getattr(c, "use_sliding_window", False):
        problems.append("use_sliding_window=True (tinylm attends to the whole context)")
    _raise_problems(model_type, problems)
    return GPTConfig(
        vocab_size=c.vocab_size,
        block_size=c.max_position_embeddings,
        n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads,
        n_kv_head=c.num_key_value_heads,
        n_embd=c.hidden_size,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        pos="rope",
        rope_base=float(rope.get("rope_theta", 10000.0)),
        norm="rmsnorm",
        norm_eps=c.rms_norm_eps,
        mlp="swiglu",
        dropout=0.0,
        bias=False,
        qkv_bias=True if model_type == "qwen2" else None,
        tie_embeddings=c.tie_word_embeddings,
    )


def _rope_parameters(c: PretrainedConfig) -> dict[str, Any]:
    """rope_theta and rope_type: `rope_parameters` in transformers 5, rope_theta + rope_scaling in 4.x."""
    params = getattr(c, "rope_parameters", None)
    if params is None:
        params = {"rope_theta": c.rope_theta, **(getattr(c, "rope_scaling", None) or {})}
    return params


def _gpt2_config(c: PretrainedConfig) -> GPTConfig:
    problems = []
    if c.activation_function not in _GPT2_TO_MLP:
        problems.append(
            f"activation_function={c.activation_function!r} (expected one of {list(_GPT2_TO_MLP)})"
        )
    if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx:
        problems.append("attention scaled other than by 1/sqrt(head_dim)")
    _raise_problems("gpt2", problems)
    return GPTConfig(
        vocab_size=c.vocab_size,
        block_size=c.n_positions,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        intermediate_size=c.n_inner,
        pos="learned",
        norm="layernorm",
        norm_eps=c.layer_norm_epsilon,
        mlp=_GPT2_TO_MLP[c.activation_function],
        dropout=0.0,
        bias=True,
        tie_embeddings=c.tie_word_embeddings,
    )


def _raise_problems(model_type: str, problems: list[str]) -> None:
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise TinylmError(f"cannot convert this {model_type} model; tinylm's GPT does not support:\n{lines}")


# ----------------------------------------------------------------------------------------------------------
# Weights


def _weight_names(config: GPTConfig, model_type: str) -> dict[str, tuple[str, ...]]:
    """tinylm parameter name -> the HF names it is made of, concatenated along dim 0 (q, k, v -> qkv)."""
    if model_type == "gpt2":
        return _gpt2_names(config)
    emb = "model.embed_tokens.weight"
    names = {
        "wte.weight": (emb,),
        "ln_f.weight": ("model.norm.weight",),
        "lm_head.weight": (emb if config.tie_embeddings else "lm_head.weight",),
    }
    qkv_params = ("weight", "bias") if config.qkv_bias else ("weight",)
    for i in range(config.n_layer):
        ours, theirs = f"h.{i}.", f"model.layers.{i}."
        names[ours + "ln_1.weight"] = (theirs + "input_layernorm.weight",)
        for p in qkv_params:
            names[f"{ours}attn.qkv.{p}"] = tuple(f"{theirs}self_attn.{x}_proj.{p}" for x in "qkv")
        names[ours + "attn.proj.weight"] = (theirs + "self_attn.o_proj.weight",)
        names[ours + "ln_2.weight"] = (theirs + "post_attention_layernorm.weight",)
        for x in ("gate", "up", "down"):
            names[f"{ours}mlp.{x}.weight"] = (f"{theirs}mlp.{x}_proj.weight",)
    return names


def _gpt2_names(config: GPTConfig) -> dict[str, tuple[str, ...]]:
    wte = "transformer.wte.weight"
    names = {
        "wte.weight": (wte,),
        "wpe.weight": ("transformer.wpe.weight",),
        "ln_f.weight": ("transformer.ln_f.weight",),
        "ln_f.bias": ("transformer.ln_f.bias",),
        "lm_head.weight": (wte if config.tie_embeddings else "lm_head.weight",),
    }
    pairs = (
        ("ln_1", "ln_1"),
        ("attn.qkv", "attn.c_attn"),
        ("attn.proj", "attn.c_proj"),
        ("ln_2", "ln_2"),
        ("mlp.fc", "mlp.c_fc"),
        ("mlp.proj", "mlp.c_proj"),
    )
    for i in range(config.n_layer):
        for ours, theirs in pairs:
            for p in ("weight", "bias"):
                names[f"h.{i}.{ours}.{p}"] = (f"transformer.h.{i}.{theirs}.{p}",)
    return names


def _flip_conv1d(hf_name: str, t: Tensor, model_type: str) -> Tensor:
    """GPT-2's Conv1D stores (in, out), nn.Linear (out, in): transpose those weights (its own inverse)."""
    if model_type == "gpt2" and ".c_" in hf_name and hf_name.endswith(".weight"):
        return t.t().contiguous()
    return t


def state_dict_from_hf(
    hf_state_dict: dict[str, Tensor], config: GPTConfig, model_type: str
) -> dict[str, Tensor]:
    """An HF CausalLM state dict (``model.*`` / ``transformer.*`` keys) -> the state dict of tinylm's GPT.

    Keeps the source dtype; keys the mapping does not use (rotary buffers, ...) are ignored.
    """
    names = _weight_names(config, model_type)
    missing = sorted({k for theirs in names.values() for k in theirs if k not in hf_state_dict})
    if missing:
        raise TinylmError(
            f"the {model_type} weights lack {len(missing)} tensor(s) that its config implies, "
            f"e.g. {missing[:3]}; is the state dict from a CausalLM with this config?"
        )
    out = {}
    for ours, theirs in names.items():
        parts = [_flip_conv1d(k, hf_state_dict[k], model_type) for k in theirs]
        out[ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return out


@torch.no_grad()
def copy_from_hf(model: GPT, tensors: Iterable[tuple[str, Tensor]], model_type: str) -> None:
    """Copy HF-named tensors into `model` as they come (q, k and v into their rows of qkv), so no more than
    one source tensor is held beside the model: `state_dict_from_hf` without the whole state dict at once."""
    config, params = model.config, model.state_dict()
    names = _weight_names(config, model_type)
    assert set(names) == set(params), f"unmapped GPT tensors: {sorted(set(params) ^ set(names))[:3]}"
    where: dict[str, list[Tensor]] = {}  # HF name -> the tinylm tensors (or row blocks of qkv) it fills
    for ours, theirs in names.items():
        parts = params[ours].split(_qkv_sizes(config)) if len(theirs) > 1 else (params[ours],)  # views
        for name, part in zip(theirs, parts, strict=True):
            where.setdefault(name, []).append(part)
    missing = set(where)
    for name, t in tensors:
        t = _flip_conv1d(name, t, model_type)
        for target in where.get(name, ()):
            if target.shape != t.shape:
                raise TinylmError(
                    f"{name}: expected shape {tuple(target.shape)} (the config's), found {tuple(t.shape)}"
                )
            target.copy_(t)
        missing.discard(name)
    if missing:
        raise TinylmError(
            f"the {model_type} weights lack {len(missing)} tensor(s) that its config implies, "
            f"e.g. {sorted(missing)[:3]}"
        )


def _state_dict_to_hf(state_dict: dict[str, Tensor], config: GPTConfig, model_type: str) -> dict[str, Tensor]:
    """The inverse of `state_dict_from_hf`: qkv split back into q, k, v; a tied lm_head left out."""
    out = {}
    for ours, theirs in _weight_names(config, model_type).items():
        parts = state_dict[ours].split(_qkv_sizes(config)) if len(theirs) > 1 else (state_dict[ours],)
        for name, part in zip(theirs, parts, strict=True):
            out[name] = _flip_conv1d(name, part, model_type)
    return out


def _qkv_sizes(config: GPTConfig) -> list[int]:
    """The rows of q, k and v in tinylm's fused qkv projection."""
    kv = config.kv_heads * config.head_size
    return [config.n_head * config.head_size, kv, kv]


def hf_to_tinylm(hf_model: PreTrainedModel) -> tuple[GPT, GPTConfig]:
    """An in-memory transformers CausalLM (Llama, Qwen2, GPT-2) -> an equivalent tinylm GPT (eval, float32)."""
    config = config_from_hf(hf_model.config)
    model = GPT(config)
    copy_from_hf(model, hf_model.state_dict().items(), hf_model.config.model_type)
    return model.eval(), config


# ----------------------------------------------------------------------------------------------------------
# Export


def _export_blockers(config: GPTConfig) -> dict[str, list[str]]:
    """For each HF family, the config fields that keep the model from mapping onto it (empty: it maps)."""
    llama = {
        "kind": ("gpt",),
        "pos": ("rope",),
        "norm": ("rmsnorm",),
        "mlp": ("swiglu",),
        "prenorm": (True,),
        "bias": (False,),
    }
    gpt2 = {
        "kind": ("gpt",),
        "pos": ("learned",),
        "norm": ("layernorm",),
        "mlp": tuple(_MLP_TO_GPT2),
        "prenorm": (True,),
        "bias": (True,),
        "qkv_bias": (None, True),
        "n_kv_head": (None, config.n_head),
        "head_dim": (None, config.n_embd // config.n_head),
    }
    return {
        family: [
            f"{field}={getattr(config, field)!r} (needs {' or '.join(map(repr, allowed))})"
            for field, allowed in needs.items()
            if getattr(config, field) not in allowed
        ]
        for family, needs in (("Llama/Qwen2", llama), ("GPT-2", gpt2))
    }


def export_type(config: GPTConfig) -> str:
    """The HF model_type that `config` maps onto: qwen2, llama or gpt2; else a TinylmError naming the fields."""
    blockers = _export_blockers(config)
    if not blockers["Llama/Qwen2"]:
        return "qwen2" if config.qkv_bias else "llama"
    if not blockers["GPT-2"]:
        return "gpt2"
    why = "\n".join(f"  - as {family}: {', '.join(fields)}" for family, fields in blockers.items())
    raise TinylmError(f"cannot export this model to Hugging Face format; the blocking config fields:\n{why}")


def _hf_config(config: GPTConfig, model_type: str, tokenizer: Tokenizer | None) -> PretrainedConfig:
    from transformers import AutoConfig

    ids = {
        "bos_token_id": tokenizer.bos_id if tokenizer else None,
        "eos_token_id": tokenizer.eos_id if tokenizer else None,
        "tie_word_embeddings": config.tie_embeddings,
    }
    if model_type == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            vocab_size=config.vocab_size,
            n_positions=config.block_size,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=config.intermediate_size,
            activation_function=_MLP_TO_GPT2[config.mlp],
            layer_norm_epsilon=config.norm_eps,
            **ids,
        )
    return AutoConfig.for_model(
        model_type,
        vocab_size=config.vocab_size,
        max_position_embeddings=config.block_size,
        hidden_size=config.n_embd,
        intermediate_size=config.mlp_size,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.kv_heads,
        head_dim=config.head_size,
        hidden_act="silu",
        rope_theta=config.rope_base,
        rms_norm_eps=config.norm_eps,
        **ids,
    )


def to_hf_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerBase:
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.hf
    if isinstance(tokenizer, BPETokenizer):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=tokenizer.tok, eos_token=tokenizer.eos_token)
    raise TinylmError(
        f"a {tokenizer.kind!r} tokenizer has no Hugging Face equivalent; only 'bpe' and 'hf' tokenizers "
        "export (leave tokenizer=None to export the weights alone)"
    )


def export_hf(
    model: GPT,
    config: GPTConfig,
    out_dir: str | Path,
    *,
    tokenizer: Tokenizer | None = None,
    chat_template: str | None = None,
) -> Path:
    """Write `model` as a Hugging Face model directory (config.json, model.safetensors, tokenizer files).

    `AutoModelForCausalLM.from_pretrained(out_dir)` then gives a LlamaForCausalLM (rope + rmsnorm + swiglu,
    no bias), a Qwen2ForCausalLM (the same with qkv_bias) or a GPT2LMHeadModel (learned + layernorm + gelu,
    bias), in float32. Any other config raises a TinylmError naming the fields that block the export.
    `chat_template` (Jinja) is written with the tokenizer when it has none of its own.
    """
    from transformers import AutoModelForCausalLM

    model_type = export_type(config)
    hf_tokenizer = to_hf_tokenizer(tokenizer) if tokenizer is not None else None
    if hf_tokenizer is not None and chat_template and not hf_tokenizer.chat_template:
        hf_tokenizer.chat_template = chat_template
    hf_model = AutoModelForCausalLM.from_config(_hf_config(config, model_type, tokenizer))
    state_dict = _state_dict_to_hf(model.state_dict(), config, model_type)
    missing, unexpected = hf_model.load_state_dict(state_dict, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (
        f"missing {missing}, unexpected {unexpected}"
    )
    out_dir = Path(out_dir)
    with no_progress_bars():
        hf_model.save_pretrained(out_dir)
    if hf_tokenizer is not None:
        hf_tokenizer.save_pretrained(out_dir)
    return out_dir


# ----------------------------------------------------------------------------------------------------------
# Import: a Hugging Face folder or GGUF file -> a tinylm checkpoint


def _locate(source: Path) -> tuple[Path, str | None]:
    """The directory transformers loads from, and the GGUF file name in it (None for a config.json dir)."""
    if source.is_file() and source.suffix == ".gguf":
        return source.parent, source.name
    if (source / "config.json").is_file():
        return source, None
    ggufs = sorted(source.glob("*.gguf")) if source.is_dir() else []
    if len(ggufs) == 1:
        return source, ggufs[0].name
    found = f"; it holds {len(ggufs)} .gguf files, name one" if ggufs else ""
    raise TinylmError(
        f"{source}: expected a Hugging Face model directory (with config.json), a .gguf file, "
        f"or a directory holding one .gguf file{found}"
    )


def _load_hf(source: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The transformers CausalLM and tokenizer at `source`, from local files only."""
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM

    directory, kwargs = _hf_source(source)
    try:
        hf_config = AutoConfig.from_pretrained(directory, **kwargs)
    except (OSError, ValueError, KeyError, StrictDataclassError) as e:  # a config transformers refuses
        why = " ".join(str(e).split())  # one line: validation errors span several
        raise CheckpointError(f"{directory / 'config.json'}: not a usable model config: {why}") from None
    check_causal_lm(hf_config, source)  # what is no causal LM fails before its weights load
    if kwargs["gguf_file"] is None:
        _check_weights(directory, hf_config)
        kwargs["use_safetensors"] = True  # never a pickle, even one that sits beside the safetensors
    try:
        with no_progress_bars():
            hf_model = AutoModelForCausalLM.from_pretrained(directory, config=hf_config, **kwargs)
    except (OSError, ValueError, KeyError, ImportError, SafetensorError) as e:
        raise CheckpointError(f"could not load a Hugging Face model from {source}: {e}") from None
    return hf_model, _load_hf_tokenizer(source)


def _load_hf_tokenizer(source: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    directory, kwargs = _hf_source(source)
    try:
        return AutoTokenizer.from_pretrained(directory, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as e:  # damaged tokenizer files
        raise CheckpointError(f"could not load the tokenizer of {source}: {e}") from None


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _check_source(source: Path) -> None:
    """Refuse, before anything reads it, a model folder or GGUF file that is not what it claims: a file in
    it that is no regular file, a JSON file that does not parse, a config.json without a model_type
    transformers knows."""
    directory, gguf_file = _locate(source)
    check_hf_folder(directory, CheckpointError)
    if gguf_file is not None:
        return
    config_path = directory / "config.json"
    model_type = read_json(config_path).get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(
            f"{config_path}: expected a 'model_type' naming the architecture (llama, qwen2, gpt2, ...), "
            f"found {model_type!r}"
        )
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING.keys()), n=1)
        raise CheckpointError(
            f"{config_path}: model_type {model_type!r} is not an architecture this transformers knows"
            + (f"; did you mean {close[0]!r}?" if close else "")
        )


def _check_weights(directory: Path, hf_config: PretrainedConfig) -> None:
    """Before any weight loads: the weights must be safetensors (a pickle can run code when loaded), the
    model config.json describes must fit in memory (float32), and every tensor of the safetensors files
    that the model has must have the shape the config implies."""
    import psutil
    from safetensors import SafetensorError, safe_open
    from transformers import AutoModelForCausalLM

    if not any(directory.glob("*.safetensors")):
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{directory}: tinylm loads only safetensors weights; this folder holds {pickles[0]}, a pickle "
                "that could run code when loaded. Convert it to model.safetensors where you trust it, e.g. "
                "`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir)`"
            )
        raise CheckpointError(f"{directory}: no weights: expected model.safetensors (or its shards)")

    with torch.device("meta"):  # shapes only: nothing is allocated
        meta = AutoModelForCausalLM.from_config(hf_config)
    expected = {name: tuple(t.shape) for name, t in meta.state_dict().items()}
    need = 4 * sum(p.numel() for p in meta.parameters())
    available = psutil.virtual_memory().available
    if need > available:
        raise CheckpointError(
            f"{directory / 'config.json'}: describes a model of {need / 2**30:.1f} GiB in float32; this machine "
            f"has {available / 2**30:.1f} GiB of memory available"
        )
    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(file, "pt") as f:  # reads the header alone
                shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        except SafetensorError as e:
            raise CheckpointError(f"{file}: not a readable safetensors file: {e}") from None
        for key, shape in shapes.items():
            if key in expected and shape != expected[key]:
                raise CheckpointError(
                    f"{file}: tensor {key} has shape {list(shape)}; {directory / 'config.json'} implies "
                    f"{list(expected[key])}"
                )


def _hf_source(source: Path) -> tuple[Path, dict[str, Any]]:
    """The directory and `from_pretrained` keywords for `source` (local files only, its GGUF file if any)."""
    directory, gguf_file = _locate(source)
    if gguf_file and importlib.util.find_spec("gguf") is None:
        raise TinylmError(f"reading {gguf_file} needs the gguf package: {GGUF_INSTALL}")
    return directory, {"local_files_only": True, "gguf_file": gguf_file}


def _from_llama_gguf(source: Path) -> tuple[GPT, GPTConfig] | None:
    """The GPT of a plain llama GGUF file read in one pass (`tinylm.gguf_llama`); None for anything else."""
    directory, kwargs = _hf_source(source)
    if kwargs["gguf_file"] is None:
        return None
    from tinylm.gguf_llama import read_llama_gguf

    read = read_llama_gguf(directory / kwargs["gguf_file"])
    if read is None or not _convertible(read[0]):
        return None
    config = config_from_hf(read[0])
    model = GPT(config)
    copy_from_hf(model, read[1], "llama")
    return model.eval(), config


def import_pretrained(source: str | Path, out_dir: Path) -> Path:
    """A Hugging Face model directory, a .gguf file, or a directory with one .gguf file -> a tinylm
    checkpoint directory at `out_dir` (written atomically), with the HF tokenizer wrapped as an `hf` kind.

    An architecture that tinylm's GPT does not cover is stored in the Hugging Face layout (float32), to run
    through transformers (`HFCausalLM`). A plain llama GGUF (SmolLM2) is read by `tinylm.gguf_llama` in
    one pass, 2-3x faster than through transformers' GGUF loader."""
    _check_source(Path(source))
    gpt = _from_llama_gguf(Path(source))
    if gpt is not None:
        (model, config), hf_tokenizer = gpt, _load_hf_tokenizer(Path(source))
    else:
        hf_model, hf_tokenizer = _load_hf(Path(source))
        if _convertible(hf_model.config):
            model, config = hf_to_tinylm(hf_model)
        else:
            model = HFCausalLM(hf_model.float())
            config = model.config
    tokenizer = HFTokenizer(hf_tokenizer, source=f"the tokenizer of {source}")
    meta = {
        "prompt_template": "{prompt}",
        "source": str(source),
        "generation": {"max_new_tokens": 256, "temperature": 0.0, "stop": []},
        "chat_template": bool(hf_tokenizer.chat_template),
    }
    return save_checkpoint(out_dir, model=model, config=config, tokenizer=tokenizer, meta=meta)


def _convertible(hf_config: PretrainedConfig) -> bool:
    """True if `config_from_hf` maps this config onto tinylm's GPT."""
    try:
        config_from_hf(hf_config)
    except TinylmError:
        return False
    return True

"""`tinylm export`: a checkpoint -> a new Hugging Face model directory (the weights mapped by `tinylm.convert`).

What this module does not do: it never writes into a folder that holds anything (the export goes into a
temporary sibling and is renamed into place), and it knows no weight layout of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from tinylm.api import load
from tinylm.convert import export_hf, export_type, to_hf_tokenizer
from tinylm.errors import TinylmError
from tinylm.files import check_output_dir, dir_written_aside
from tinylm.templates import template_as_jinja
from tinylm.tokenizers import BPETokenizer, HFTokenizer


def export_checkpoint(source: str | Path, out_dir: str | Path, *, tokenizer: bool = True) -> Path:
    """`tinylm export`: a checkpoint (a directory, a run's `last`/`best` link or a model name) -> a new
    Hugging Face model directory at `out_dir` that `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained`
    read. A GPT goes through `export_hf`; a model that writes itself as one (`CausalLM.save_pretrained`: a
    model run through transformers) is saved as it is. A model that chats in its own Q/A prompt template
    gets that layout as the tokenizer's chat template. Written into a temporary sibling, flushed, then
    renamed into place; `out_dir` must be new or an empty directory (not a link, not the current directory
    or one above it), so nothing already there is lost."""
    out = _new_dir(Path(out_dir))
    lm = load(source)
    if tokenizer and not isinstance(lm.tokenizer, BPETokenizer | HFTokenizer):
        raise TinylmError(
            f"{source}: its {lm.tokenizer.kind!r} tokenizer has no Hugging Face equivalent (only 'bpe' and 'hf' "
            "tokenizers export); pass --no-tokenizer to export the weights alone"
        )
    save_pretrained = getattr(lm.model, "save_pretrained", None)  # a CausalLM's; the GRU baseline has none
    if save_pretrained is None:
        export_type(lm.config)  # a config that does not map fails before anything is written
    chat = template_as_jinja(lm.prompt_template) if lm.chats_in_prompt_template() else None
    with dir_written_aside(out, replace=False, what="export") as tmp:
        if save_pretrained is not None:
            save_pretrained(tmp)
            if tokenizer:
                hf_tokenizer = to_hf_tokenizer(lm.tokenizer)
                if chat and not hf_tokenizer.chat_template:
                    hf_tokenizer.chat_template = chat
                hf_tokenizer.save_pretrained(tmp)
        else:
            export_hf(
                lm.model, lm.config, tmp, tokenizer=lm.tokenizer if tokenizer else None, chat_template=chat
            )
    return out


def _new_dir(out_dir: Path) -> Path:
    """`out_dir` as an absolute path, if it may receive an export; else a TinylmError saying why not."""
    out = Path(os.path.abspath(out_dir))  # `..` and `.` resolved by name, links kept as they are
    if out_dir.is_symlink():
        raise TinylmError(f"{out_dir}: is a symbolic link; export into a new directory")
    if out == Path.cwd() or out in Path.cwd().parents:
        raise TinylmError(f"{out_dir}: is the current directory or one above it; export into a new directory")
    check_output_dir(out.parent, "export")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TinylmError(f"{out_dir}: already exists and is not an empty directory; export into a new one")
    return out

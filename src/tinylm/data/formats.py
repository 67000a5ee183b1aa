"""Read data files into plain Python values: prompt/response `Example`s for fine-tuning, text for pretraining.

`read_examples` reads JSON (the SFA `training_data` shape, a flat `{prompt: response}` dict, a split dict
`{"train": [...], "test": [...]}`, or a list of records), JSONL, CSV and Parquet; records hold either a
prompt/response pair (column names auto-detected or given) or a chat `messages` list. `read_pairs` reads
preference pairs `{prompt, chosen, rejected}` (DPO) from the same files. `read_documents` reads .txt/.md
files. Every problem is a `DataError` naming the file, the record or line, the key, what was
expected and what was found.

This module does not tokenize, window, mask or batch (that is `tinylm.data.datasets`), and it does not add
end-of-sequence tokens: it strips the `<end>` marker from responses so the dataset layer can append the
tokenizer's own.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinylm.errors import DataError
from tinylm.files import check_input_file

END_MARKER = "<end>"
SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
DOCUMENT_SUFFIXES = (".txt", ".md")
# Tried in order on the first record when prompt_key/response_key are not given.
KEY_PAIRS = (
    ("prompt", "response"),
    ("prompt", "completion"),
    ("input", "output"),
    ("question", "answer"),
    ("Question", "Answer"),
    ("instruction", "output"),
)
ROLES = ("system", "user", "assistant")
JSON_SHAPES = (
    '{"training_data": [{"input": ..., "output": ...}, ...]}',
    '{"train": [records], "test": [records], "val": [records]} (splits)',
    '{"prompt text": "response text", ...} (every value a string)',
    "[records] (a list of objects)",
)


@dataclass(frozen=True)
class Example:
    """One supervised pair; `messages` is the whole chat when the source record was a `messages` list."""

    prompt: str
    response: str
    messages: tuple[dict[str, str], ...] | None = None


@dataclass(frozen=True)
class Pair:
    """One preference pair: a prompt and two responses, the preferred one first. `messages` is the prompt's
    chat when the record gave one (its last message is `prompt`); `source` is "FILE: record N", for the
    messages of later checks."""

    prompt: str
    chosen: str
    rejected: str
    messages: tuple[dict[str, str], ...] | None = None
    source: str = ""


# (where, record): where is "record 3" or "line 4", used in error messages.
Located = tuple[str, Any]
RecordParser = Callable[[str, Any], Example]


def read_examples(
    path: str | Path,
    *,
    split: str = "train",
    prompt_key: str | None = None,
    response_key: str | None = None,
    messages_key: str = "messages",
) -> list[Example]:
    """Read prompt/response examples from a .json, .jsonl, .csv or .parquet file.

    `split` picks a list of a split JSON ("validation" is an alias of "val"); other files hold only
    "train". When prompt_key/response_key are None they are detected from the first record (see
    `KEY_PAIRS`), unless that record has a `messages_key` chat list. Prompts and responses are
    whitespace-stripped and a trailing `END_MARKER` is removed from responses.
    """
    path = Path(path)
    records, what = _load_records(path, split)
    if not records:
        raise DataError(f"{path}: {what} has no records (empty dataset)")
    parse = _record_parser(path, records[0], prompt_key, response_key, messages_key)
    return [parse(where, record) for where, record in records]


def read_pairs(path: str | Path, *, split: str = "train", prompt_key: str | None = None) -> list[Pair]:
    """Read preference pairs from a .json, .jsonl, .csv or .parquet file (the shapes `read_examples` reads).

    Each record has a prompt (`prompt_key`, default "prompt"), "chosen" and "rejected". The prompt is a
    string or a chat (a list of messages ending with a user message); each response is a string or a list
    holding one assistant message (TRL's conversational form). Responses are whitespace-stripped and lose a
    trailing `END_MARKER`. An empty side, or two equal sides, is a DataError naming file, record and key.
    """
    path = Path(path)
    records, what = _load_records(path, split)
    if not records:
        raise DataError(f"{path}: {what} has no records (empty dataset)")
    keys = (prompt_key or "prompt", "chosen", "rejected")
    _require_pair_keys(path, records[0], keys)
    return [_pair(path, where, as_object(path, where, record), keys) for where, record in records]


def available_splits(path: str | Path) -> list[str]:
    """The splits a split JSON holds, in file order ("validation" reported as "val"); ["train"] otherwise."""
    path = Path(path)
    if _suffix(path) != ".json":
        _check_file(path)
        return ["train"]
    data = read_json(path)
    splits = _splits(data) if isinstance(data, dict) and "training_data" not in data else {}
    return list(splits) or ["train"]


def read_documents(path: str | Path) -> list[str]:
    """Pretraining text: a file gives [its text]; a folder gives every .txt/.md below it, sorted by path."""
    path = Path(path)
    if not path.is_dir():
        return [_document(path)]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in DOCUMENT_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{path}: no .txt or .md files in this folder or below it")
    return [_document(file) for file in files]


def _document(path: Path) -> str:
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: empty text file")
    return text


# --- reading files -------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    check_input_file(path)  # a FIFO or a device would block the read forever: refused by its type


def read_text(path: Path) -> str:
    """The file's text as UTF-8 (a leading byte-order mark is dropped); every reader goes through here."""
    _check_file(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        bad = data[err.start : err.end]
        raise DataError(
            f"{path}: not valid UTF-8 at byte {err.start} (line {line}): found {bad!r}; "
            "re-save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        found = repr(suffix) if suffix else "a file with no suffix"
        raise DataError(f"{path}: unsupported file type {found}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    return suffix


def _load_records(path: Path, split: str) -> tuple[list[Located], str]:
    """The file's records and a name for them in an empty-dataset message ("file", "split 'test'")."""
    if path.exists():  # a FIFO or device is refused by its type, whatever its name
        _check_file(path)
    suffix = _suffix(path)
    if suffix == ".json":
        return _json_records(path, read_json(path), split)
    _require_train(path, split)
    if suffix == ".jsonl":
        return jsonl_records(path), "file"
    if suffix == ".csv":
        return _csv_records(path), "file"
    return _parquet_records(path), "file"


def read_json(path: Path) -> Any:
    """The parsed JSON of a file; a syntax error is a DataError naming the file, line and column."""
    return parse_json(path, read_text(path))


def parse_json(path: Path, text: str, where: str = "") -> Any:
    """json.loads with the errors a file can cause as DataErrors: bad syntax (line and column), and
    nesting deeper than Python's parser goes (RecursionError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        at = (
            f"{where}invalid JSON at line {err.lineno}, column {err.colno}"
            if not where
            else (f"{where}invalid JSON at column {err.colno}")
        )
        raise DataError(f"{path}: {at}: {err.msg}") from None
    except RecursionError:
        raise DataError(f"{path}: {where}JSON nested too deeply (more than about 1,000 levels)") from None


def _json_records(path: Path, data: Any, split: str) -> tuple[list[Located], str]:
    if isinstance(data, list):
        _require_train(path, split)
        return numbered(data, "record"), "file"
    if not isinstance(data, dict):
        raise _shape_error(path, data)
    if "training_data" in data:
        _require_train(path, split)
        records = data["training_data"]
        if not isinstance(records, list):
            raise DataError(f"{path}: 'training_data' must be a list of records, found {describe(records)}")
        return numbered(records, "record"), "'training_data'"
    splits = _splits(data)
    if splits:
        return _split_records(path, splits, split)
    if data and all(isinstance(value, str) for value in data.values()):
        _require_train(path, split)
        return [(f"entry {k!r}", {"prompt": k, "response": v}) for k, v in data.items()], "file"
    raise _shape_error(path, data)


def _splits(data: dict[str, Any]) -> dict[str, list[Any]]:
    return {_canonical_split(key): value for key, value in data.items() if isinstance(value, list)}


def _canonical_split(name: str) -> str:
    return "val" if name == "validation" else name


def _split_records(path: Path, splits: dict[str, list[Any]], split: str) -> tuple[list[Located], str]:
    name = _canonical_split(split)
    if name not in splits:
        raise DataError(f"{path}: split {split!r} not found; the file has splits {list(splits)}")
    return numbered(splits[name], f"split {name!r} record"), f"split {name!r}"


def _require_train(path: Path, split: str) -> None:
    if _canonical_split(split) != "train":
        raise DataError(
            f"{path}: split {split!r} requested, but this file has no splits (only 'train'); "
            f'use a JSON file shaped {{"train": [...], "{split}": [...]}} or read split "train"'
        )


def jsonl_records(path: Path) -> list[Located]:
    """("line N", parsed record) for every non-blank line of a JSON Lines file; a bad line is a DataError."""
    records = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        records.append((f"line {number}", parse_json(path, line, f"line {number}: ")))
    return records


def _csv_records(path: Path) -> list[Located]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    lines = reader.reader  # DictReader.line_num lags behind on a row that fails to parse
    try:
        return [(f"line {lines.line_num}", row) for row in reader]
    except csv.Error as err:
        raise DataError(f"{path}: line {lines.line_num}: invalid CSV: {err}") from None


def _parquet_records(path: Path) -> list[Located]:
    _check_file(path)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file: {err}") from None
    return numbered(table.to_pylist(), "record")


def numbered(records: list[Any], label: str) -> list[Located]:
    """("LABEL i", record) for each record: where an error message points."""
    return [(f"{label} {index}", record) for index, record in enumerate(records)]


# --- records to examples -------------------------------------------------------------------------------


def _record_parser(
    path: Path, first: Located, prompt_key: str | None, response_key: str | None, messages_key: str
) -> RecordParser:
    """Choose, from the first record, how every record becomes an Example: a chat or a key pair."""
    where, record = first
    record = as_object(path, where, record)
    if prompt_key is None and response_key is None and messages_key in record:
        return lambda w, r: _chat_example(path, w, as_object(path, w, r), messages_key)
    keys = _detect_keys(path, where, record, prompt_key, response_key)
    return lambda w, r: _pair_example(path, w, as_object(path, w, r), *keys)


def _detect_keys(
    path: Path, where: str, record: dict[str, Any], prompt_key: str | None, response_key: str | None
) -> tuple[str, str]:
    if prompt_key is not None and response_key is not None:
        return prompt_key, response_key
    for default_prompt, default_response in KEY_PAIRS:
        keys = (prompt_key or default_prompt, response_key or default_response)
        if keys[0] in record and keys[1] in record:
            return keys
    known = ", ".join(f"{p}/{r}" for p, r in KEY_PAIRS)
    raise DataError(
        f"{path}: {where}: cannot tell which keys hold the prompt and the response; the record has keys "
        f"{_keys(record)}. Pass prompt_key and response_key (detected pairs: {known}; or a 'messages' chat)"
    )


def _pair_example(
    path: Path, where: str, record: dict[str, Any], prompt_key: str, response_key: str
) -> Example:
    prompt = string_field(path, where, record, prompt_key)
    response = _response(path, where, response_key, string_field(path, where, record, response_key))
    return Example(prompt=prompt.strip(), response=response)


def _chat_example(path: Path, where: str, record: dict[str, Any], messages_key: str) -> Example:
    messages = _field(path, where, record, messages_key)
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{path}: {where}: key {messages_key!r}: expected a non-empty list of "
            f"{{'role': ..., 'content': ...}} messages, found {describe(messages)}"
        )
    chat = tuple(_message(path, f"{where}, {messages_key}[{i}]", m) for i, m in enumerate(messages))
    if chat[-1]["role"] != "assistant":
        raise DataError(
            f"{path}: {where}: key {messages_key!r}: the last message must have role 'assistant', "
            f"found {chat[-1]['role']!r}"
        )
    users = [message["content"] for message in chat if message["role"] == "user"]
    if not users:
        raise DataError(
            f"{path}: {where}: key {messages_key!r}: expected at least one 'user' message, found none"
        )
    response = _response(path, where, messages_key, chat[-1]["content"])
    return Example(prompt=users[-1].strip(), response=response, messages=chat)


def _require_pair_keys(path: Path, first: Located, keys: tuple[str, str, str]) -> None:
    """One clear message when the data holds no preference pairs at all (say, SFT data given to DPO)."""
    where, record = first
    record = as_object(path, where, record)
    missing = [k for k in keys if k not in record]
    if not missing:
        return
    sft = any(p in record and r in record for p, r in KEY_PAIRS) or "messages" in record
    hint = (
        "; it looks like prompt/response data for supervised fine-tuning (train.objective: next_token)"
        if sft
        else ""
    )
    raise DataError(
        f"{path}: {where}: preference pairs (train.objective: dpo) need the keys "
        f"{', '.join(repr(k) for k in keys)}; this record lacks {', '.join(repr(k) for k in missing)} "
        f"and has keys {_keys(record)}{hint}"
    )


def _pair(path: Path, where: str, record: dict[str, Any], keys: tuple[str, str, str]) -> Pair:
    prompt_key, chosen_key, rejected_key = keys
    prompt, messages = _pair_prompt(path, where, record, prompt_key)
    chosen = _pair_response(path, where, record, chosen_key)
    rejected = _pair_response(path, where, record, rejected_key)
    if chosen == rejected:
        raise DataError(
            f"{path}: {where}: keys {chosen_key!r} and {rejected_key!r} hold the same text; a pair must "
            "differ (the preferred response and a worse one)"
        )
    return Pair(prompt, chosen, rejected, messages, f"{path}: {where}")


def _pair_prompt(
    path: Path, where: str, record: dict[str, Any], key: str
) -> tuple[str, tuple[dict[str, str], ...] | None]:
    """(the prompt, or the chat's last user message; the chat or None)."""
    value = _field(path, where, record, key)
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{path}: {where}: key {key!r}: the prompt is empty")
        return value.strip(), None
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{path}: {where}: key {key!r}: expected a string or a non-empty list of "
            f"{{'role': ..., 'content': ...}} messages, found {describe(value)}"
        )
    chat = tuple(_message(path, f"{where}, {key}[{i}]", m) for i, m in enumerate(value))
    if chat[-1]["role"] != "user":
        raise DataError(
            f"{path}: {where}: key {key!r}: a chat prompt ends with a 'user' message, found "
            f"{chat[-1]['role']!r}"
        )
    if not chat[-1]["content"].strip():
        raise DataError(f"{path}: {where}: key {key!r}: the last user message is empty")
    return chat[-1]["content"].strip(), chat


def _pair_response(path: Path, where: str, record: dict[str, Any], key: str) -> str:
    value = _field(path, where, record, key)
    if isinstance(value, list):
        if len(value) != 1:
            raise DataError(
                f"{path}: {where}: key {key!r}: expected a string or a list of one assistant message, "
                f"found {len(value)} messages"
            )
        message = _message(path, f"{where}, {key}[0]", value[0])
        if message["role"] != "assistant":
            raise DataError(
                f"{path}: {where}: key {key!r}: expected the assistant's message, found role {message['role']!r}"
            )
        value = message["content"]
    elif not isinstance(value, str):
        raise DataError(
            f"{path}: {where}: key {key!r}: expected a string (or a list of one assistant message), "
            f"found {describe(value)}"
        )
    return _response(path, where, key, value)


def _message(path: Path, where: str, message: Any) -> dict[str, str]:
    message = as_object(path, where, message)
    role = string_field(path, where, message, "role")
    if role not in ROLES:
        raise DataError(f"{path}: {where}: key 'role': expected one of {list(ROLES)}, found {role!r}")
    return {"role": role, "content": string_field(path, where, message, "content")}


def _response(path: Path, where: str, key: str, text: str) -> str:
    """The response without surrounding whitespace and a trailing END_MARKER; empty is an error."""
    response = text.strip()
    if response.endswith(END_MARKER):
        response = response.removesuffix(END_MARKER).rstrip()
    if not response:
        raise DataError(f"{path}: {where}: key {key!r}: the response is empty")
    return response


def as_object(path: Path, where: str, record: Any) -> dict[str, Any]:
    """The record if it is a JSON object, else a DataError naming the file, the record and what it is."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where}: expected an object with keys, found {describe(record)}")
    return record


def _field(path: Path, where: str, record: dict[str, Any], key: str) -> Any:
    if key not in record:
        raise DataError(f"{path}: {where}: missing key {key!r}; the record has keys {_keys(record)}")
    return record[key]


def string_field(path: Path, where: str, record: dict[str, Any], key: str) -> str:
    """record[key] as a string; a missing key or another type is a DataError naming file, record and key."""
    value = _field(path, where, record, key)
    if not isinstance(value, str):
        raise DataError(f"{path}: {where}: key {key!r}: expected a string, found {describe(value)}")
    return value


# --- message helpers -----------------------------------------------------------------------------------


def _shape_error(path: Path, data: Any) -> DataError:
    found = f"an object with keys {_keys(data)}" if isinstance(data, dict) else describe(data)
    return DataError(
        f"{path}: unrecognised JSON shape: found {found}; expected one of: " + " | ".join(JSON_SHAPES)
    )


def _keys(record: dict[Any, Any], limit: int = 12) -> str:
    keys = list(record)
    shown = ", ".join(repr(key) for key in keys[:limit])
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def describe(value: Any, limit: int = 60) -> str:
    """A short 'type value' for messages, e.g. "int 5", "list [1, 2]", "null"."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"

"""Tests for tinylm.data.formats: every format written to disk and read back, and every error message.

Not tested here: tokenization and batching (tests/unit/data/test_datasets.py).
"""

from __future__ import annotations

import csv
import json
import re
import string
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylm.data import END_MARKER, Example, available_splits, read_documents, read_examples
from tinylm.errors import DataError

CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": " and you? "},
    {"role": "assistant", "content": "fine <end>"},
]


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        csv.writer(file).writerows(rows)
    return path


def fails(path: Path, detail: str) -> AbstractContextManager[pytest.ExceptionInfo[DataError]]:
    """Expect a DataError whose message starts with the path and contains `detail` verbatim."""
    return pytest.raises(DataError, match="^" + re.escape(f"{path}: ") + ".*" + re.escape(detail))


# --- formats read back ---------------------------------------------------------------------------------


def test_sfa_json_strips_end_marker_and_whitespace(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "sfa.json",
        {
            "training_data": [
                {"input": "what is your name", "output": "my name is abdoul <end>"},
                {"input": "  hi \n", "output": " hello<end>\n"},
            ]
        },
    )
    assert END_MARKER == "<end>"
    assert read_examples(path) == [Example("what is your name", "my name is abdoul"), Example("hi", "hello")]
    assert available_splits(path) == ["train"]


def test_flat_json_dict(tmp_path: Path) -> None:
    path = write_json(tmp_path / "flat.json", {"sentence_1": "target_1 <end>", "sentence_2": "target_2"})
    assert read_examples(path) == [Example("sentence_1", "target_1"), Example("sentence_2", "target_2")]


def test_split_json_reads_each_split(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "sft.json",
        {
            "train": [{"Question": "q1", "Answer": "a1"}, {"Question": "q2", "Answer": "a2"}],
            "test": [{"Question": "q3", "Answer": "a3"}],
            "validation": [{"Question": "q4", "Answer": "a4"}],
        },
    )
    assert read_examples(path) == [Example("q1", "a1"), Example("q2", "a2")]
    assert read_examples(path, split="test") == [Example("q3", "a3")]
    assert read_examples(path, split="val") == [Example("q4", "a4")]
    assert read_examples(path, split="validation") == [Example("q4", "a4")]
    assert available_splits(path) == ["train", "test", "val"]


def test_split_json_with_custom_keys(tmp_path: Path) -> None:
    path = write_json(tmp_path / "sft.json", {"train": [{"q": "hi", "a": "yo", "Question": "x"}]})
    assert read_examples(path, prompt_key="q", response_key="a") == [Example("hi", "yo")]


@pytest.mark.parametrize(
    "keys",
    [
        ("prompt", "response"),
        ("prompt", "completion"),
        ("input", "output"),
        ("question", "answer"),
        ("Question", "Answer"),
        ("instruction", "output"),
    ],
)
def test_json_list_detects_key_pairs(tmp_path: Path, keys: tuple[str, str]) -> None:
    path = write_json(tmp_path / "list.json", [{keys[0]: "p", keys[1]: "r", "id": "7"}])
    assert read_examples(path) == [Example("p", "r")]


def test_one_given_key_detects_the_other(tmp_path: Path) -> None:
    path = write_json(tmp_path / "list.json", [{"text": "p", "completion": "r", "prompt": "unused"}])
    assert read_examples(path, prompt_key="text") == [Example("p", "r")]


def test_jsonl_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"prompt": "a", "response": "b"}\n\n  \n{"prompt": "c", "response": "d"}', encoding="utf-8"
    )
    assert read_examples(path) == [Example("a", "b"), Example("c", "d")]
    assert available_splits(path) == ["train"]


def test_csv_with_quoted_commas_and_newlines(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", [["question", "answer"], ["a, b?", "line 1\nline 2"], ["é", "ü"]])
    assert read_examples(path) == [Example("a, b?", "line 1\nline 2"), Example("é", "ü")]


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,response\nhi,there\n")
    assert read_examples(path) == [Example("hi", "there")]


def test_parquet_records(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"input": "a", "output": "b <end>"}, {"input": "c", "output": "d"}]), path
    )
    assert read_examples(path) == [Example("a", "b"), Example("c", "d")]


def test_chat_messages_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    assert read_examples(path) == [Example("and you?", "fine", tuple(CHAT))]


def test_chat_messages_with_custom_key_in_parquet(tmp_path: Path) -> None:
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"conversation": CHAT[1:3]}]), path)
    assert read_examples(path, messages_key="conversation") == [Example("hi", "hello", tuple(CHAT[1:3]))]


# --- errors: files -------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="^" + re.escape(f"{path}: file not found") + "$"):
        read_examples(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    path = tmp_path / "folder.json"
    path.mkdir()
    with fails(path, "is a directory, expected a file"):
        read_examples(path)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    with fails(path, "unsupported file type '.txt'; supported: .json, .jsonl, .csv, .parquet"):
        read_examples(path)


def test_malformed_json_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "a",, "response": "b"}\n]', encoding="utf-8")
    with fails(path, "invalid JSON at line 2, column 18"):
        read_examples(path)


def test_malformed_jsonl_gives_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c", \n', encoding="utf-8")
    with fails(path, "line 3: invalid JSON at column 17"):
        read_examples(path)


def test_non_utf8_gives_byte_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"prompt,response\ncaf\xe9,x\n")
    with fails(path, r"not valid UTF-8 at byte 19 (line 2): found b'\xe9'"):
        read_examples(path)


def test_invalid_parquet(tmp_path: Path) -> None:
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"not parquet at all")
    with fails(path, "not a readable Parquet file"):
        read_examples(path)


def test_invalid_csv(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("prompt,response\n" + "x" * (csv.field_size_limit() + 1) + ",y\n", encoding="utf-8")
    with fails(path, "line 2: invalid CSV: field larger than field limit"):
        read_examples(path)


# --- errors: shapes ------------------------------------------------------------------------------------


def test_top_level_number(tmp_path: Path) -> None:
    path = write_json(tmp_path / "num.json", 5)
    with fails(path, "unrecognised JSON shape: found int 5; expected one of: "):
        read_examples(path)


def test_unrecognised_dict_lists_its_keys(tmp_path: Path) -> None:
    path = write_json(tmp_path / "odd.json", {"name": "x", "size": 3})
    with fails(path, "found an object with keys ['name', 'size']; expected one of: {\"training_data\""):
        read_examples(path)


def test_training_data_not_a_list(tmp_path: Path) -> None:
    path = write_json(tmp_path / "sfa.json", {"training_data": {"input": "a"}})
    with fails(path, "'training_data' must be a list of records, found dict"):
        read_examples(path)


def test_record_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "response": "b"}, ["a", "b"]])
    with fails(path, "line 2: expected an object with keys, found list ['a', 'b']"):
        read_examples(path)


def test_missing_key_names_record_and_keys(tmp_path: Path) -> None:
    records = [{"prompt": "a", "response": "b"}] * 3 + [{"prompt": "c", "reply": "d"}]
    path = write_json(tmp_path / "list.json", records)
    with fails(path, "record 3: missing key 'response'; the record has keys ['prompt', 'reply']"):
        read_examples(path)


def test_missing_key_in_split_record(tmp_path: Path) -> None:
    path = write_json(tmp_path / "sft.json", {"train": [{"Question": "a"}], "test": []})
    with fails(path, "split 'train' record 0: missing key 'Answer'; the record has keys ['Question']"):
        read_examples(path, prompt_key="Question", response_key="Answer")


def test_undetectable_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"src": "a", "tgt": "b"}])
    with fails(path, "line 1: cannot tell which keys hold the prompt and the response; the record has keys "):
        read_examples(path)
    with fails(path, "['src', 'tgt']. Pass prompt_key and response_key"):
        read_examples(path)


def test_wrong_value_type(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "list.json", [{"prompt": "a", "response": "b"}, {"prompt": "a", "response": 5}]
    )
    with fails(path, "record 1: key 'response': expected a string, found int 5"):
        read_examples(path)


def test_flat_dict_with_non_string_value_is_a_shape_error(tmp_path: Path) -> None:
    path = write_json(tmp_path / "flat.json", {"hi": "there", "count": 5})
    with fails(path, "found an object with keys ['hi', 'count']"):
        read_examples(path)


def test_csv_row_with_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("prompt,response\na,b\nc\n", encoding="utf-8")
    with fails(path, "line 3: key 'response': expected a string, found null"):
        read_examples(path)


def test_empty_response(tmp_path: Path) -> None:
    path = write_json(tmp_path / "sfa.json", {"training_data": [{"input": "a", "output": "  <end> "}]})
    with fails(path, "record 0: key 'output': the response is empty"):
        read_examples(path)


@pytest.mark.parametrize(
    ("name", "content", "detail"),
    [
        ("empty.json", "[]", "file has no records"),
        ("empty.jsonl", "\n\n", "file has no records"),
        ("empty.csv", "prompt,response\n", "file has no records"),
        ("empty_sfa.json", '{"training_data": []}', "'training_data' has no records"),
        (
            "empty_split.json",
            '{"train": [{"prompt": "a", "response": "b"}], "test": []}',
            "split 'test' has no",
        ),
        ("empty_dict.json", "{}", "unrecognised JSON shape: found an object with keys []"),
    ],
)
def test_empty_dataset(tmp_path: Path, name: str, content: str, detail: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    split = "test" if name == "empty_split.json" else "train"
    with fails(path, detail):
        read_examples(path, split=split)


def test_missing_split_lists_present_ones(tmp_path: Path) -> None:
    path = write_json(tmp_path / "sft.json", {"train": [{"prompt": "a", "response": "b"}], "test": []})
    with fails(path, "split 'val' not found; the file has splits ['train', 'test']"):
        read_examples(path, split="val")


def test_split_of_a_file_without_splits(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "response": "b"}])
    with fails(path, "split 'test' requested, but this file has no splits (only 'train')"):
        read_examples(path, split="test")


@pytest.mark.parametrize(
    ("messages", "detail"),
    [
        ([], "line 1: key 'messages': expected a non-empty list of"),
        (
            "hi",
            "line 1: key 'messages': expected a non-empty list of {'role': ..., 'content': ...} messages, found str",
        ),
        (
            [{"role": "assistant", "content": "x"}],
            "line 1: key 'messages': expected at least one 'user' message",
        ),
        (CHAT[:2], "line 1: key 'messages': the last message must have role 'assistant', found 'user'"),
        (
            [{"role": "bot", "content": "x"}],
            "line 1, messages[0]: key 'role': expected one of ['system', 'user',",
        ),
        ([{"role": "user"}], "line 1, messages[0]: missing key 'content'; the record has keys ['role']"),
        (
            [{"role": "user", "content": 3}],
            "line 1, messages[0]: key 'content': expected a string, found int 3",
        ),
    ],
)
def test_bad_chat(tmp_path: Path, messages: Any, detail: str) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    with fails(path, detail):
        read_examples(path)


def test_chat_record_missing_messages(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}, {"prompt": "a"}])
    with fails(path, "line 2: missing key 'messages'; the record has keys ['prompt']"):
        read_examples(path)


# --- documents -----------------------------------------------------------------------------------------


def test_read_documents_file_and_folder(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.md").write_text("# zed\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("alpha\n", encoding="utf-8")
    (tmp_path / "c.TXT").write_text("gamma", encoding="utf-8")
    (tmp_path / "skip.json").write_text("{}", encoding="utf-8")
    assert read_documents(tmp_path) == ["alpha\n", "# zed\n", "gamma"]
    assert read_documents(tmp_path / "a.txt") == ["alpha\n"]


def test_read_documents_errors(tmp_path: Path) -> None:
    with fails(tmp_path / "missing", "file not found"):
        read_documents(tmp_path / "missing")
    (tmp_path / "only.json").write_text("{}", encoding="utf-8")
    with fails(tmp_path, "no .txt or .md files in this folder or below it"):
        read_documents(tmp_path)
    (tmp_path / "blank.txt").write_text(" \n\t", encoding="utf-8")
    with fails(tmp_path / "blank.txt", "empty text file"):
        read_documents(tmp_path)
    (tmp_path / "blank.txt").write_bytes(b"ok\nok\n\xff")
    with fails(tmp_path / "blank.txt", "not valid UTF-8 at byte 6 (line 3)"):
        read_documents(tmp_path)


def test_available_splits_errors(tmp_path: Path) -> None:
    with fails(tmp_path / "x.csv", "file not found"):
        available_splits(tmp_path / "x.csv")
    with fails(tmp_path / "x.yaml", "unsupported file type '.yaml'"):
        available_splits(tmp_path / "x.yaml")


# --- property ------------------------------------------------------------------------------------------

TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20
).filter(lambda s: s == s.strip() and not s.endswith(END_MARKER))
PAIRS = st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(pairs=PAIRS, fmt=st.sampled_from(["jsonl", "csv"]))
def test_pairs_round_trip(
    tmp_path_factory: pytest.TempPathFactory, pairs: list[tuple[str, str]], fmt: str
) -> None:
    path = tmp_path_factory.mktemp("prop") / f"data.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, [{"prompt": p, "response": r} for p, r in pairs])
    else:
        write_csv(path, [["prompt", "response"], *pairs])
    assert read_examples(path) == [Example(p, r) for p, r in pairs]


def test_describe_truncates_long_values(tmp_path: Path) -> None:
    path = write_json(tmp_path / "list.json", [{"prompt": "a", "response": list(string.ascii_letters)}])
    with fails(path, "expected a string, found list ['a', 'b', "):
        read_examples(path)
    with pytest.raises(DataError, match=r"\.\.\.$"):
        read_examples(path)

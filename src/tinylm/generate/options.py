"""The one list of generation options: `GenerationOptions`, each field with its default, its rule and the
help of its flag, and `problems()`, which finds every option of the wrong type or out of its range at once.

The other places that take these options are built from this list, and a test holds them to it field by
field (tests/unit/generate/test_options.py): the sampler's `SamplingParams` (`tinylm.generate.sampling`),
the flags of `tinylm generate`, `chat` and `rag ask` (`tinylm.cli`), the server's request fields under
OpenAI's names (`tinylm.serve.schemas`) and the defaults a checkpoint stores (`tinylm.config`). A new option
is one field here plus its implementation.

This module only describes options: it knows nothing about models, tokens or text, and it imports nothing of
tinylm's but its errors (and pydantic, for the schemas built from it), so that the config, a floor below
generation, can build its section from it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic.fields import FieldInfo

from tinylm.errors import TinylmError

MAX_BEAMS = 64
Check = Callable[[Any], str | None]  # what is wrong with a value, or None


@dataclass(frozen=True)
class Rule:
    """The range of a number option, in pydantic's words (ge: >=, gt: >, le: <=), and what its ends mean."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    note: str = ""
    """Shown after the range, e.g. "0 means greedy"."""

    def admits(self, value: float) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
        )

    def describe(self, whole: bool) -> str:
        """The range in words: ">= 1", "> 0", "a value in 1..64" (whole numbers), "a value in (0, 1]"."""
        low = self.ge if self.ge is not None else self.gt
        if self.le is None:
            text = f">= {low}" if self.ge is not None else f"> {low}"
        elif whole:
            text = f"a value in {low}..{_shown(self.le)}"
        else:
            text = f"a value in {'[' if self.ge is not None else '('}{low}, {self.le}]"
        return f"{text} ({self.note})" if self.note else text

    def bounds(self) -> dict[str, float]:
        """The bounds that are set, as pydantic's `Field` takes them."""
        return {name: value for name in ("ge", "gt", "le") if (value := getattr(self, name)) is not None}


def option(default: Any, rule: Rule = Rule(), *, help: str | None = None, check: Check | None = None) -> Any:
    """A field of `GenerationOptions`: its default, its range (or `check`, for a rule a range cannot say:
    it returns what is wrong with a value, or None) and the help of its CLI flag (None: the flag has none)."""
    meta = {"rule": rule, "help": help, "check": check}
    if isinstance(default, list):
        return field(default_factory=default.copy, metadata=meta)
    return field(default=default, metadata=meta)


def _stop_strings(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        return f"expected a list of strings, found {value!r}"
    if not all(value):
        return "an empty stop string would end every reply at once"
    return None


def _token_ids(value: Any) -> str | None:
    if not isinstance(value, list) or not all(_is_int(i) and i >= 0 for i in value):
        return f"expected a list of token ids >= 0, found {value!r}"
    return None


@dataclass
class GenerationOptions:
    """Every decoding option, with the defaults used when neither the call nor the checkpoint sets one."""

    max_new_tokens: int = option(64, Rule(ge=1))
    temperature: float = option(0.0, Rule(ge=0, note="0 means greedy"), help="0 (the default) is greedy")
    top_k: int | None = option(None, Rule(ge=1))
    top_p: float | None = option(None, Rule(gt=0, le=1))
    min_p: float | None = option(None, Rule(ge=0, le=1))
    repetition_penalty: float = option(1.0, Rule(gt=0, note="1.0 means off"))
    """CTRL / transformers: the logits of tokens seen are divided by it if > 0, multiplied if < 0."""
    frequency_penalty: float = option(0.0)
    """OpenAI: logit -= frequency_penalty * the token's count in the generated tokens."""
    presence_penalty: float = option(0.0)
    """OpenAI: logit -= presence_penalty * (count > 0)."""
    no_repeat_ngram_size: int = option(0, Rule(ge=0, note="0 means off"))
    num_beams: int = option(1, Rule(ge=1, le=MAX_BEAMS))
    length_penalty: float = option(1.0)
    early_stopping: bool = option(False)
    """Not type-checked: beam search also takes transformers' "never"."""
    stop: list[str] = option(  # noqa: RUF009 (a field with a default factory, as dataclasses.field makes)
        [], check=_stop_strings, help="stop strings (default: the checkpoint's)"
    )
    stop_token_ids: list[int] | None = option(None, check=_token_ids)  # noqa: RUF009 (as for stop)
    seed: int | None = option(None, Rule(ge=0, le=2**64 - 1, note="64 bits"))
    logprobs: bool = option(False)
    max_prompt_tokens: int | None = option(None, Rule(ge=1))
    """Keep only the last N tokens of a longer prompt."""

    def problems(self) -> list[str]:
        """Every option of the wrong type or out of its range, each naming the option and its value."""
        return [p for o in OPTIONS.values() if (p := o.problem(getattr(self, o.name))) is not None]

    def check(self) -> None:
        """Raise TinylmError listing every problem, if there is one."""
        problems = self.problems()
        if problems:
            raise TinylmError("invalid generation options: " + "; ".join(problems))


@dataclass(frozen=True)
class Option:
    """One field of `GenerationOptions` as the places built from it read it: `OPTIONS[name]`."""

    name: str
    hint: Any
    """Its type: int, float | None, list[str], ..."""
    default: Any
    rule: Rule
    help: str | None
    check: Check | None

    @property
    def optional(self) -> bool:
        """None is one of its values (the option is off, or left to whoever reads it)."""
        return type(None) in _members(self.hint)

    @property
    def many(self) -> bool:
        """It is a list of `kind`."""
        return typing.get_origin(self._base) is list

    @property
    def kind(self) -> type:
        """int, float, bool or str: the type of the option, or of its items for a list."""
        return typing.get_args(self._base)[0] if self.many else self._base

    @property
    def _base(self) -> Any:
        return next(m for m in _members(self.hint) if m is not type(None))

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` for this option, naming the option and the value; None if nothing."""
        if value is None and self.optional:
            return None
        if self.check is not None:
            wrong = self.check(value)
        elif self.kind is bool:
            return None
        elif self.kind is int and not _is_int(value):
            wrong = f"expected a whole number, found {value!r}"
        elif self.kind is float and not _is_finite(value):
            wrong = f"expected a finite number, found {value!r}"
        elif not self.rule.admits(value):
            none = " or None" if self.optional else ""
            wrong = f"expected {self.rule.describe(self.kind is int)}{none}, found {value!r}"
        else:
            return None
        return None if wrong is None else f"{self.name}: {wrong}"


def _options() -> dict[str, Option]:
    hints = typing.get_type_hints(GenerationOptions)
    return {
        f.name: Option(
            f.name,
            hints[f.name],
            f.default_factory() if f.default is dataclasses.MISSING else f.default,
            **f.metadata,
        )
        for f in dataclasses.fields(GenerationOptions)
    }


OPTIONS: dict[str, Option] = _options()
"""Every option by name, in the order of `GenerationOptions`."""

_OWN = object()  # pydantic_field's default: the option's own


def pydantic_field(name: str, *, default: Any = _OWN, **bounds: float) -> tuple[Any, FieldInfo]:
    """(type, Field) of option `name` for a pydantic model (`create_model`): its range, with `bounds`
    replacing the bounds of the same name (le=2 for OpenAI's temperature), and its `check` as a validator.
    `default` replaces the option's own; None then also means unset."""
    o = OPTIONS[name]
    hint = o.hint | None if default is None else o.hint
    if o.check is not None:
        hint = Annotated[hint, AfterValidator(_validator(o.check))]
    value = o.default if default is _OWN else default
    return hint, Field(value, **{**o.rule.bounds(), **bounds})


def _validator(check: Check) -> Callable[[Any], Any]:
    def validate(value: Any) -> Any:
        wrong = None if value is None else check(value)
        if wrong is not None:
            raise ValueError(wrong)
        return value

    return validate


def _members(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _shown(bound: float) -> str:
    """A bound as a person reads it: 2**64-1 rather than its twenty digits."""
    if isinstance(bound, int) and bound > 2**32 and (bound + 1) & bound == 0:
        return f"2**{bound.bit_length()}-1"
    return str(bound)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

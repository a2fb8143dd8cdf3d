"""Ban regexes with a time budget: a user's pattern cannot hold the event loop.

A ban entry bans a tag when it is a substring of the tag or when `re.match(entry, tag)` matches
(service/tipo/postprocess.py `BanList`). The stdlib `re` cannot be interrupted, so `(a|a)*$` against
28 `a`s and a `b` runs for half a minute (doubling per character) on the event loop. Here:

* an entry is still checked with `re.compile` first, so the accepted syntax and the error messages
  are the reference's (regex-only syntax such as `\\p{L}` stays a 422);
* an entry without regex syntax (`sky`, `hatsune miku \\(vocaloid\\)`) is matched as the literal it
  is, `tag.startswith(literal)`, which is what `re.match` does with it (no regex engine at all);
* any other entry runs on the PyPI `regex` engine (V0 mode, `re`-compatible) with `timeout=` set to
  what is left of the request's budget; `RegexBudget` is that budget: the total seconds all ban
  matching of one request may take, across all of its model calls. Running out raises
  `BanPatternTimeout`, an `InvalidBanTag` (422, param `ban_tags`), naming the entry;
* a pattern whose counted repeats multiply out past `MAX_EXPANDED_SIZE` is refused before it is
  compiled: `regex` unrolls minimum repeat counts at compile time (`a{4294967294}` never returns,
  `(?:a{1000}){1000}` takes 0.5 s) and compiling cannot be interrupted.

Known differences of `regex` from `re` in patterns both accept (rare in tags): `\\w`, `\\b` count
combining marks and ZWJ/ZWNJ as word characters (re: only str.isalnum() and "_"); `\\s` does not
match \\x1c-\\x1f (control characters are removed from user text anyway). A `{` that `re` reads as a
literal (`a{e<=1}`) is escaped before `regex` sees it, so `regex`'s fuzzy-matching syntax is never on.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable

import regex

from service.tipo.errors import InputError
from service.tipo.postprocess import BanPatternTimeout, InvalidBanTag
from service.tipo.profile import get_profile
from service.tipo.request import TipoRequest
from service.tipo.syntax import read_tags

try:  # the stdlib's own regex parser: what re.compile reads an entry as
    from re import _parser as _sre_parse  # Python 3.11+
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre_parse  # type: ignore[no-redef]

# Largest "expanded size" of an entry: pattern items with every repeat's minimum count multiplied out
# (a{100} = 100, (?:ab{2}){50} = 150). 10,000 compiles in ~3 ms with `regex`.
MAX_EXPANDED_SIZE = 10_000
# Match results remembered per pattern and request (the user's tags come back in every model call).
RESULT_CACHE_SIZE = 4096

# Characters that make an entry a regex; an escaped ASCII non-alphanumeric (`\(`, `\.`) is a literal.
_LITERAL = re.compile(r"(?:[^\\.^$*+?{}\[\]|()]|\\[^A-Za-z0-9])*")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
# A `{` that starts a counted repeat for re (sre_parse: digits, optional comma and digits, `}`).
_REPEAT = re.compile(r"\{\d*(?:,\d*)?\}")


def literal_of(entry: str) -> str | None:
    """The text an entry without regex syntax matches (its escapes resolved), else None."""
    if _LITERAL.fullmatch(entry) is None:
        return None
    return _ESCAPE.sub(r"\1", entry)


def expanded_size(entry: str) -> int:
    """Pattern items with repeats' minimum counts multiplied out (re's parse of the entry)."""
    return _size(_sre_parse.parse(entry))


def _expanded_size_or_refuse(entry: str) -> int:
    try:
        return expanded_size(entry)
    except RecursionError:
        raise InvalidBanTag(entry, "groups nested too deeply") from None


def _size(items) -> int:
    total = 0
    for op, av in items:
        if op in (_sre_parse.MAX_REPEAT, _sre_parse.MIN_REPEAT) or op is getattr(_sre_parse, "POSSESSIVE_REPEAT", None):
            low, _high, sub = av
            total += max(low, 1) * _size(sub)
        elif op is _sre_parse.SUBPATTERN:
            total += 1 + _size(av[-1])
        elif op is _sre_parse.BRANCH:
            total += 1 + sum(_size(branch) for branch in av[1])
        elif op in (_sre_parse.ASSERT, _sre_parse.ASSERT_NOT):
            total += 1 + _size(av[1])
        elif op is getattr(_sre_parse, "ATOMIC_GROUP", None):
            total += 1 + _size(av)
        elif op is _sre_parse.GROUPREF_EXISTS:
            total += 1 + sum(_size(branch) for branch in av[1:] if branch is not None)
        else:
            total += 1
        if total > MAX_EXPANDED_SIZE:
            break
    return total


def for_regex_module(entry: str) -> str:
    """The entry with every `{` that re reads as a literal escaped, so `regex` reads it the same way
    (`regex` would take `(?:ab){e<=1}` as fuzzy matching, `x{e}` as an error). `\\N{...}` is kept."""
    out = []
    i, n = 0, len(entry)
    in_class = False
    while i < n:
        char = entry[i]
        if char == "\\":
            if entry.startswith("N{", i + 1) and not in_class:
                end = entry.find("}", i)
                end = n - 1 if end < 0 else end
                out.append(entry[i:end + 1])
                i = end + 1
                continue
            out.append(entry[i:i + 2])
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            out.append(char)
            i += 1
            # A `]` right after `[` or `[^` is a literal inside the class.
            if i < n and entry[i] == "^":
                out.append("^")
                i += 1
            if i < n and entry[i] == "]":
                out.append("]")
                i += 1
            continue
        elif char == "{" and not _REPEAT.match(entry, i):
            out.append("\\{")
            i += 1
            continue
        out.append(char)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _regex_compile(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)  # V0 (the default): re-compatible


class LiteralPattern:
    """An entry without regex syntax: re.match(entry, tag) is tag.startswith(the literal)."""

    __slots__ = ("entry", "literal")

    def __init__(self, entry: str, literal: str):
        self.entry = entry
        self.literal = literal

    def match(self, text: str) -> bool:
        return text.startswith(self.literal)


class BudgetedPattern:
    """One regex entry on the `regex` engine, charged to the request's budget."""

    __slots__ = ("entry", "budget", "_compiled", "_results")

    def __init__(self, entry: str, compiled: regex.Pattern, budget: RegexBudget):
        self.entry = entry
        self.budget = budget
        self._compiled = compiled
        self._results: dict[str, regex.Match | None] = {}

    def match(self, text: str) -> regex.Match | None:
        """`re.match(entry, text)`, or BanPatternTimeout when the request's budget runs out."""
        results = self._results
        if text in results:
            return results[text]
        budget = self.budget
        remaining = budget.seconds - budget.spent
        if remaining <= 0:
            raise BanPatternTimeout(self.entry, budget.seconds * 1000)
        started = time.perf_counter()
        try:
            # Positional (string, pos, endpos, concurrent, partial, timeout): keywords cost 0.7 us a call.
            found = self._compiled.match(text, 0, None, None, False, remaining)
        except TimeoutError:
            budget.spent = budget.seconds
            raise BanPatternTimeout(self.entry, budget.seconds * 1000) from None
        finally:
            budget.spent += time.perf_counter() - started
        if len(results) < RESULT_CACHE_SIZE:
            results[text] = found
        return found


class RegexBudget:
    """The time all ban regexes of one request may take, compiling included.

        budget = RegexBudget(0.05)
        ban = BanList.of(entries, compile=budget.compile)   # or TipoRunner(..., compile_pattern=...)

    `preflight`: texts every regex entry is tried on as soon as it is compiled (the user's tags,
    which the ban filter sees in every model call), so a pattern that blows up on them fails the
    request before any model call; the answers are remembered for the calls.
    """

    def __init__(self, seconds: float, preflight: Iterable[str] = ()):
        self.seconds = seconds
        self.spent = 0.0
        self.preflight = tuple(dict.fromkeys(preflight))

    @property
    def remaining(self) -> float:
        return max(self.seconds - self.spent, 0.0)

    def compile(self, entry: str) -> LiteralPattern | BudgetedPattern:
        """Compile one ban entry; raises re.error (invalid for the stdlib, as in the reference),
        InvalidBanTag (repeats too large) or BanPatternTimeout (budget spent)."""
        literal = literal_of(entry)
        if literal is not None:
            return LiteralPattern(entry, literal)
        if self.spent >= self.seconds:
            raise BanPatternTimeout(entry, self.seconds * 1000)
        started = time.perf_counter()
        try:
            re.compile(entry)  # the reference's syntax and errors (re.error -> InvalidBanTag in BanList.of)
            if "{" in entry and _expanded_size_or_refuse(entry) > MAX_EXPANDED_SIZE:
                raise InvalidBanTag(entry, f"its repeat counts multiply out to more than {MAX_EXPANDED_SIZE:,} "
                                    "items; use smaller {m,n} counts")
            try:
                compiled = _regex_compile(for_regex_module(entry))
            except (regex.error, OverflowError, MemoryError) as exc:
                raise InvalidBanTag(entry, f"not supported by the server's regex engine: {exc}") from None
        finally:
            self.spent += time.perf_counter() - started
        pattern = BudgetedPattern(entry, compiled, self)
        for text in self.preflight:
            pattern.match(text)
        return pattern


def budget_for(request: TipoRequest, budget_ms: float) -> RegexBudget:
    """A fresh budget for one request's runner, pre-flighted on its tags as the runner reads them
    (best effort: the budget still bounds whatever the model writes)."""
    pieces = [piece.strip() for piece in request.tags.split(",") if piece.strip()]
    try:
        pieces += read_tags(request.tags, get_profile(request.profile)).tags
    except InputError:  # the runner reports it
        pass
    pieces += [piece.replace("_", " ") for piece in pieces if "_" in piece]
    return RegexBudget(budget_ms / 1000, preflight=pieces)


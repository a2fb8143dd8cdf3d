"""Tag classes (docs/REFERENCE.md §2.2): which category a booru tag belongs to, and the reference's classification.

The four big lists (artists, characters, copyrights, meta tags; ~957k tags, 15 MB of text) come
from tipo-kgen's `tag-list/*.txt`; `service/tag_lists.py` reads them. The reference loads them into
Python sets (~120 MB RSS, no per-tag objects here). Each list stays one immutable `bytes` blob, one
tag a line, in file order, plus a sorted `array('Q')` of `crc32(tag) << 32 | offset of its line`
(8 bytes a tag). A lookup is one C-level bisection on the checksum, then a comparison with the line
(or lines) holding that checksum; most lookups miss and stop at the bisection. Building it sorts
integers, not strings, so it loads fast, and one index is shared by every request.
"""

from __future__ import annotations

import operator
import zlib
from array import array
from bisect import bisect_left
from itertools import accumulate, chain, compress, count, repeat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Hard-coded lists of kgen.metainfo (SPECIAL, POSSIBLE_QUALITY_TAGS, RATING_TAGS), in their order.
SPECIAL_TAGS = (
    "1girl", "2girls", "3girls", "4girls", "5girls", "6+girls", "multiple girls",
    "1boy", "2boys", "3boys", "4boys", "5boys", "6+boys", "multiple boys", "male focus",
    "1other", "2others", "3others", "4others", "5others", "6+others", "multiple others",
)  # fmt: skip
QUALITY_TAGS = (
    "masterpiece", "best quality", "great quality", "good quality", "normal quality", "low quality",
    "worse quality", "very aesthetic", "aesthetic", "displeasing", "very displeasing",
    "newest", "recent", "mid", "early", "old",
    "score_9", "score_8_up", "score_7_up", "score_6_up", "score_5_up", "score_4_up",
    "source_anime", "source_cartoon", "source_furry", "source_pony",
)  # fmt: skip
RATING_TAGS = ("safe", "general", "sfw", "sensitive", "nsfw", "explicit")

# The categories stored in tipo-kgen's tag-list/ files (`<name>.txt`).
LIST_FILE_CATEGORIES = ("copyrights", "meta", "artist", "characters")
# Lookup order and key order of `classify` (docs/REFERENCE.md §7-21: the order behind vectors.json).
CATEGORY_ORDER = LIST_FILE_CATEGORIES + ("special", "quality", "rating")
CLASSIFY_KEYS = CATEGORY_ORDER + ("general",)


def _line_index(blob: bytes) -> array:
    """Sorted `crc32(line) << 32 | start offset of the line` for every non-empty line of `blob`.

    Everything runs in C (map / accumulate over the split lines); the offset of line i is the sum
    of the lengths of the lines before it plus one newline each.
    """
    lines = blob.split(b"\n")
    starts = map(operator.add, accumulate(chain((0,), map(len, lines))), count())
    keys = map(operator.or_, map(operator.lshift, map(zlib.crc32, lines), repeat(32)), starts)
    return array("Q", sorted(compress(keys, lines)))  # blank lines (a final newline) dropped


def _blob_contains(blob: bytes, index: array, key: bytes) -> bool:
    """Whether `key` is a line of `blob`, through its `_line_index`."""
    checksum = zlib.crc32(key) << 32
    position = bisect_left(index, checksum)
    while position < len(index) and index[position] >> 32 == checksum >> 32:
        start = index[position] & 0xFFFFFFFF
        if blob.startswith(key, start) and blob[start + len(key) : start + len(key) + 1] in (b"\n", b""):
            return True
        position += 1
    return False


@dataclass(frozen=True)
class TagIndex:
    """Exact, case-sensitive membership of every tag category.

    Build it with `from_list_files` (the raw `tag-list/*.txt` bytes) or `from_tags` (small lists,
    for tests); `service.tag_lists.load_tag_index()` builds the real one.
    """

    lists: Mapping[str, bytes]  # category -> its tags, one a line (file categories)
    fixed_lists: Mapping[str, frozenset[str]]  # special / quality / rating
    line_indexes: Mapping[str, array] = field(repr=False)  # category -> `_line_index` of its blob

    @classmethod
    def from_list_files(cls, contents: Iterable[tuple[str, bytes]]) -> TagIndex:
        """`contents`: (category, file bytes) pairs, one tag per line (CRLF, LF or CR).

        An iterator lets the caller read one file at a time. Missing categories are empty.
        """
        lists = {category: b"" for category in LIST_FILE_CATEGORIES}
        for category, data in contents:
            if category not in lists:
                raise ValueError(f"unknown tag list {category!r}; expected one of {LIST_FILE_CATEGORIES}")
            lists[category] = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        line_indexes = {category: _line_index(blob) for category, blob in lists.items()}
        return cls(lists=lists, fixed_lists=_fixed_lists(), line_indexes=line_indexes)

    @classmethod
    def from_tags(cls, tags: Mapping[str, Iterable[str]]) -> TagIndex:
        """`tags`: category -> tags, for the four list-file categories (small indexes for tests)."""
        return cls.from_list_files((c, "\n".join(t).encode()) for c, t in tags.items())

    def contains(self, category: str, tag: str) -> bool:
        fixed = self.fixed_lists.get(category)
        if fixed is not None:
            return tag in fixed
        if not tag or "\n" in tag or "\r" in tag:
            return False  # never a line of a list
        return _blob_contains(self.lists[category], self.line_indexes[category], tag.encode("utf-8"))

    def category(self, tag: str) -> str | None:
        """The first category (in `CATEGORY_ORDER`) that holds `tag` exactly, or None."""
        for category in CATEGORY_ORDER:
            if self.contains(category, tag):
                return category
        return None

    def sizes(self) -> dict[str, int]:
        """Tags per category."""
        counts = {c: len(index) for c, index in self.line_indexes.items()}
        counts.update({c: len(tags) for c, tags in self.fixed_lists.items()})
        return counts


def _fixed_lists() -> dict[str, frozenset[str]]:
    return {
        "special": frozenset(SPECIAL_TAGS),
        "quality": frozenset(QUALITY_TAGS),
        "rating": frozenset(RATING_TAGS),
    }


def classify(tags: list[str], index: TagIndex) -> dict[str, list[str]]:
    """The reference's `seperate_tags`: tags by category, keys in `CLASSIFY_KEYS` order.

    Each tag is stripped (empty ones dropped). Per category, in order, the tag is tried as typed,
    then with `_` -> space; the first hit stores the form that matched. No hit: `general`, stored
    as typed when shorter than 4 characters (emoticons like `^_^`), else with `_` -> space.
    """
    result: dict[str, list[str]] = {key: [] for key in CLASSIFY_KEYS}
    for raw in tags:
        tag = raw.strip()
        if not tag:
            continue
        spaced = tag.replace("_", " ")
        for category in CATEGORY_ORDER:
            if index.contains(category, tag):
                result[category].append(tag)
                break
            if spaced != tag and index.contains(category, spaced):
                result[category].append(spaced)
                break
        else:
            result["general"].append(tag if len(tag) < 4 else spaced)
    return result

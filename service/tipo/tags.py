"""Tag classes (SPEC §2.2): which category a booru tag belongs to, and the reference's classification.

The four big lists (artists, characters, copyrights, meta tags; ~957k tags, 15 MB of text) come
from tipo-kgen's `tag-list/*.txt`; `service/tag_lists.py` reads them. The reference loads them into
Python sets (~120 MB RSS). Here each list is one sorted, newline-joined `bytes` blob searched by
bisection on byte positions: ~15 MB in memory, no per-tag objects, and the blobs are immutable, so
one index is shared by every request.

Most lookups miss (a general tag is in none of the lists; `category` tries the lists in order). Per
list, a sorted array of the CRC-32 of its tags (4 bytes a tag, ~4 MB in all) answers most misses with
one C-level bisection; only a tag whose checksum is listed pays for the blob search.
"""

from __future__ import annotations

import zlib
from array import array
from bisect import bisect_left, bisect_right
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
# Lookup order and key order of `classify` (SPEC §7-21: the order behind vectors.json).
CATEGORY_ORDER = LIST_FILE_CATEGORIES + ("special", "quality", "rating")
CLASSIFY_KEYS = CATEGORY_ORDER + ("general",)


def _sorted_blob(lines: list[bytes]) -> bytes:
    """Sort `lines` in place and join them; empty lines are dropped (they sort first)."""
    lines.sort()
    del lines[: bisect_right(lines, b"")]
    return b"\n".join(lines)


def _blob_contains(blob: bytes, key: bytes) -> bool:
    """Binary search for the line `key` in a sorted, newline-joined blob (bytes order = str order
    for UTF-8)."""
    low, high = 0, len(blob)
    while low < high:
        middle = (low + high) // 2
        start = blob.rfind(b"\n", 0, middle) + 1
        end = blob.find(b"\n", middle)
        if end == -1:
            end = len(blob)
        line = blob[start:end]
        if line == key:
            return True
        if line < key:
            low = end + 1
        else:
            high = start
    return False


def _sorted_array_contains(values: array, value: int) -> bool:
    position = bisect_left(values, value)
    return position < len(values) and values[position] == value


@dataclass(frozen=True)
class TagIndex:
    """Exact, case-sensitive membership of every tag category.

    Build it with `from_list_files` (the raw `tag-list/*.txt` bytes) or `from_tags` (small lists,
    for tests); `service.tag_lists.load_tag_index()` builds the real one.
    """

    sorted_lists: Mapping[str, bytes]  # category -> sorted newline-joined tags (file categories)
    fixed_lists: Mapping[str, frozenset[str]]  # special / quality / rating
    # category -> sorted CRC-32 of its tags (file categories): a checksum not in it means "not listed".
    checksums: Mapping[str, array] = field(default_factory=dict, repr=False)

    @classmethod
    def from_list_files(cls, contents: Iterable[tuple[str, bytes]]) -> TagIndex:
        """`contents`: (category, file bytes) pairs, one tag per line (CRLF, LF or CR).

        An iterator lets the caller read one file at a time (each file's temporary line list is
        freed before the next one is read). Missing categories are empty.
        """
        sorted_lists = {category: b"" for category in LIST_FILE_CATEGORIES}
        checksums = {category: array("I") for category in LIST_FILE_CATEGORIES}
        for category, data in contents:
            if category not in sorted_lists:
                raise ValueError(f"unknown tag list {category!r}; expected one of {LIST_FILE_CATEGORIES}")
            lines = data.splitlines()
            del data
            checksums[category] = array("I", sorted(map(zlib.crc32, lines)))
            sorted_lists[category] = _sorted_blob(lines)
        return cls(sorted_lists=sorted_lists, fixed_lists=_fixed_lists(), checksums=checksums)

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
        key = tag.encode("utf-8")
        checksums = self.checksums.get(category)
        if checksums is not None and not _sorted_array_contains(checksums, zlib.crc32(key)):
            return False  # not listed: the usual answer, without a blob search
        return _blob_contains(self.sorted_lists[category], key)

    def category(self, tag: str) -> str | None:
        """The first category (in `CATEGORY_ORDER`) that holds `tag` exactly, or None."""
        for category in CATEGORY_ORDER:
            if self.contains(category, tag):
                return category
        return None

    def sizes(self) -> dict[str, int]:
        """Tags per category."""
        counts = {c: blob.count(b"\n") + 1 if blob else 0 for c, blob in self.sorted_lists.items()}
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

"""Parse the model's text (prompt + completion) back into a tag map (docs/REFERENCE.md §4.1)."""

from __future__ import annotations

import re

from service.tipo.constants import EMPTY_TOKEN
from service.tipo.profile import Profile
from service.tipo.tags import TagIndex, classify

# A field starts at a line whose text before the first ":" has no newline; its content runs to the
# end of that line plus every following line that does not itself look like "key:".
FIELD = re.compile(r"\n([^:\n]+):(.*(?:\n(?![^:\n]+:).*)*)")

# The caption slots are stored under these names: short -> the user's text extended, long -> generated.
CAPTION_FIELDS = {"short": "extended", "long": "generated"}


def clean_model_text(text: str, profile: Profile) -> str:
    """Remove BOS/EOS and outer whitespace.

    kgen strips the *characters* <, s, >, / from both ends (the reference's str.strip("<s>") /
    str.strip("</s>")), which also eats a final "s" of the last tag and the ">" of a final <|empty|>.
    """
    if profile.charset_strip:
        return text.strip("<s>").strip("</s>").strip()
    text = text.strip()
    if text.startswith("<s>"):
        text = text[len("<s>"):]
    if text.endswith("</s>"):
        text = text[: -len("</s>")]
    return text.strip()


def split_list(content: str) -> list[str]:
    return [item.strip() for item in content.split(",") if item.strip()]


def parse_output(text: str, index: TagIndex, profile: Profile) -> dict:
    """Fields of the text in order of appearance; the first occurrence of a key wins.

    - `tag:` is split on commas, classified, and each category merged into the map (extending the
      lists of meta lines seen before); the raw list is kept under "tag".
    - `short:` / `long:` become the strings "extended" / "generated" unless empty or <|empty|>.
    - any other key becomes a comma-split list.
    """
    result: dict = {}
    for raw_key, raw_content in FIELD.findall("\n" + clean_model_text(text, profile)):
        key = raw_key.strip()
        content = raw_content.strip()
        name = CAPTION_FIELDS.get(key, key)
        if name in result:
            continue
        if key == "tag":
            tags = split_list(content)
            for category, found in classify(tags, index).items():
                found = [tag for tag in found if tag]
                if category in result:
                    if not isinstance(result[category], list):
                        result[category] = [result[category]]
                    result[category].extend(found)
                else:
                    result[category] = found
            result["tag"] = tags
        elif key in CAPTION_FIELDS:
            if content and content != EMPTY_TOKEN:
                result[name] = content
        else:
            result[name] = split_list(content)
    return result

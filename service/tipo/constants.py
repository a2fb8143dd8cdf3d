"""Fixed vocabulary of the TIPO pipeline: length targets, template keys, tokens, format presets.

All values are those of tipo-kgen 0.3.1 and the z-tipo-extension (docs/REFERENCE.md §1.2, §3.2, §3.3, §4.3).
"""

from __future__ import annotations

from typing import Literal, get_args

# --- length targets (docs/REFERENCE.md §3.2). Tags are counted as special + general; sentences by splitting on ".".
Length = Literal["very_short", "short", "long", "very_long"]
LENGTHS: tuple[str, ...] = get_args(Length)
DEFAULT_LENGTH = "long"

MIN_TAGS = {"very_short": 6, "short": 18, "long": 36, "very_long": 54}
MAX_TAGS = {"very_short": 18, "short": 36, "long": 54, "very_long": 72}
MIN_SENTENCES = {"very_short": 1, "short": 2, "long": 4, "very_long": 8}
MAX_SENTENCES = {"very_short": 2, "short": 4, "long": 8, "very_long": 10000}

# --- the prompt template (docs/REFERENCE.md §1.1)
# Meta lines are written in this order; aspect_ratio is added by the extensions, spelled with "_".
META_ORDER = ("meta", "rating", "artist", "characters", "copyrights", "quality", "aspect_ratio")

LENGTH_TOKENS = {length: f"<|{length}|>" for length in LENGTHS}
# The task modes the models were trained on (added tokens, REFERENCE.md §1.2).
TRAINED_MODES = (
    "tag_to_long",
    "long_to_tag",
    "short_to_tag",
    "short_to_long",
    "tag_to_short_to_long",
    "short_to_tag_to_long",
    "short_to_long_to_tag",
)
MODE_TOKENS = {mode: f"<|{mode}|>" for mode in TRAINED_MODES}
GEN_META_TOKEN = "<|gen_meta|>"
EMPTY_TOKEN = "<|empty|>"
SLOT_SEPARATOR = "_to_"  # "short_to_tag_to_long" -> slots short, tag, long

# --- single operations (ComfyUI "TIPO Single Operation" node, REFERENCE.md §3.3). "None" = plain tag expansion.
SingleOperation = Literal[
    "None", "long_to_tag", "short_to_tag", "short_to_tag_to_long", "tag_to_long", "tag_to_long_to_short",
    "tag_to_short", "tag_to_short_to_long",
]
SINGLE_OPERATIONS: tuple[str, ...] = get_args(SingleOperation)

# --- retry loop (docs/REFERENCE.md §3.4)
MAX_RETRIES = 10  # so at most 11 attempts per operation
MAX_SAME_OUTPUT = 5  # stop after this many consecutive attempts whose text was seen before
SEED_SPACE = 2**32  # op seeds are randint(0, 2**32), inclusive
WEBUI_SEED_MAX = 2**31 - 1

# --- sampling defaults of the reference (docs/REFERENCE.md §3.1)
KGEN_MIN_P = 0.1  # generate_with_retry's default, used when the front end passes no min_p (WebUI)

# --- format presets (docs/REFERENCE.md §4.3). Names are the reference's, plus the ComfyUI node's default widget value.
CAPTION_KEYS = ("extended", "generated")

FORMAT_PRESETS = {
    "tag only (DTG mode)": (
        "<|special|>, <|characters|>, <|copyrights|>, \n<|artist|>, \n\n<|general|>,\n\n"
        "<|quality|>, <|meta|>, <|rating|>"
    ),
    "NL only (Tag to NL)": "<|extended|>.",
    "Both, tag first (recommend)": (
        "<|special|>, <|characters|>, <|copyrights|>, \n<|artist|>, \n\n<|general|>,\n\n<|extended|>.\n\n"
        "<|quality|>, <|meta|>, <|rating|>"
    ),
    "Both, NL first (recommend)": (
        "<|special|>, <|characters|>, <|copyrights|>, \n<|artist|>, \n\n<|extended|>.\n\n<|general|>,\n\n"
        "<|quality|>, <|meta|>, <|rating|>"
    ),
    "Both + generated NL": (
        "<|special|>, <|characters|>, <|copyrights|>, \n<|artist|>, \n\n<|generated|>.\n\n<|general|>,\n\n"
        "<|extended|>.\n\n<|quality|>, <|meta|>, <|rating|>"
    ),
    "ComfyUI node default": (
        "<|special|>, \n<|characters|>, <|copyrights|>, \n<|artist|>, \n\n<|general|>,\n\n<|extended|>.\n\n"
        "<|quality|>, <|meta|>, <|rating|>"
    ),
}
DEFAULT_FORMAT_NAME = "ComfyUI node default"
DEFAULT_FORMAT = FORMAT_PRESETS[DEFAULT_FORMAT_NAME]

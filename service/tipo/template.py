"""The TIPO prompt template (SPEC §1): meta lines, a target line, then the content slots.

The result must be byte-identical to the reference's prompt builder, because the models were
trained on exactly this layout and because the service is compared with the reference byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping

from service.tipo.constants import GEN_META_TOKEN, SLOT_SEPARATOR


def slots_of(mode: str | None) -> list[str]:
    """Slot order of a mode: "short_to_tag_to_long" -> ["short", "tag", "long"]; no mode -> ["tag"]."""
    return mode.split(SLOT_SEPARATOR) if mode else ["tag"]


def target_slot(mode: str | None) -> str:
    """The slot the model is asked to produce: the last one."""
    return slots_of(mode)[-1]


def build_prompt(
    meta: Mapping[str, str | None],
    general: str,
    nl: str,
    mode: str | None,
    length: str,
    expand: bool,
    gen_meta: bool = False,
) -> str:
    """Build the text the model continues.

    meta: category -> joined tags, written in the mapping's order (see plan.meta_from_tags);
      empty or None values give no line.
    general: the special + general tags joined with ", ".
    nl: the natural-language text; it goes to the `short` slot when the mode mentions "short",
      else to the `long` slot.
    expand: True -> the prompt ends with the last written content and the model continues it;
      False -> the prompt ends with "<last slot>:" and the model fills that slot.
    """
    lines = "".join(f"{key}: {value}\n" for key, value in meta.items() if value)

    target_tokens = []
    if length:
        target_tokens.append(f"<|{length}|>")
    if mode:
        target_tokens.append(f"<|{mode}|>")
    if gen_meta:
        target_tokens.append(GEN_META_TOKEN)
    # The reference joins with spaces and trims, so a missing length leaves no leading space.
    lines += f"target: {' '.join(target_tokens).strip()}\n"

    content = {"tag": general}
    if nl:
        content["short" if mode and "short" in mode else "long"] = nl

    slots = slots_of(mode)
    for position, slot in enumerate(slots):
        value = content.get(slot, "")
        if value.strip():
            lines += f"{slot}: {value}\n"  # inserted raw, newlines inside kept
        elif position < len(slots) - 1:
            lines += f"{slot}: \n"  # an empty middle slot is still written (note the space)
    if expand:
        return lines.strip()
    return lines + f"{slots[-1]}:"

"""Fake modules.infotext_utils: quoting of infotext values, parsing an infotext back, and filling a script's
controls from it (the WebUI's paste button)."""

from __future__ import annotations

import json
import re

from modules import script_callbacks

# key: value, where a value with `,` `:` or a newline is JSON-quoted
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None) -> dict:
    """Prompt lines, `Negative prompt:` lines, then the last line of `key: value` pairs."""
    *lines, last = x.strip().split("\n")
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in PARAM.findall(last):
        result[key.strip()] = unquote(value.strip())
    script_callbacks.infotext_pasted_callback(x, result)
    return result


def paste_values(paste_fields, params):
    """{component: new value} for each (component, key or callable) whose value the infotext holds."""
    values = {}
    for component, key in paste_fields:
        value = key(params) if callable(key) else params.get(key)
        if value is None:
            continue
        kind = type(component.value)
        if kind is bool and value == "False":
            value = False
        elif kind is int:
            value = float(value)
        elif component.value is not None:
            value = kind(value)
        values[component] = value
    return values

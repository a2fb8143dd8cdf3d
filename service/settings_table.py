"""Render the README's settings table from `Settings` (run: python -m service.settings_table [--write])."""

from __future__ import annotations

import sys
from pathlib import Path

from service.settings import REPO_ROOT, Settings

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def render() -> str:
    rows = ["| env | CLI flag | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        rows.append(f"| `TIPO_{name.upper()}` | `--{name}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render()}\n{END}{tail}"


def main() -> None:
    path = Path(REPO_ROOT / "README.md")
    if "--write" in sys.argv:
        path.write_text(readme_with_table(path.read_text()))
    else:
        print(render())


if __name__ == "__main__":
    main()

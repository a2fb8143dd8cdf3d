"""Fake gradio: the components and layout blocks the extension's ui() builds, with their values and click
handlers (tests only)."""

from __future__ import annotations


class Block:
    def __init__(self, *args, **kwargs):
        self.kwargs = kwargs
        self.visible = kwargs.get("visible", True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


class Accordion(Block):
    pass


class Row(Block):
    pass


class Column(Block):
    pass


class Group(Block):
    pass


class Component(Block):
    def __init__(self, *args, value=None, label=None, **kwargs):
        super().__init__(**kwargs)
        self.value = value
        self.label = label
        self.args = args
        self.handlers = []

    def click(self, fn=None, inputs=None, outputs=None, **kwargs):
        self.handlers.append((fn, list(inputs or []), list(outputs or [])))

    def change(self, fn=None, inputs=None, outputs=None, **kwargs):
        self.handlers.append((fn, list(inputs or []), list(outputs or [])))


class Checkbox(Component):
    pass


class Textbox(Component):
    pass


class Number(Component):
    pass


class Button(Component):
    pass


class Radio(Component):
    def __init__(self, choices=None, value=None, label=None, **kwargs):
        super().__init__(value=value, label=label, **kwargs)
        self.choices = list(choices or [])


class Dropdown(Radio):
    pass


class Slider(Component):
    def __init__(self, minimum=0, maximum=100, value=None, step=None, label=None, **kwargs):
        super().__init__(value=value if value is not None else minimum, label=label, **kwargs)
        self.minimum, self.maximum, self.step = minimum, maximum, step

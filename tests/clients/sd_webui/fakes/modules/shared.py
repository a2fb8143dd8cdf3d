"""Fake modules.shared: `opts` (settings with add_option), OptionInfo and the style database."""

from __future__ import annotations


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.refresh = refresh
        self.infotext = infotext


class Options:
    def __init__(self):
        super().__setattr__("data", {})
        super().__setattr__("data_labels", {})

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __setattr__(self, key, value):
        self.data[key] = value

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)


class StyleDatabase:
    """Styles append their text to the prompt (the WebUI's `{prompt}`-less styles do)."""

    def apply_styles_to_prompt(self, prompt, styles):
        return ", ".join([prompt, *styles]) if styles else prompt


opts = Options()
prompt_styles = StyleDatabase()

"""Fake modules.scripts: the Script base class and the runner calls the extension relies on."""

from __future__ import annotations

AlwaysVisible = object()
current_basedir = ""


def basedir():
    return current_basedir


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    sorting_priority = 0

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def describe(self):
        return ""


class ScriptRunner:
    """Calls each always-on script with its slice of p.script_args, as the WebUI's runner does."""

    def __init__(self, scripts):
        self.alwayson_scripts = list(scripts)

    def before_process(self, p):
        for script in self.alwayson_scripts:
            script.before_process(p, *p.script_args[script.args_from:script.args_to])

    def process(self, p):
        for script in self.alwayson_scripts:
            script.process(p, *p.script_args[script.args_from:script.args_to])

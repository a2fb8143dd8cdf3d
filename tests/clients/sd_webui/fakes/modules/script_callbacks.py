"""Fake modules.script_callbacks: the two registrations the extension uses, and how the WebUI calls them."""

from __future__ import annotations

callbacks_ui_settings = []
callbacks_infotext_pasted = []


def on_ui_settings(callback):
    callbacks_ui_settings.append(callback)


def on_infotext_pasted(callback):
    """callback(infotext: str, params: dict): may change the parsed parameters before they fill the UI."""
    callbacks_infotext_pasted.append(callback)


def ui_settings_callback():
    for callback in callbacks_ui_settings:
        callback()


def infotext_pasted_callback(infotext, params):
    for callback in callbacks_infotext_pasted:
        callback(infotext, params)

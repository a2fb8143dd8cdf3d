"""TIPO prompt upsampling for stable-diffusion-webui and Forge, by a tipo-service server.

The options, infotext keys and timing of z-tipo-extension's script, without a model in the WebUI: every prompt of
a generation goes to the server in one /v1/tipo/batch call. The logic lives in lib_tipo_service/webui.py; this
file wires it to the WebUI (the WebUI puts this extension's folder on sys.path while it loads the script).
"""

from __future__ import annotations

import random

from modules import processing, script_callbacks, scripts, shared

from lib_tipo_service import webui
from lib_tipo_service.tipo_client import TipoServiceError

SECTION = ("tipo_service", "TIPO service")


def settings() -> webui.ServiceSettings:
    opts = shared.opts
    return webui.ServiceSettings(
        url=str(getattr(opts, "tipo_service_url", "") or ""),
        api_key=str(getattr(opts, "tipo_service_api_key", "") or ""),
        profile=str(getattr(opts, "tipo_service_profile", webui.SERVER_DEFAULT_PROFILE) or webui.SERVER_DEFAULT_PROFILE),
        timeout_s=float(getattr(opts, "tipo_service_timeout_s", 120.0) or 120.0),
        max_batch=int(getattr(opts, "tipo_service_max_batch", 64) or 64),
    )


class Script(scripts.Script):
    def __init__(self):
        super().__init__()
        self.prompt_box = None  # the tab's prompt textbox, for "Generate Prompt"
        self.size_boxes = {}
        self.last_seed = -1  # the seed of the last run (random ones drawn), for the "reuse" button

    def title(self):
        return "TIPO (service)"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def after_component(self, component, **kwargs):
        elem_id = kwargs.get("elem_id") or ""
        tab = "img2img" if self.is_img2img else "txt2img"
        if elem_id == f"{tab}_prompt":
            self.prompt_box = component
        elif elem_id in (f"{tab}_width", f"{tab}_height"):
            self.size_boxes[elem_id.rsplit("_", 1)[1]] = component

    def ui(self, is_img2img):
        import gradio as gr

        defaults = webui.Args()
        tab = "img2img" if is_img2img else "txt2img"
        controls = {}
        with gr.Accordion(open=False, label="TIPO (service)", elem_id=f"{tab}_tipo_service"):
            with gr.Row():
                controls["enabled"] = gr.Checkbox(label="Enabled", value=False)
                generate = self.generate_button = gr.Button(value="Generate Prompt",
                                                            visible=self.prompt_box is not None)
            with gr.Row(visible=not getattr(shared.opts, "tipo_no_extra_input", False)):
                controls["tag_prompt"] = gr.Textbox(label="Tag Prompt", lines=2, value="")
                controls["nl_prompt"] = gr.Textbox(label="Natural Language Prompt", lines=2, value="")
            with gr.Row():
                controls["tag_length"] = gr.Radio(webui.LENGTH_CHOICES, label="Tags Length target",
                                                  value=defaults.tag_length)
                controls["nl_length"] = gr.Radio(webui.LENGTH_CHOICES, label="NL Length target",
                                                 value=defaults.nl_length)
            controls["ban_tags"] = gr.Textbox(label="Ban tags (comma separated, regex supported)", value="")
            with gr.Row():
                controls["format_selected"] = gr.Dropdown(webui.FORMAT_CHOICES, label="Prompt Format",
                                                          value=defaults.format_selected)
                controls["format"] = gr.Textbox(label="Custom Prompt Format", lines=4, value=defaults.format)
            with gr.Row():
                controls["seed"] = gr.Number(label="Seed for upsampling tags (-1: random)", value=-1, precision=0)
                random_seed = gr.Button(value="\U0001f3b2", elem_id=f"{tab}_tipo_random_seed")
                reuse_seed = gr.Button(value="\u267b\ufe0f", elem_id=f"{tab}_tipo_reuse_seed")
                shuffle_seed = gr.Button(value="\U0001f500", elem_id=f"{tab}_tipo_shuffle_seed")
            controls["timing"] = gr.Radio(webui.TIMINGS, label="Upsampling timing", value=defaults.timing)
            controls["no_formatting"] = gr.Checkbox(label="No formatting", value=False)
            with gr.Row():
                controls["temperature"] = gr.Slider(0.1, 1.5, step=0.05, label="Temperature", value=0.5)
                controls["top_p"] = gr.Slider(0, 1, step=0.05, label="Top-p", value=0.95)
                controls["top_k"] = gr.Slider(0, 150, step=1, label="Top-k", value=80)

        random_seed.click(fn=lambda: -1, inputs=[], outputs=[controls["seed"]])
        reuse_seed.click(fn=lambda: self.last_seed, inputs=[], outputs=[controls["seed"]])
        shuffle_seed.click(fn=lambda: random.randrange(2**31 - 1), inputs=[], outputs=[controls["seed"]])
        components = [controls[name] for name in webui.Args.names()]
        if self.prompt_box is not None:
            sizes = [self.size_boxes[key] for key in ("width", "height") if key in self.size_boxes]
            generate.click(fn=self.generate_prompt, inputs=[self.prompt_box, *sizes, *components],
                           outputs=[self.prompt_box])

        self.infotext_fields = [(controls[name], make_paste(name)) for name in webui.Args.names()
                                if name != "tag_prompt"]
        self.paste_field_names = [webui.PARAMS_KEY, webui.PROMPT_KEY, webui.NL_PROMPT_KEY, webui.FORMAT_KEY]
        return components

    def generate_prompt(self, prompt, *values):
        """The "Generate Prompt" button: only fills the prompt box (seed -1: a random one)."""
        sizes, values = values[:len(values) - len(webui.Args.names())], values[-len(webui.Args.names()):]
        args = webui.Args.of(values)
        ratio = sizes[0] / sizes[1] if len(sizes) == 2 and sizes[0] and sizes[1] else 1.0
        base = args.seed if args.seed != -1 else random.randrange(webui.SEED_SPACE_AFTER)
        done = webui.upsample([prompt], [0], args, base, ratio, settings(), webui.sender(settings()))
        return done.prompts[0]

    def before_process(self, p, *values):
        args = webui.Args.of(values)
        if not args.enabled or args.timing != webui.BEFORE:
            return
        processing.fix_seed(p)
        self.last_seed = webui.run_before(p, args, settings(), webui.sender(settings())).seed

    def process(self, p, *values):
        args = webui.Args.of(values)
        if not args.enabled or args.timing != webui.AFTER:
            return
        self.last_seed = webui.run_after(p, args, settings(), webui.sender(settings())).seed


def make_paste(name):
    return lambda infotext: webui.pasted_values(infotext).get(name)


def on_ui_settings():
    options = {
        "tipo_service_url": shared.OptionInfo("", "Server URL (empty: $TIPO_SERVICE_URL, else http://127.0.0.1:8000)"),
        "tipo_service_api_key": shared.OptionInfo("", "API key (empty: $TIPO_SERVICE_API_KEY)"),
        "tipo_service_profile": shared.OptionInfo(webui.SERVER_DEFAULT_PROFILE, "Profile (kgen: z-tipo's output, its "
                                                  "bugs included; fixed: bugs fixed)", *profile_radio()),
        "tipo_service_timeout_s": shared.OptionInfo(120.0, "Timeout of one generation's call, seconds (retries on a "
                                                    "busy server included)"),
        "tipo_service_max_batch": shared.OptionInfo(64, "Most prompts per call (the server's TIPO_MAX_BATCH)"),
        "tipo_no_extra_input": shared.OptionInfo(False, "Hide the extra Tag Prompt / Natural Language Prompt inputs"),
    }
    for key, info in options.items():
        info.section = SECTION
        shared.opts.add_option(key, info)


def profile_radio():
    import gradio as gr

    return gr.Radio, {"choices": webui.PROFILES}


def on_infotext_pasted(infotext, params):
    webui.on_pasted(params)


script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_infotext_pasted(on_infotext_pasted)

__all__ = ["Script", "TipoServiceError"]

"""Fake modules.processing: the processing object, fix_seed, and process_images' order of script calls:
before_process -> seeds fixed -> prompts set up (styles: "other prompt processing") -> process -> infotexts."""

from __future__ import annotations

import random

from modules import infotext_utils, shared


def get_fixed_seed(seed):
    if seed in (None, "", -1):
        return int(random.randrange(4294967294))
    return seed


def fix_seed(p):
    p.seed = int(get_fixed_seed(p.seed))
    p.subseed = int(get_fixed_seed(p.subseed))


class StableDiffusionProcessing:
    def __init__(self, prompt="", negative_prompt="", styles=None, seed=-1, subseed=-1, width=512, height=512,
                 n_iter=1, batch_size=1, scripts=None, script_args=None, **kwargs):
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.styles = styles or []
        self.seed = seed
        self.subseed = subseed
        self.width = width
        self.height = height
        self.n_iter = n_iter
        self.batch_size = batch_size
        self.scripts = scripts
        self.script_args = tuple(script_args or ())
        self.extra_generation_params = {}
        self.all_prompts = None
        self.all_negative_prompts = None
        self.all_seeds = None
        self.all_subseeds = None
        self.main_prompt = None

    def setup_prompts(self):
        count = self.batch_size * self.n_iter
        prompts = self.prompt if isinstance(self.prompt, list) else count * [self.prompt]
        self.all_prompts = [shared.prompt_styles.apply_styles_to_prompt(x, self.styles) for x in prompts]
        self.all_negative_prompts = count * [self.negative_prompt]
        self.main_prompt = self.all_prompts[0]


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr=False, hr_prompt="", **kwargs):
        super().__init__(**kwargs)
        self.enable_hr = enable_hr
        self.hr_prompt = hr_prompt
        self.all_hr_prompts = None

    def setup_prompts(self):
        super().setup_prompts()
        if not self.enable_hr:
            return
        if self.hr_prompt == "":
            self.all_hr_prompts = list(self.all_prompts)
        else:
            self.all_hr_prompts = [shared.prompt_styles.apply_styles_to_prompt(self.hr_prompt, self.styles)
                                   for _ in self.all_prompts]


class Processed:
    def __init__(self, p, infotexts):
        self.prompt = p.all_prompts[0]
        self.all_prompts = p.all_prompts
        self.all_seeds = p.all_seeds
        self.infotexts = infotexts


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0):
    """`Prompt`, `Negative prompt:`, then `key: value` pairs; a list value of extra_generation_params holds one
    value per image."""
    index = position_in_batch + iteration * p.batch_size
    params = {"Steps": 20, "Seed": all_seeds[index], "Size": f"{p.width}x{p.height}"}
    for key, value in p.extra_generation_params.items():
        params[key] = value[index] if isinstance(value, list) else value
    text = ", ".join(f"{key}: {infotext_utils.quote(value)}" for key, value in params.items() if value is not None)
    return f"{all_prompts[index]}\nNegative prompt: {p.all_negative_prompts[index]}\n{text}"


def process_images(p) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)
    fix_seed(p)
    p.setup_prompts()
    count = len(p.all_prompts)
    p.all_seeds = [int(p.seed) + index for index in range(count)]
    p.all_subseeds = [int(p.subseed) + index for index in range(count)]
    if p.scripts is not None:
        p.scripts.process(p)
    infotexts = [create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, iteration=index // p.batch_size,
                                 position_in_batch=index % p.batch_size) for index in range(count)]
    return Processed(p, infotexts)

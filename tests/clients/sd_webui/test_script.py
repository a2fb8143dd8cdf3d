"""clients/sd-webui without the WebUI: the script loaded as the WebUI loads it, with `modules.*` and gradio replaced
by the small fakes in fakes/ (on sys.path only while a test runs), against a real service on 127.0.0.1.

* the shared WebUI vectors: the script's prompt is z-tipo's, byte for byte (profile kgen, scripted engine);
* every prompt of a generation in ONE /v1/tipo/batch call, each with the script's seed + its image seed, before or
  after the other prompt processing (styles here), hires prompts following;
* the infotext written, parsed back and pasted: the same settings and prompt, and generating again gives the same.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from service.api.tipo.protocol import TipoRequestBody
from service.tipo.runner import TipoRunner
from tests.api.tipo.test_serving import script_of
from tests.clients.conftest import CLIENTS
from tests.shared import load_vectors

EXTENSION = CLIENTS / "sd-webui"
FAKES = Path(__file__).parent / "fakes"
FAKE_ROOTS = ("modules", "gradio", "lib_tipo_service", "tipo_service_script")


@pytest.fixture
def webui():
    """The fake WebUI with the extension's script loaded: .module (the script file), .modules (the fakes)."""
    saved_path = list(sys.path)
    leftovers = [name for name in sys.modules if name.split(".")[0] in FAKE_ROOTS]
    assert not leftovers, leftovers
    sys.path.insert(0, str(FAKES))
    try:
        # The WebUI puts the extension's folder first on sys.path while it runs the script file.
        sys.path.insert(0, str(EXTENSION))
        spec = importlib.util.spec_from_file_location("tipo_service_script", EXTENSION / "scripts" / "tipo_service.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        sys.path.remove(str(EXTENSION))
        import modules.infotext_utils
        import modules.processing
        import modules.script_callbacks
        import modules.scripts
        import modules.shared

        yield SimpleNamespace(module=module, modules=modules, webui=sys.modules["lib_tipo_service.webui"])
    finally:
        sys.path[:] = saved_path
        for name in [name for name in sys.modules if name.split(".")[0] in FAKE_ROOTS]:
            del sys.modules[name]


def new_script(env, is_img2img=False):
    script = env.module.Script()
    script.is_img2img, script.is_txt2img = is_img2img, not is_img2img
    script.args_from, script.args_to = 0, len(env.webui.Args.names())
    return script


def generation(env, script, args, **p_fields):
    """A txt2img processing object running the script with `args` (a webui.Args)."""
    values = [getattr(args, name) for name in env.webui.Args.names()]
    return env.modules.processing.StableDiffusionProcessingTxt2Img(
        scripts=env.modules.scripts.ScriptRunner([script]), script_args=values, **p_fields)


def use_service(env, base_url, profile="kgen"):
    env.modules.shared.opts.tipo_service_url = base_url
    env.modules.shared.opts.tipo_service_profile = profile


def metric(base_url: str, path: str) -> float:
    """How many calls `path` answered with 200 (the service's Prometheus counter)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    line = f'tipo_requests_total{{endpoint="{path}",status="200"}} '
    return sum(float(row[len(line):]) for row in text.splitlines() if row.startswith(line))


def first_prompt(body: dict, tag_index) -> str:
    """The first model prompt the service sends for `body` (to record an answer for it)."""
    runner = TipoRunner(TipoRequestBody(**body).core_request(profile="kgen", seed=1), tag_index)
    return runner.next_call().prompt


# --- the shared vectors --------------------------------------------------------------------------------------


SIZES = {0.6842105263157895: (832, 1216), 1.0: (1024, 1024)}


@pytest.mark.parametrize("vector", load_vectors("e2e_webui"), ids=lambda v: v["id"])
def test_script_prompt_is_z_tipos(vector, webui, scripted_server):
    base_url = scripted_server(script_of(vector))
    use_service(webui, base_url)
    inputs = vector["inputs"]
    args = webui.webui.Args(
        enabled=True, nl_prompt=inputs["nl_prompt"], tag_length=inputs["tag_length"].replace("_", " "),
        nl_length=inputs["nl_length"].replace("_", " "), ban_tags=inputs["ban_tags"],
        format_selected=inputs["format_name"], seed=inputs["seed"] - 7, timing=webui.webui.AFTER,
        no_formatting=inputs["no_formatting"], temperature=inputs["temperature"], top_p=inputs["top_p"],
        top_k=inputs["top_k"])
    width, height = SIZES[inputs["aspect_ratio"]]
    p = generation(webui, new_script(webui), args, prompt=inputs["prompt"], seed=7, width=width, height=height)
    processed = webui.modules.processing.process_images(p)
    assert args.template() == inputs["format"]
    assert p.all_prompts == [vector["expected"]["result"]]
    assert processed.infotexts[0].startswith(vector["expected"]["result"])


# --- batches, timing, seeds ---------------------------------------------------------------------------------


def batch_service(scripted_server, tag_index, prompts, style="", **fields):
    """A server answering each tag prompt (with `style` appended, as the WebUI's styles do) with 40 tags named
    after it; the tag-only format needs one call per prompt."""
    entries = []
    for prompt in prompts:
        tags = f"{prompt}, {style}" if style else prompt
        body = {"frontend": "webui", "tags": tags, "aspect_ratio": 1.0, "format": "tag only (DTG mode)", "seed": 1,
                **fields}
        marker = prompt.replace(" ", "")
        entries.append({"prompt": first_prompt(body, tag_index),
                        "completion": "".join(f", {marker} tag{i}" for i in range(40))})
    return scripted_server(entries)


def tags_only_args(env, **fields):
    return env.webui.Args(**{"enabled": True, "format_selected": "tag only (DTG mode)", "seed": 100, **fields})


def test_after_timing_sends_every_prompt_of_the_batch_in_one_call(webui, scripted_server, tag_index):
    prompts = ["1girl", "1boy", "2girls", "no humans"]
    base_url = batch_service(scripted_server, tag_index, prompts, style="masterpiece")
    use_service(webui, base_url)
    script = new_script(webui)
    p = generation(webui, script, tags_only_args(webui), prompt=list(prompts), styles=["masterpiece"], seed=20,
                   width=1024, height=1024, batch_size=2, n_iter=2, enable_hr=True)
    sent = []
    original = webui.webui.upsample

    def spy(prompts, seeds, args, base_seed, *rest):
        sent.append([base_seed + seed for seed in seeds])
        return original(prompts, seeds, args, base_seed, *rest)

    webui.webui.upsample = spy
    try:
        processed = webui.modules.processing.process_images(p)
    finally:
        webui.webui.upsample = original
    assert metric(base_url, "/v1/tipo/batch") == 1 and metric(base_url, "/v1/tipo") == 0
    assert sent == [[120, 121, 122, 123]]  # the script's seed + each image's seed
    for prompt, result in zip(prompts, p.all_prompts):  # each image its own answer, TIPO after the style
        assert result.count(f"{prompt.replace(' ', '')} tag") == result.count(" tag") == 40
        assert prompt in result and "masterpiece" in result
    assert p.all_hr_prompts == p.all_prompts  # the hires prompts were the same: they follow
    assert p.main_prompt == p.all_prompts[0]
    assert script.last_seed == 100
    infotexts = [webui.modules.infotext_utils.parse_generation_parameters(text) for text in processed.infotexts]
    assert [info["Prompt"] for info in infotexts] == [f"{prompt}, masterpiece" for prompt in prompts]


def test_before_timing_upsamples_the_prompt_before_styles(webui, scripted_server, tag_index):
    base_url = batch_service(scripted_server, tag_index, ["1girl"])
    use_service(webui, base_url)
    p = generation(webui, new_script(webui), tags_only_args(webui, timing=webui.webui.BEFORE), prompt="1girl",
                   styles=["masterpiece"], seed=20, batch_size=3, width=1024, height=1024, enable_hr=True,
                   hr_prompt="1girl, different")
    webui.modules.processing.process_images(p)
    assert metric(base_url, "/v1/tipo/batch") == 1
    assert len(set(p.all_prompts)) == 1 and p.all_prompts[0].count("1girl tag") == 40
    assert p.all_prompts[0].endswith("\n, masterpiece")  # the style came after TIPO
    assert p.all_hr_prompts == ["1girl, different, masterpiece"] * 3  # a different hires prompt stays


def test_random_seeds_are_drawn_like_z_tipo(webui):
    args = tags_only_args(webui, seed=-1)
    sent = []

    def send(requests):
        sent.extend(request["seed"] for request in requests)
        return [{"prompt": "x", "model": "m", "profile": "kgen"} for _ in requests]

    p = SimpleNamespace(all_prompts=["a", "b"], all_seeds=[10, 11], extra_generation_params={}, width=1, height=1)
    done = webui.webui.run_after(p, args, webui.webui.ServiceSettings(), send, rng=random.Random(3))
    assert done.seed == random.Random(3).randrange(2**31 - 1) and sent == [done.seed + 10, done.seed + 11]
    sent.clear()
    p = SimpleNamespace(prompt="a", seed=5, extra_generation_params={}, width=1, height=1)
    done = webui.webui.run_before(p, args, webui.webui.ServiceSettings(), send, rng=random.Random(3))
    assert done.seed == random.Random(3).randrange(4294967294) and sent == [done.seed + 5]
    assert p.prompt == "x"

    settings = webui.webui.ServiceSettings(max_batch=2)  # past the server's max_batch: one call per 2 prompts
    calls = []
    p = SimpleNamespace(all_prompts=list("abcde"), all_seeds=[1] * 5, extra_generation_params={}, width=1, height=1)
    webui.webui.run_after(p, args, settings, lambda requests: calls.append(len(requests)) or send(requests))
    assert calls == [2, 2, 1]


def test_disabled_or_other_timing_does_nothing(webui):
    script = new_script(webui)
    p = generation(webui, script, webui.webui.Args(enabled=False), prompt="1girl")
    webui.modules.processing.process_images(p)  # no service configured: a call would fail
    assert p.all_prompts == ["1girl"] and p.extra_generation_params == {}


# --- infotext ----------------------------------------------------------------------------------------------


def test_infotext_is_written_parsed_back_and_reproduces(webui, scripted_server, tag_index):
    base_url = batch_service(scripted_server, tag_index, ["1girl"])
    use_service(webui, base_url)
    env = webui
    script = new_script(env)
    components = script.ui(False)
    args = tags_only_args(env, nl_prompt="", ban_tags="it's, \"quoted\"", nl_length="short", temperature=0.7,
                          top_k=40)
    p = generation(env, script, args, prompt="1girl", seed=3, width=1024, height=1024)
    processed = env.modules.processing.process_images(p)
    written = p.extra_generation_params
    assert set(written) == {"TIPO Parameters", "TIPO prompt", "TIPO format"}
    assert written["TIPO prompt"] == "1girl" and written["TIPO format"] == "tag only (DTG mode)"
    assert written["TIPO Parameters"].startswith("{'seed': 100, 'timing': ")  # JSON with ' and " swapped

    infotext = processed.infotexts[0]
    params = env.modules.infotext_utils.parse_generation_parameters(infotext)
    assert params["Prompt"] == "1girl"  # the pasted prompt is the one TIPO started from (on_infotext_pasted)
    pasted = env.modules.infotext_utils.paste_values(script.infotext_fields, params)
    by_name = dict(zip(env.webui.Args.names(), components))
    values = {name: pasted.get(component, component.value) for name, component in by_name.items()}
    # `format` holds the template used (here a preset's, whatever the custom box held)
    assert {**values, "format": None} == {**env.webui.args_dict(args), "format": None}
    assert env.webui.Args(**values).template() == args.template() and values["nl_length"] == "short"
    assert env.webui.read_params(params)["model"] == "scripted" and env.webui.read_params(params)["profile"] == "kgen"

    again = generation(env, new_script(env), env.webui.Args(**values), prompt=params["Prompt"],
                       seed=int(params["Seed"]), width=1024, height=1024)
    env.modules.processing.process_images(again)
    assert again.all_prompts == p.all_prompts


def test_an_image_without_tipo_pastes_nothing(webui):
    params = webui.modules.infotext_utils.parse_generation_parameters("a cat\nNegative prompt: \nSteps: 20, Seed: 1")
    script = new_script(webui)
    script.ui(False)
    assert webui.modules.infotext_utils.paste_values(script.infotext_fields, params) == {}
    assert params["Prompt"] == "a cat"


# --- UI, settings, errors ------------------------------------------------------------------------------------


def test_ui_controls_follow_the_arguments_and_generate_prompt_fills_the_prompt_box(webui, scripted_server, tag_index):
    import gradio

    base_url = batch_service(scripted_server, tag_index, ["1girl"])
    use_service(webui, base_url)
    script = new_script(webui)
    prompt_box = gradio.Textbox(value="1girl")
    script.after_component(prompt_box, elem_id="txt2img_prompt")
    script.after_component(gradio.Slider(value=1024), elem_id="txt2img_width")
    script.after_component(gradio.Slider(value=1024), elem_id="txt2img_height")
    script.after_component(gradio.Textbox(), elem_id="img2img_prompt")  # the other tab's: ignored
    assert script.show(False) is webui.modules.scripts.AlwaysVisible
    components = script.ui(False)
    defaults = webui.webui.Args()
    assert [component.value for component in components] == [getattr(defaults, name)
                                                            for name in webui.webui.Args.names()]
    by_label = {component.label: component for component in components}
    assert by_label["Tags Length target"].choices == ["very short", "short", "long", "very long"]
    assert by_label["Prompt Format"].choices[-1] == "custom" and by_label["Prompt Format"].value == \
        "Both, tag first (recommend)"
    assert by_label["Upsampling timing"].choices == ["Before applying other prompt processings",
                                                     "After applying other prompt processings"]
    assert by_label["Upsampling timing"].value == "After applying other prompt processings"
    assert (by_label["Temperature"].minimum, by_label["Temperature"].maximum, by_label["Temperature"].step) == \
        (0.1, 1.5, 0.05)
    assert (by_label["Top-k"].minimum, by_label["Top-k"].maximum, by_label["Top-k"].value) == (0, 150, 80)

    [(fn, inputs, outputs)] = script.generate_button.handlers
    assert outputs == [prompt_box] and inputs[0] is prompt_box
    values = [component.value for component in inputs]
    values[inputs.index(by_label["Prompt Format"])] = "tag only (DTG mode)"
    new_prompt = fn(*values)
    assert new_prompt.startswith("1girl, ") and new_prompt.count("1girl tag") == 40


def test_settings_are_registered_in_their_own_section(webui, monkeypatch):
    webui.modules.script_callbacks.ui_settings_callback()
    labels = webui.modules.shared.opts.data_labels
    assert {"tipo_service_url", "tipo_service_api_key", "tipo_service_profile", "tipo_service_timeout_s",
            "tipo_service_max_batch", "tipo_no_extra_input"} <= set(labels)
    assert all(labels[key].section == ("tipo_service", "TIPO service") for key in labels)
    monkeypatch.setenv("TIPO_SERVICE_URL", "http://tipo.example:9000")
    assert webui.module.settings().client().base_url == "http://tipo.example:9000"


def test_a_service_error_stops_the_generation_with_the_services_message(webui, scripted_server):
    base_url = scripted_server([])
    use_service(webui, base_url)
    p = generation(webui, new_script(webui), tags_only_args(webui, ban_tags="(unclosed"), prompt="1girl")
    with pytest.raises(webui.module.TipoServiceError) as caught:
        webui.modules.processing.process_images(p)
    assert caught.value.status == 422 and "ban tag '(unclosed' is not a valid regular expression" in str(caught.value)
    assert caught.value.__cause__ is None and p.all_prompts == ["1girl"]

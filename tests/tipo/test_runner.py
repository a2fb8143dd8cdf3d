import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.tipo.constants import FORMAT_PRESETS, LENGTHS, SINGLE_OPERATIONS
from service.tipo.postprocess import InvalidBanTag
from service.tipo.profile import ReferenceFailure
from service.tipo.request import TipoRequest
from service.tipo.errors import InputError
from service.tipo.runner import RunnerStateError, TipoRunner, prepare
from tests.shared import shared_tag_index

MANY_TAGS = ", ".join(f"tag {i}" for i in range(40))
STORY = " A girl stands outdoors. She smiles. The sky is clear. Petals fall. Wind blows."


def answer(prompt: str) -> str:
    """A scripted model: enough tags or sentences for the `long` targets, in one go."""
    last = prompt.rsplit("\n", 1)[-1]
    if last in ("long:", "short:"):
        return STORY
    if last == "tag:":
        return " " + MANY_TAGS
    if last.startswith("tag:"):
        return ", " + MANY_TAGS
    if last.startswith("target:"):
        return "\ntag: " + MANY_TAGS
    return STORY + "\ntag: " + MANY_TAGS


def run(runner: TipoRunner, model=answer):
    while (call := runner.next_call()) is not None:
        runner.feed(model(call.prompt))
    return runner.result()


def test_next_call_repeats_until_fed_and_order_is_enforced(tag_index):
    runner = TipoRunner(TipoRequest(seed=1234, tags="1girl, solo", profile="kgen"), tag_index)
    with pytest.raises(RunnerStateError):
        runner.result()
    first = runner.next_call()
    assert runner.next_call() is first
    runner.feed(answer(first.prompt))
    with pytest.raises(RunnerStateError):
        runner.feed("again")
    run(runner)
    assert runner.next_call() is None and runner.done


def test_seed_zero_picks_a_seed_and_reports_it(tag_index):
    runner = TipoRunner(TipoRequest(tags="1girl", seed=0), tag_index)
    assert 0 <= runner.seed <= 2**32
    replay = TipoRunner(TipoRequest(tags="1girl", seed=runner.seed), tag_index)
    first, again = run(runner), run(replay)
    assert first.seed == runner.seed
    assert [c.sampling.seed for c in first.calls] == [c.sampling.seed for c in again.calls]
    assert first.prompt == again.prompt


def test_op_seeds_come_from_the_request_seed_and_attempts_add_one(tag_index):
    rng = random.Random(7)
    op_seed = rng.randint(0, 2**32)
    runner = TipoRunner(TipoRequest(tags="1girl, solo", seed=7, profile="kgen"), tag_index)
    calls = run(runner, model=lambda prompt: "").calls  # never long enough: retries
    assert [c.sampling.seed for c in calls[:3]] == [op_seed, op_seed + 1, op_seed + 2]


def test_same_output_five_times_stops_the_operation_and_eleven_attempts_at_most(tag_index):
    runner = TipoRunner(TipoRequest(tags="1girl, solo", seed=3, profile="kgen", format="tag only (DTG mode)"), tag_index)
    result = run(runner, model=lambda prompt: "")
    assert len(result.calls) == 6  # first answer, then 5 repeats of the same text
    growing = iter(range(10_000))
    runner = TipoRunner(TipoRequest(tags="1girl, solo", seed=3, profile="kgen", format="tag only (DTG mode)"), tag_index)
    result = run(runner, model=lambda prompt: f", new{next(growing)}")
    assert len(result.calls) == 11


@pytest.mark.parametrize("profile", ["fixed", "kgen"])
def test_a_retry_that_does_not_fit_the_context_ends_the_pass_with_what_it_has(tag_index, profile):
    request = TipoRequest(seed=1234, tags="1girl", nl_prompt="", tag_length="long", format="<|general|>", profile=profile)
    runner = TipoRunner(request, tag_index)
    with pytest.raises(RunnerStateError):  # the first call holds only the user's input
        runner.next_call()
        runner.context_full()
    runner.feed(", solo, smile")  # too few tags for `long`: a retry follows
    retry = runner.next_call()
    assert retry is not None and "solo" in retry.prompt
    runner.context_full()  # the engine cannot take the retry
    assert runner.next_call() is None and runner.context_ends == 1
    result = runner.result()
    assert result.tags["special"] == ["1girl"] and sorted(result.tags["general"]) == ["smile", "solo"]
    assert len(result.calls) == 1


def test_runners_are_independent_and_leave_the_global_random_alone(tag_index):
    random.seed(123)
    expected_global = random.random()
    random.seed(123)
    alone = run(TipoRunner(TipoRequest(tags="1girl, solo", seed=9), tag_index))
    a = TipoRunner(TipoRequest(tags="1girl, solo", seed=9), tag_index)
    b = TipoRunner(TipoRequest(tags="2girls", seed=10), tag_index)
    while not (a.done and b.done):
        for runner in (a, b):
            if (call := runner.next_call()) is not None:
                runner.feed(answer(call.prompt))
    assert a.result().prompt == alone.prompt
    assert random.random() == expected_global


def test_sampling_settings_follow_the_request(tag_index):
    request = TipoRequest(seed=1234, tags="1girl", temperature=0.8, top_p=0.9, top_k=40, min_p=0.2, max_new_tokens=300)
    sampling = TipoRunner(request, tag_index).next_call().sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p, sampling.max_new_tokens) == (
        0.8, 0.9, 40, 0.2, 300)
    webui = TipoRunner(TipoRequest(seed=1234, tags="1girl", min_p=0.2, frontend="webui"), tag_index)
    assert webui.next_call().sampling.min_p == 0.1  # the WebUI passes no min_p: kgen's default


def test_webui_seed_is_taken_modulo_2_31_minus_1(tag_index):
    assert TipoRunner(TipoRequest(seed=2**31 + 5, frontend="webui"), tag_index).seed == 6
    assert TipoRunner(TipoRequest(seed=-5, profile="kgen"), tag_index).seed == -5  # random.seed(-5) == seed(5)


@pytest.mark.parametrize("profile", ["kgen", "fixed"])
def test_invalid_ban_regex_fails_before_any_model_call(profile, tag_index):
    with pytest.raises(InvalidBanTag, match="bad\\["):
        TipoRunner(TipoRequest(seed=1234, tags="1girl", ban_tags=("sky", "bad["), profile=profile), tag_index)


def test_ban_text_box_string_is_split_like_the_front_ends(tag_index):
    assert prepare(TipoRequest(ban_tags=" sky, ,.*hair "), tag_index).ban.entries == ("sky", ".*hair")
    assert prepare(TipoRequest(ban_tags=(" sky", "")), tag_index).ban.entries == ("sky",)


@pytest.mark.parametrize("field, value", [("tag_length", "medium"), ("nl_length", "huge"), ("operation", "x"),
                                          ("profile", "other"), ("height", 0)])
def test_bad_requests_are_input_errors_naming_the_field(field, value, tag_index):
    with pytest.raises(InputError) as caught:
        TipoRunner(TipoRequest(tags="1girl", **{field: value}), tag_index)
    assert caught.value.field == field


def test_dots_only_nl_fails_like_the_reference_in_kgen_and_works_in_fixed(tag_index):
    request = TipoRequest(seed=1234, nl_prompt="...", profile="kgen")
    runner = TipoRunner(request, tag_index)
    with pytest.raises(ReferenceFailure, match="IndexError"):
        run(runner)
    result = run(TipoRunner(TipoRequest(seed=1234, nl_prompt="...", profile="fixed"), tag_index))
    assert result.captions["extended"].startswith("A girl stands outdoors")


def test_single_short_operation_without_nl(tag_index):
    request = dict(tags="1girl, solo", operation="tag_to_short_to_long")
    with pytest.raises(ReferenceFailure):
        run(TipoRunner(TipoRequest(seed=1234, **request, profile="kgen"), tag_index))
    result = run(TipoRunner(TipoRequest(seed=1234, **request, profile="fixed"), tag_index))
    assert result.full_map is not None and result.addon_map["user_tags"] == "1girl, solo"


def test_blank_nl_counts_as_given_only_in_kgen(tag_index):
    kgen = run(TipoRunner(TipoRequest(seed=1234, tags="1girl, solo", nl_prompt="  ", profile="kgen"), tag_index))
    fixed = run(TipoRunner(TipoRequest(seed=1234, tags="1girl, solo", nl_prompt="  ", profile="fixed"), tag_index))
    assert len(kgen.calls) == 1 and kgen.prompt.endswith("\n\n.")  # no caption pass, a lone "."
    assert len(fixed.calls) == 2 and fixed.captions["generated"].startswith("A girl")


def test_fill_mode_caption_retries(tag_index):
    def short_caption(prompt):
        return " One sentence." if prompt.endswith("long:") else ", " + MANY_TAGS

    kgen = run(TipoRunner(TipoRequest(tags="1girl", seed=1, profile="kgen"), tag_index), short_caption)
    caption_calls = [c for c in kgen.calls if c.operation.mode == "tag_to_long"]
    # kgen re-sends the caption in a `long:` line and then asks `long:` again: nothing can grow.
    assert "\nlong: One sentence\nlong:" in caption_calls[1].prompt
    assert len({c.prompt for c in caption_calls[1:]}) == 1  # stops after 5 identical answers
    fixed = run(TipoRunner(TipoRequest(tags="1girl", seed=1, profile="fixed"), tag_index), short_caption)
    caption_calls = [c for c in fixed.calls if c.operation.mode == "tag_to_long"]
    assert all(c.prompt.count("long:") == 1 for c in caption_calls)  # each retry re-rolls the caption


def test_fixed_keeps_booru_qualifiers_weights_and_extra_networks(tag_index):
    request = TipoRequest(seed=1234, tags="1girl, ask_(askzy), (long_hair:1.2), <lora:detail:0.8>", profile="fixed")
    runner = TipoRunner(request, tag_index)
    assert "artist: ask (askzy)" in runner.next_call().prompt
    result = run(runner)
    assert "(long hair:1.2)" in result.prompt and result.prompt.endswith("\n<lora:detail:0.8>")
    assert result.captions["generated"].endswith(".")


def test_result_structure(tag_index):
    result = run(TipoRunner(TipoRequest(tags="1girl, hatsune miku, solo", nl_prompt="Night falls.", seed=5), tag_index))
    assert list(result.tags) == ["copyrights", "meta", "artist", "characters", "special", "quality", "rating",
                                 "general"]
    assert result.tags["characters"] == ["hatsune miku"]
    assert sorted(result.new_tags) == sorted(f"tag {i}" for i in range(40))
    # The user's sentences first, then the new ones (shuffled but the last), with a final period (fixed).
    assert result.captions["extended"].startswith("Night falls. ")
    assert result.captions["extended"].endswith(". Wind blows.")
    assert result.unformatted_user_prompt == "1girl, hatsune miku, soloNight falls."


# --- the fixed profile handles every input --------------------------------------------------------------


NOISE = list("ab s_.,:()[]<>|\\\n") + ["BREAK", "<lora:x:0.8>", "<|empty|>", "tag:", "long:", "short:", "Note:", "é"]
noisy_text = st.lists(st.sampled_from(NOISE), max_size=25).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tags=noisy_text, nl=noisy_text, operation=st.one_of(st.none(), st.sampled_from(SINGLE_OPERATIONS)),
       tag_length=st.sampled_from(LENGTHS), nl_length=st.sampled_from(LENGTHS),
       template=st.one_of(st.sampled_from(list(FORMAT_PRESETS)), noisy_text.map(lambda text: text + "<|general|>")),
       frontend=st.sampled_from(["comfy", "webui"]), data=st.data())
def test_fixed_profile_never_fails_on_odd_input_or_odd_model_text(tags, nl, operation, tag_length, nl_length,
                                                                  template, frontend, data):
    tag_index = shared_tag_index()
    if frontend == "webui":
        operation = None
    request = TipoRequest(tags=tags, nl_prompt=nl, operation=operation, tag_length=tag_length, nl_length=nl_length,
                          format=template, frontend=frontend, seed=data.draw(st.integers(0, 2**64)), profile="fixed",
                          ban_tags=("sky", ".*hair"))
    runner = TipoRunner(request, tag_index)
    while (call := runner.next_call()) is not None:
        runner.feed(data.draw(st.one_of(noisy_text, st.just(answer(call.prompt)))))
    result = runner.result()
    assert isinstance(result.prompt, str) and isinstance(result.unformatted_prompt, str)
    assert len(result.calls) <= 3 * 11

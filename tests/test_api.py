"""`from taps import Decoder`: the Python entry point, lossless like the CLI it shares its set-up with."""

import pytest
import torch

import taps
from taps.errors import TapsError
from tests.conftest import require_default_target


def test_every_kind_of_prompt_gives_plain_decodings_reply(char_target):
    speculative = taps.Decoder.around(char_target, "ngram")
    plain = taps.Decoder.around(char_target, "none")
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "repeat abc abc"}]
    ids = speculative.encode(conversation)
    assert speculative.encode("repeat abc abc", system="be brief") == ids
    for prompt in ("repeat abc abc", conversation, ids):
        want = plain.generate(prompt, max_new_tokens=24)
        got = speculative.generate(prompt, max_new_tokens=24, logprobs=1)
        assert got.tokens == want.tokens and got.text == want.text and want.text
        assert [e.token for e in got.logprobs] == got.tokens
    assert plain.label == "single none" and speculative.label == "single ngram"


def test_on_text_streams_the_reply_and_stop_cuts_it(char_target):
    decoder = taps.Decoder.around(char_target, "ngram")
    full = decoder.generate("repeat abc abc", max_new_tokens=24).text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    pieces: list[str] = []
    out = decoder.generate("repeat abc abc", max_new_tokens=24, stop=[stop], on_text=pieces.append)
    assert out.text == full[: full.find(stop)] == "".join(pieces) and out.finish_reason == "stop"


@pytest.mark.parametrize(
    ("prompt", "system", "says"),
    [
        ([], None, "the prompt is empty"),
        ([5, 6], "be brief", "needs a text prompt or a conversation"),
        ([{"role": "user"}], None, "a conversation is a list of"),
        (["hi"], None, "a conversation is a list of"),
    ],
)
def test_a_malformed_prompt_is_one_clear_error(char_target, prompt, system, says):
    with pytest.raises(TapsError, match=says):
        taps.Decoder.around(char_target, "none").generate(prompt, system=system)


def test_the_default_decoder_loads_the_default_target_and_its_drafter():
    require_default_target()
    decoder = taps.Decoder.load(dtype=torch.float32)
    assert decoder.target.name == "smollm2-135m" and "eagle2-mixed" in decoder.label
    plain = taps.Decoder.around(decoder.target, "none")
    question = "A train covers 60 km in 45 minutes. What is its speed in km/h?"
    out = decoder.generate(question, max_new_tokens=48)
    assert out.tokens == plain.generate(question, max_new_tokens=48).tokens and out.tau > 1.0

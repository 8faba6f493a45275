"""`taps generate --input FILE --output FILE`: every prompt of a file answered, in order, resumably."""

from __future__ import annotations

import json

import pytest

from taps.batch import read_prompts
from taps.cli import main
from taps.errors import TapsError
from tests.conftest import plain_reply

PROMPTS = [
    {"id": "one", "prompt": "repeat abc"},
    {"turns": ["repeat xyz", "again"]},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "repeat abc"}]},
]


def write_lines(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(tmp_path, *extra, rows=PROMPTS, out="replies.jsonl") -> list[dict]:
    src = write_lines(tmp_path / "prompts.jsonl", rows)
    argv = ["generate", "--input", src, "--output", str(tmp_path / out), "--drafters", "ngram"]
    assert main([*argv, "--max-new-tokens", "10", *extra]) == 0
    return [json.loads(line) for line in (tmp_path / out).read_text().splitlines()]


def test_every_prompt_is_answered_in_order_as_plain_decoding_answers_it(cli_target, tmp_path, capsys):
    records = run(tmp_path)
    assert [r["id"] for r in records] == ["one", "1", "2"]
    first = [{"role": "user", "content": "repeat xyz"}]
    reply = plain_reply(cli_target, first, 10)
    second = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "again"}]
    expected = [
        [plain_reply(cli_target, [{"role": "user", "content": "repeat abc"}], 10)],
        [reply, plain_reply(cli_target, second, 10)],
        [plain_reply(cli_target, PROMPTS[2]["messages"], 10)],
    ]
    assert [r["replies"] for r in records] == expected
    assert all(len(r["finish_reasons"]) == len(r["replies"]) and r["target_forwards"] > 0 for r in records)
    assert records[1]["cached_tokens"] > 0  # the second turn read only what the first did not
    assert "[batch] 3 prompts answered" in capsys.readouterr().err


def test_a_stopped_run_resumes_after_its_last_complete_line(cli_target, tmp_path, capsys):
    full = run(tmp_path, "--temperature", "1", "--seed", "5", out="full.jsonl")
    lines = (tmp_path / "full.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "part.jsonl").write_text(lines[0] + lines[1][:20])  # stopped while writing line 2
    resumed = run(tmp_path, "--temperature", "1", "--seed", "5", out="part.jsonl")
    assert (tmp_path / "part.jsonl").read_text().startswith(lines[0])
    # each turn samples from its own seed and each token at its place: the full run's replies, though
    # the tree budget may verify other trees run to run
    assert [r["replies"] for r in resumed] == [r["replies"] for r in full]
    assert "(1 were already there)" in capsys.readouterr().err
    run(tmp_path, out="part.jsonl")
    assert "already answers all 3 prompts" in capsys.readouterr().err


def test_an_output_of_other_prompts_is_refused_and_left_alone(cli_target, tmp_path, capsys):
    write_lines(tmp_path / "replies.jsonl", [{"id": "other", "replies": ["x"]}])
    before = (tmp_path / "replies.jsonl").read_text()
    src = write_lines(tmp_path / "prompts.jsonl", PROMPTS)
    assert main(["generate", "--input", src, "--output", str(tmp_path / "replies.jsonl")]) == 2
    assert 'answers id "other", not "one"' in capsys.readouterr().err
    assert (tmp_path / "replies.jsonl").read_text() == before


def test_a_prompt_that_cannot_be_answered_gets_an_error_line_and_the_run_goes_on(cli_target, tmp_path):
    context = cli_target.model.shape.max_position_embeddings
    records = run(tmp_path, rows=[{"prompt": "a" * (context + 10)}, PROMPTS[0]])
    assert "context" in records[0]["error"] and records[1]["replies"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "hi", "--input", "p.jsonl"], "not both"),
        (["generate"], "give one PROMPT"),
        (["generate", "--input", "p.jsonl"], "needs --output"),
        (["generate", "--input", "p.jsonl", "--output", "p.jsonl"], "must not be the --input"),
    ],
)
def test_bad_command_lines_are_one_line_errors(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "p.jsonl", PROMPTS)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "lines, message",
    [
        (['["a"]'], "not a JSON object"),
        (["{"], "not valid JSON"),
        (['{"id": 1}'], 'exactly one of "prompt"'),
        (['{"prompt": "a", "turns": ["b"]}'], 'exactly one of "prompt"'),
        (['{"prompt": "  "}'], "non-empty string"),
        (['{"turns": []}'], "non-empty string"),
        (['{"messages": [{"role": "robot", "content": "a"}]}'], '"messages" must be a list'),
        (['{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'], "last"),
        (['{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "y"}'], 'repeats the id "a"'),
        (["", " "], "holds no prompts"),
    ],
)
def test_bad_prompt_files_are_refused_naming_the_line(lines, message, tmp_path):
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(TapsError, match=message):
        read_prompts(tmp_path / "p.jsonl")
    with pytest.raises(TapsError, match="not found"):
        read_prompts(tmp_path / "missing.jsonl")

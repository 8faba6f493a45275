"""The command line turns user errors into one clear line and exit code 2."""

import pytest

from taps.cli import COMMANDS, build_parser, main
from tests.conftest import plain_reply


def test_every_parsed_command_runs_something():
    """The parser (cli_parser.py) and the commands (cli.py) are apart: each name the parser accepts
    has a command, and no command is unreachable."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    assert all(callable(cmd) for cmd in COMMANDS.values())


@pytest.mark.parametrize(
    "argv,message",
    [
        (["generate", "hi", "--target", "no-such-model"], "unknown target 'no-such-model'"),
        (["setup", "no-such-model"], "unknown target"),
        (["eval", "--rows", "blend=a,b", "--out", "x", "--target", "no-such-model"], "unknown target"),
        (["report", "/nonexistent/run"], "no eval records"),
        (["average", "--drafters", "a", "--out", "x"], "unknown drafter 'a'"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("taps: error:") and message in err and "\n" not in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["generate", "hi", "--pad-rows", "-1"], "argument --pad-rows: expected a whole number >= 0"),
        (["generate", "hi", "--top-k", "0"], "argument --top-k: expected a whole number >= 1, got 0"),
        (["generate", "hi", "--depth", "-3"], "argument --depth: expected a whole number >= 1"),
        (["generate", "hi", "--total-tokens", "x"], "argument --total-tokens: expected a whole number"),
        (["generate", "hi", "--temperature", "inf"], "argument --temperature: expected a finite number"),
        (["generate", "hi", "--top-p", "0"], "argument --top-p: expected a number in (0, 1]"),
        (["generate", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens"),
        (
            ["eval", "--rows", "plain", "--out", "x", "--temperatures", "0,abc"],
            "expected a number, got 'abc'",
        ),
        (["eval", "--rows", "plain", "--out", "x", "--temperatures", "0,-1"], "temperature >= 0"),
        (["eval", "--rows", "plain", "--out", "x", "--temperatures", "0,,1"], "comma-separated temperatures"),
        (["serve", "--port", "70000"], "expected a port in 0-65535"),
        (["features", "--corpus", "math", "--tokens", "0", "--out", "x"], "argument --tokens"),
        (
            ["train", "--online", "--corpus", "math", "--out", "x", "--lr", "-1"],
            "argument --lr: expected a number > 0",
        ),
        (["average", "--drafters", "a,b", "--weights", "1,x", "--out", "x"], "argument --weights"),
        (["export", "eagle2-chat", "--out", __file__], "is a file, not a folder"),
    ],
)
def test_bad_values_are_refused_as_they_are_read(argv, message, capsys):
    """Before any model loads: a `--top-k 0` used to fall back to the default silently, `--top-k -3` and a
    port out of range ended in tracebacks, `--tokens 0` wrote an empty feature folder."""
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_serve_refuses_an_address_in_use_before_loading_the_model(capsys):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--target", "no-such-model"]) == 2
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_command_line_is_read_without_importing_torch():
    """`taps --help` and a refused value answer at once: importing torch took ~2 s of each on a 2-core
    CPU, before anything needed it. A command imports what it runs."""
    import subprocess
    import sys

    code = """
import sys
from taps.cli import build_parser
for argv in (["generate", "--help"], ["generate", "hi", "--top-k", "0"]):
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pass
print("imported:", sorted(m for m in ("torch", "transformers", "safetensors") if m in sys.modules))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "expected a whole number >= 1, got 0" in run.stderr  # the refusal was reached
    assert run.stdout.strip().endswith("imported: []")


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {
        "setup",
        "generate",
        "chat",
        "features",
        "train",
        "average",
        "eval",
        "report",
        "reproduce",
    } <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
    assert "--strategy" in capsys.readouterr().out


def test_features_train_on_the_targets_own_replies_by_default():
    """Regenerated replies gave the higher tau at equal budget (docs/drafters.md): the default."""
    args = build_parser().parse_args(["features", "--corpus", "math", "--out", "x"])
    assert args.replies == "target"


def test_reproduce_rows_cover_every_combination_of_each_family():
    from taps.cli import default_rows

    rows = default_rows("smollm2-135m")
    for family in ("eagle2", "hass"):
        for strategy in ("average", "route:confidence", "route:entropy", "merged", "merged:cut"):
            assert f"{strategy}={family}-math,{family}-chat" in rows
    assert rows[:2] == ["plain", "ngram"] and default_rows("no-such-target") == ["plain", "ngram"]
    assert rows[-1] == "eagle2-mixed+lookup"  # what `taps generate` drafts with by default, beside them


def test_sampled_drafts_reach_the_tree_shape_and_bad_values_are_refused(capsys):
    from taps.cli import _tree_shape
    from taps.spec.propose import TreeShape

    parser = build_parser()
    args = parser.parse_args(["generate", "hi", "--temperature", "1", "--drafts", "sampled"])
    assert _tree_shape(args).drafts == "sampled"
    assert _tree_shape(parser.parse_args(["generate", "hi"])).drafts == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "hi", "--drafts", "random"])
    assert "invalid choice: 'random'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="drafts must be"):
        TreeShape(drafts="random")


def test_threads_default_to_torchs_count_of_cores_and_bad_counts_are_refused(capsys):
    import torch

    parser = build_parser()
    assert parser.parse_args(["generate", "hi"]).threads == torch.get_num_threads()
    assert parser.parse_args(["reproduce"]).threads == torch.get_num_threads()
    assert parser.parse_args(["eval", "--rows", "plain", "--out", "x", "--threads", "3"]).threads == 3
    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["generate", "hi", "--threads", bad])
        assert "expected a positive count or auto" in capsys.readouterr().err


def test_generate_streams_the_reply_of_a_prompt_read_from_stdin_after_a_system_message(
    cli_target, monkeypatch, capsys
):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("repeat abc"))
    argv = ["generate", "-", "--system", "be brief", "--drafters", "ngram", "--max-new-tokens", "12"]
    assert main(argv) == 0
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "repeat abc"}]
    expected = plain_reply(cli_target, messages, 12)
    captured = capsys.readouterr()
    assert expected and captured.out == expected + "\n"
    assert "[single ngram] " in captured.err


def test_chat_carries_the_conversation_and_starts_over_on_reset(cli_target, monkeypatch, capsys):
    import io

    outputs = {}
    for keep in ("1", "0"):
        monkeypatch.setattr(
            "sys.stdin", io.StringIO("repeat abc\n\nnow xyz\n/reset\nrepeat abc\n/exit\nnever read\n")
        )
        assert main(["chat", "--drafters", "ngram", "--max-new-tokens", "10", "--keep-prefix", keep]) == 0
        outputs[keep] = capsys.readouterr()

    def reply(messages: list[dict]) -> str:
        return plain_reply(cli_target, messages, 10)

    first = reply([{"role": "user", "content": "repeat abc"}])
    second = reply(
        [
            {"role": "user", "content": "repeat abc"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "now xyz"},
        ]
    )
    assert first and second != reply([{"role": "user", "content": "now xyz"}])  # the first turn matters
    for keep, captured in outputs.items():
        assert captured.out == f"{first}\n{second}\n{first}\n"
        assert captured.err.count("[single ngram] ") == 3 and "[chat] new conversation" in captured.err
        assert ("kept from the last turn" in captured.err) == (keep == "1")


def test_chat_outgrowing_the_context_says_so_and_goes_on(cli_target, monkeypatch, capsys):
    import io

    model = cli_target.model
    context = model.shape.max_position_embeddings
    monkeypatch.setattr("sys.stdin", io.StringIO("x" * context + "\nhi\n"))
    assert main(["chat", "--drafters", "none", "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert (
        "exceeds the model's context" in captured.err and "/reset starts a new conversation" in captured.err
    )
    assert captured.err.count("[single none] ") == 1 and captured.out.strip()  # "hi" was answered

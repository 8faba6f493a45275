"""The command line turns user errors into one clear line and exit code 2."""

import pytest

from taps.cli import build_parser, main


@pytest.mark.parametrize("argv,message", [
    (["generate", "hi", "--target", "no-such-model"], "unknown target 'no-such-model'"),
    (["setup", "no-such-model"], "unknown target"),
    (["eval", "--rows", "blend=a,b", "--out", "x", "--target", "no-such-model"], "unknown target"),
    (["report", "/nonexistent/run"], "no eval records"),
    (["average", "--drafters", "a", "--out", "x"], "unknown drafter 'a'"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("taps: error:") and message in err and "\n" not in err


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"setup", "generate", "features", "train", "average", "eval", "report", "reproduce"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
    assert "--strategy" in capsys.readouterr().out

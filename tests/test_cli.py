"""The command line turns user errors into one clear line and exit code 2."""

import pytest

from taps.cli import build_parser, main


@pytest.mark.parametrize(
    "argv,message",
    [
        (["generate", "hi", "--target", "no-such-model"], "unknown target 'no-such-model'"),
        (["setup", "no-such-model"], "unknown target"),
        (["eval", "--rows", "blend=a,b", "--out", "x", "--target", "no-such-model"], "unknown target"),
        (["report", "/nonexistent/run"], "no eval records"),
        (["average", "--drafters", "a", "--out", "x"], "unknown drafter 'a'"),
        (["generate", "hi", "--pad-rows", "-1"], "--pad-rows must be 0 (no padding) or a row count"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("taps: error:") and message in err and "\n" not in err


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"setup", "generate", "features", "train", "average", "eval", "report", "reproduce"} <= set(
        commands
    )
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

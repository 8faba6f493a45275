"""A tiny grid end to end: records, resume, tables, plots, and clear errors."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from taps.errors import TapsError
from taps.eval.report import agreement_table, auroc, compare_rows, summarise, timing_table, write_report
from taps.eval.runner import GridConfig, Row, load_records, parse_row, run_grid
from taps.models.checkpoint import save_drafter
from taps.models.target import TargetModel
from taps.spec.propose import TreeShape
from tests.conftest import random_drafter
from tests.training.test_training import CharTokenizer


@pytest.fixture(scope="module")
def tiny(tiny_dirs, tmp_path_factory, monkeypatch_module):
    model = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.float32)
    target = SimpleNamespace(
        model=model, tokenizer=CharTokenizer(), eos_token_ids=(1,), name="tiny", path=tiny_dirs["llama"]
    )
    shipped = tmp_path_factory.mktemp("shipped")  # plays src/taps/drafters/, with drafters for target "tiny"
    for i, name in enumerate(("d-math", "d-chat")):
        save_drafter(random_drafter(model, seed=i), shipped / "tiny" / name, model.fingerprint())
    monkeypatch_module.setattr("taps.drafters.SHIPPED_ROOT", shipped)
    return target


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_grid_records_tables_plots_and_resume(tiny, data_dir, tmp_path, capsys):
    rows = [
        "plain",
        "hf",
        "ngram",
        "d-math",
        "route:confidence=d-math,d-chat",
        "merged=d-math,d-chat",
        "average=d-math,d-chat",
    ]
    grid = GridConfig(
        rows=rows,
        benchmarks=["gsm8k", "mt_bench"],
        temperatures=[0.0, 1.0],
        prompts=2,
        max_new_tokens=12,
        data_dir=str(data_dir),
        shape=TreeShape(3, 3, 8),
    )
    run_grid(tiny, grid, tmp_path)
    records = load_records(tmp_path)
    assert len(records) == len(rows) * 2 * 2 * 2
    # each cell's progress line gives the tau of the report's tables (pooled over the cell's steps)
    cells = summarise(records)
    logged = re.findall(r"\[eval\] (.+?) \| (\S+) \| T=(\S+): tau ([0-9.]+)", capsys.readouterr().out)
    assert len(logged) == (len(rows) - 2) * 2 * 2  # every drafting row (not plain, not hf)
    for row, bench, temp, tau in logged:
        assert tau == f"{cells[(row, bench, float(temp))]['tau']:.2f}"
    by_row = {r["row"]: r for r in records if r["benchmark"] == "mt_bench"}
    assert len(by_row["d-math"]["text"]) == 2  # both MT-Bench turns were asked
    assert by_row["plain"]["tau"] == 1.0 and by_row["hf"]["tau"] is None
    assert by_row["plain"]["prefill_ms"] > 0 and by_row["hf"]["prefill_ms"] == 0  # hf: not timed apart
    assert all(
        len(s["confidence"]) == len(s["node_accepted"]) for s in by_row["merged=d-math,d-chat"]["steps"]
    )
    routed = by_row["route:confidence=d-math,d-chat"]
    assert set(routed["router_choices"]) <= {0, 1}
    for row in (
        r for r in records if r["temperature"] == 0 and "=" in r["row"] and not r["row"].startswith("average")
    ):
        assert len(row["member_accepts"]) == len(row["accept_lengths"]) > 0
        for accepted, members, step in zip(
            row["accept_lengths"], row["member_accepts"], range(len(row["accept_lengths"]))
        ):
            if row["row"].startswith(
                "route"
            ):  # the offline oracle scores the verified tree exactly as the verifier did
                assert members[row["router_choices"][step]] == accepted
            else:  # the uncut merged tree holds every member's tree
                assert accepted >= max(members)
    assert not any(r["member_accepts"] for r in records if r["temperature"] > 0)
    report = write_report(tmp_path)
    assert (
        report.count("\n| ") >= len(rows)
        and "gsm8k T=0" in report
        and "AUROC" in report
        and "router accuracy" in report
        and "prefill ms / turn" in report
        and "95% intervals" in report  # 2 prompts a cell: something to resample
    )
    agreement = report[report.index("**Replies equal") :].split("\n\n")[1]
    for row in rows[2:]:  # every drafting row gave plain's greedy replies (4 prompts a temperature)
        assert f"| {row} | 4/4 |" in agreement
    for png in ("tau.png", "speedup.png", "accept_hist.png", "confidence_vs_entropy.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    csv = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(csv) == 1 + len(rows) * 4
    assert csv[0].endswith("tau_low,tau_high,speedup_low,speedup_high")
    compared = compare_rows(records, "d-math", "ngram").splitlines()
    assert len(compared) == 4 + 4 + 1 and compared[-1].startswith("| all cells | 8 |")  # 4 cells of 2
    assert " / 1.00 |" in compare_rows(records, "d-math", "plain").splitlines()[-1]  # plain: tau 1
    with pytest.raises(TapsError, match="no row 'd-nothing'"):
        compare_rows(records, "d-nothing", "ngram")
    ngram_cell = next(line.split(",") for line in csv if line.startswith("ngram,gsm8k,0.0"))
    assert float(ngram_cell[7]) <= float(ngram_cell[3]) <= float(ngram_cell[8])  # tau within its interval
    # resume: delete one cell; only it is rerun, the others are untouched
    cells = sorted((tmp_path / "records").glob("*.jsonl"))
    kept = cells[1].stat().st_mtime_ns
    cells[0].unlink()
    run_grid(tiny, grid, tmp_path)
    assert cells[0].is_file() and cells[1].stat().st_mtime_ns == kept
    # a rerun with other cell settings must not mix its records into this run
    with pytest.raises(TapsError, match="other settings .*prompts 2 -> 1"):
        run_grid(
            tiny,
            GridConfig(
                rows=["plain"],
                benchmarks=["gsm8k"],
                temperatures=[0.0],
                prompts=1,
                max_new_tokens=12,
                data_dir=str(data_dir),
                shape=TreeShape(3, 3, 8),
            ),
            tmp_path,
        )


def test_a_bf16_cpu_run_from_before_float64_attention_does_not_resume(tmp_path):
    """Until 2026-12-05 a bf16 target attended in bf16 on a CPU: its outputs and speeds are not those
    of today's float64 attention, so such a run folder is refused; a float32 one (its attention never
    changed) resumes."""
    import json

    from taps.eval.runner import _resumable_meta

    grid = {
        "rows": ["plain"],
        "benchmarks": ["gsm8k"],
        "temperatures": [0.0],
        "prompts": 1,
        "max_new_tokens": 8,
        "seed": 0,
        "shape": {"vocabulary": "auto", "drafts": "top-k"},
    }
    now = {"target": "t", "threads": 1, "device": "cpu", "pad_rows": 0, "grid": grid}
    old = now | {"dtype": "torch.bfloat16"}
    (tmp_path / "meta.json").write_text(json.dumps(old))
    with pytest.raises(TapsError, match="attention torch.bfloat16 -> torch.float64"):
        _resumable_meta(tmp_path, now | {"dtype": "torch.bfloat16", "attention": "torch.float64"})
    (tmp_path / "meta.json").write_text(json.dumps(old | {"dtype": "torch.float32"}))
    resumed = _resumable_meta(tmp_path, now | {"dtype": "torch.float32", "attention": "torch.float32"})
    assert resumed["grid"]["rows"] == ["plain"]


def test_a_run_folder_does_not_resume_with_a_retrained_drafter(tmp_path):
    """A drafter retrained under the same name (or a shipped one updated) must not resume a run
    folder whose finished cells its old weights drafted; unchanged drafters resume, and a folder
    from before the weights were recorded is trusted."""
    import json

    from taps.eval.runner import _resumable_meta, drafter_digests

    drafter = tmp_path / "d-new"
    drafter.mkdir()
    (drafter / "config.json").write_text("{}")
    (drafter / "model.safetensors").write_bytes(b"first weights")
    rows = ["plain", f"merged={drafter},ngram", "ngram"]
    first = drafter_digests(rows, "t")
    assert list(first) == [str(drafter)]  # ngram has no weights
    shape = {"vocabulary": "auto", "drafts": "top-k"}
    grid = {"rows": rows, "benchmarks": ["gsm8k"], "temperatures": [0.0], "prompts": 1, "max_new_tokens": 8}
    grid |= {"seed": 0, "shape": shape}
    now = {"target": "t", "threads": 1, "device": "cpu", "dtype": "f", "pad_rows": 0, "attention": "f"}
    run = tmp_path / "run"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps(now | {"drafters": first, "grid": grid}))
    assert _resumable_meta(run, now | {"drafters": first, "grid": dict(grid)})["drafters"] == first
    (drafter / "model.safetensors").write_bytes(b"retrained weights")
    retrained = drafter_digests(rows, "t")
    with pytest.raises(TapsError, match=f"drafter {drafter}: other weights"):
        _resumable_meta(run, now | {"drafters": retrained, "grid": dict(grid)})
    (run / "meta.json").write_text(json.dumps(now | {"grid": grid}))  # recorded before digests
    assert _resumable_meta(run, now | {"drafters": retrained, "grid": dict(grid)})["drafters"] == retrained


def test_rows_take_turns_and_each_decoder_is_made_once(tiny, data_dir, tmp_path, monkeypatch):
    """Within a benchmark and temperature every row runs prompt by prompt in turn (speed side by side),
    and a row's decoder (its drafters, its cost curve) is made once for the whole grid."""
    import taps.eval.runner as runner

    made, calls = [], []
    real_decoder, real_run = runner.Decoder, runner.run_prompt
    monkeypatch.setattr(runner, "Decoder", lambda row, *a: made.append(row.spec) or real_decoder(row, *a))
    monkeypatch.setattr(
        runner,
        "run_prompt",
        lambda dec, prompt, cfg: calls.append(dec.row.spec) or real_run(dec, prompt, cfg),
    )
    grid = GridConfig(
        rows=["plain", "ngram"],
        benchmarks=["gsm8k", "mt_bench"],
        temperatures=[0.0, 1.0],
        prompts=2,
        max_new_tokens=4,
        data_dir=str(data_dir),
    )
    run_grid(tiny, grid, tmp_path)
    assert made == ["plain", "ngram"]
    assert calls == ["plain", "ngram"] * 8  # 2 benchmarks x 2 temperatures x 2 prompts, rows alternating


def test_routed_rows_record_their_choices_under_the_tree_budget(tiny, data_dir, tmp_path, monkeypatch):
    """`--tree auto` (eval's default) wraps the router in a budget; its choices still reach the records,
    one per drafting step, beside each member's would-be accepts."""
    import taps.spec.costs
    from taps.spec.costs import CostCurve
    from taps.spec.propose import AUTO_SHAPE

    monkeypatch.setattr(taps.spec.costs, "load_or_measure", lambda model, **kw: CostCurve((1, 64), (10, 12)))
    grid = GridConfig(
        rows=["route:confidence=d-math,d-chat"],
        benchmarks=["gsm8k"],
        temperatures=[0.0],
        prompts=2,
        max_new_tokens=12,
        data_dir=str(data_dir),
        shape=AUTO_SHAPE,
    )
    run_grid(tiny, grid, tmp_path)
    for record in load_records(tmp_path):
        assert len(record["router_choices"]) == len(record["member_accepts"]) > 0


def test_bad_names_and_corrupt_records(tiny, data_dir, tmp_path):
    with pytest.raises(TapsError, match="unknown strategy"):
        parse_row("blend=a,b")
    with pytest.raises(TapsError, match="fewer than two"):
        parse_row("merged=a")
    looked = parse_row("route:entropy=a,b+lookup")
    assert looked == Row("route:entropy=a,b+lookup", "route:entropy", ("a", "b"), lookup=True)
    for spec in ("plain+lookup", "ngram+lookup", "merged=ngram,a+lookup"):
        with pytest.raises(TapsError, match="joins learned drafters"):
            parse_row(spec)
    with pytest.raises(TapsError, match="unknown benchmark"):
        run_grid(
            tiny,
            GridConfig(rows=["plain"], benchmarks=["nope"], temperatures=[0.0], data_dir=str(data_dir)),
            tmp_path,
        )
    with pytest.raises(TapsError, match="unknown drafter"):
        run_grid(
            tiny,
            GridConfig(
                rows=["missing"], benchmarks=["gsm8k"], temperatures=[0.0], prompts=1, data_dir=str(data_dir)
            ),
            tmp_path,
        )
    # a bad row or temperature after good ones: refused before any cell runs or the folder is made
    for rows, temps, message in (
        (["plain", "d-math", "missing"], [0.0], "unknown drafter"),
        (["plain", "d-math"], [0.0, -1.0], "temperature must be"),
    ):
        fresh = tmp_path / f"fresh-{len(temps)}"
        grid = GridConfig(
            rows=rows, benchmarks=["gsm8k"], temperatures=temps, prompts=1, data_dir=str(data_dir)
        )
        with pytest.raises(TapsError, match=message):
            run_grid(tiny, grid, fresh)
        assert not fresh.exists()
    (tmp_path / "records").mkdir(exist_ok=True)
    (tmp_path / "records" / "x.jsonl").write_text('{"row": "plain"}\n{broken\n')
    with pytest.raises(TapsError, match="corrupt"):
        load_records(tmp_path)
    with pytest.raises(TapsError, match="no eval records"):
        load_records(tmp_path / "empty")


def test_auroc_on_hand_made_data():
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0])) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0])) == 0.0
    assert auroc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    # one of four positive/negative pairs is mis-ordered
    assert auroc(np.array([0.9, 0.3, 0.4, 0.1]), np.array([1, 1, 0, 0])) == 0.75


def test_the_timing_table_reads_records_from_before_prefill_was_kept():
    step = dict(target_steps=5, draft_ms=10.0, verify_ms=40.0, text=["one turn"])
    table = timing_table([dict(row="new", prefill_ms=30.0, **step), dict(row="old", **step)])
    assert "| new | 2.5 | 10.0 | 20% | 30 |" in table  # 4 steps: the prefill forward is not one
    assert "| old | 2.5 | 10.0 | 20% | – |" in table


def test_the_agreement_table_counts_prompts_whose_every_turn_is_plains():
    def rec(row, prompt, text, temperature=1.0):
        return dict(row=row, benchmark="b", prompt_id=prompt, temperature=temperature, text=text)

    records = [
        rec("plain", "p1", ["a", "b"]),
        rec("plain", "p2", ["c"]),
        rec("tree", "p1", ["a", "b"]),
        rec("tree", "p2", ["c"]),
        rec("chain", "p1", ["a", "x"]),  # the second turn parted
        rec("chain", "p2", ["c"]),
        rec("hf", "p1", ["a", "b"]),
        rec("tree", "p3", ["z"]),  # no plain reply to compare with
        rec("tree", "p1", ["q"], temperature=0.0),
    ]
    table = agreement_table(records)
    assert "| tree | 2/2 |" in table and "| chain | 1/2 |" in table and "hf" not in table  # T = 0: no plain
    assert agreement_table([rec("tree", "p1", ["a"])]) == ""

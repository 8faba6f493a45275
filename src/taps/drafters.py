"""Proposer names: what `--drafter` accepts, resolved to a Proposer for a loaded target.

A name is `ngram` (prompt lookup, no training), the name of a drafter shipped with taps for this
target (`src/taps/drafters/<target>/<name>/`), or a path to a drafter folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from taps.device import fast_dtype
from taps.errors import TapsError
from taps.models.checkpoint import check_fingerprint, load_drafter
from taps.models.drafter import Drafter
from taps.models.graphs import accelerated
from taps.models.padded import cap_tree, invariant_rows
from taps.spec.ngram import NgramProposer
from taps.spec.propose import DrafterProposer, Proposer, TreeShape

SHIPPED_ROOT = Path(__file__).parent / "drafters"


def shipped_drafters(target_name: str) -> list[str]:
    """Names of the drafters shipped for a named target, sorted."""
    folder = SHIPPED_ROOT / target_name
    return (
        sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file()) if folder.is_dir() else []
    )


# What `--drafters auto` (the default of `generate` and `serve`) picks where the target ships it: trained
# on math and chat together, it drafted well on both (with prompt lookup beside it on a Zen 4 EPYC,
# bf16: 1.77x of plain decoding on 1 thread, 1.71x on 2, the best or level with the best single
# drafter; docs/speed-cpu.md, "Prompt lookup beside a drafter").
DEFAULT_DRAFTER = "eagle2-mixed"


def resolve_drafters(names: list[str], target_name: str) -> list[str]:
    """`--drafters` as given, but `auto`: the target's shipped DEFAULT_DRAFTER where it has one, else
    prompt lookup (`ngram`, which needs no training: any target)."""
    if names != ["auto"]:
        return names
    return [DEFAULT_DRAFTER] if DEFAULT_DRAFTER in shipped_drafters(target_name) else ["ngram"]


def drafter_path(name: str, target_name: str) -> Path:
    shipped = SHIPPED_ROOT / target_name / name
    if (shipped / "config.json").is_file():
        return shipped
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    known = ", ".join(["ngram", *shipped_drafters(target_name)])
    raise TapsError(
        f"unknown drafter {name!r} for target {target_name!r}: use one of {known} or a drafter folder"
    )


def drafter_dtype(target) -> torch.dtype:
    """The dtype drafters compute in: the device's fast one, whatever the target's. Drafting never
    touches losslessness (the target verifies every token), so a float32 target on a CPU with
    native bf16 still drafts in bf16, where the 8192-row draft head runs ~3x faster."""
    return fast_dtype(target.model.device)


def make_proposer(name: str, target, shape: TreeShape = TreeShape(), source: int = 0) -> Proposer:
    """`target` is a LoadedTarget; drafters are checked against it before use."""
    if name == "ngram":
        return NgramProposer(source=source)
    drafter = load_drafter(drafter_path(name, target.name), target.model, dtype=drafter_dtype(target))
    return DrafterProposer(scoring(drafter, target, shape.vocabulary), shape, source=source, name=name)


def scoring(drafter: Drafter, target, vocabulary: str = "auto") -> Drafter:
    """The drafter scoring `vocabulary` (see `TreeShape`): auto is the target's whole vocabulary on a
    GPU (`Drafter.widen_vocabulary`: a few points of tau for one more small matmul a level there); on
    a CPU, where the head already dominates drafting, the vocabulary the drafter was trained over,
    which its tree drafter grows by the context's tokens (`taps.spec.vocabulary`)."""
    whole = vocabulary == "whole" or (vocabulary == "auto" and target.model.device.type == "cuda")
    return drafter.widen_vocabulary(target.model) if whole else drafter


LOOKUPS = ("auto", "on", "off")
LOOKUP_NAME = "+ngram"  # the suffix of a proposer's name once prompt lookup joins it


def wants_lookup(lookup: str, names: list[str], target, shape: TreeShape) -> bool:
    """Whether prompt lookup (the n-gram proposer) joins the learned drafters' tree (`--lookup`).

    The two draft different text: prompt lookup the spans a reply copies from its context (numbers,
    names, code), which a small drafter often misses, at next to no cost (0.3 ms a step against a
    30 ms target forward on a Zen 4 EPYC); the drafter everything else. Merged into one tree under
    the CPU's budget, which verifies only the nodes that pay, every learned proposer ran at 1.70-1.77x
    of plain decoding, where alone they ran at 1.35-1.57x and prompt lookup at 1.50x (bf16, 1 thread,
    16 prompts, T = 0; docs/speed-cpu.md, "Prompt lookup beside a drafter"). So `auto` turns it on
    there: a CPU under `--tree auto`. At T = 1 the gain is smaller and, for the default drafter,
    not measurable (0.971x-1.082x of it alone in three runs), never a clear loss, so `auto` does not
    look at the temperature. A fixed tree keeps the node count it was asked for, and on a GPU the
    gain is not yet measured."""
    if lookup not in LOOKUPS:
        raise TapsError(f"unknown --lookup {lookup!r}: use one of {', '.join(LOOKUPS)}")
    if "ngram" in names:  # prompt lookup drafts already
        return False
    if lookup == "auto":
        return shape.budget == "auto" and target.model.device.type == "cpu"
    return lookup == "on"


def with_lookup(proposer: Proposer, source: int, rows: int, draws: bool = False) -> Proposer:
    """`proposer`'s tree merged with prompt lookup's (its nodes marked with bit `source`); where every
    forward is padded to `rows` rows (`taps.models.padded`), cut to fit them.

    At T > 0 the merged tree is verified as deterministic drafts, so a lone drafter drafts its top-k
    tree beside the copied tokens. With `draws` (`--drafts sampled`) it draws its chain instead, a
    mixed tree (`taps.spec.combine.merge_trees`, verified copied tokens first): exact, but on a Zen 4
    EPYC (bf16, 2 threads, T = 1, 16 prompts) it ran behind the top-k tree for two of three drafters
    (docs/speed-cpu.md, "Prompt lookup beside a drafter"), so `--drafts auto` keeps top-k here."""
    from taps.spec.combine import MergedProposer

    merged = MergedProposer(
        [proposer, NgramProposer(source=source)], rows - 1 if rows > 1 else None, draws=draws
    )
    merged.name = proposer.name + LOOKUP_NAME
    return merged


def looks_up(proposer: Proposer | None) -> bool:
    """Whether `with_lookup` merged prompt lookup into this proposer (a budget keeps its name)."""
    return proposer is not None and proposer.name.endswith(LOOKUP_NAME)


def make_strategy(
    strategy: str, names: list[str], target, shape: TreeShape = TreeShape(), lookup: str = "off"
) -> Proposer | None:
    """A proposer for `--strategy` over `--drafters` (`none` alone = plain decoding), with prompt
    lookup merged in where `lookup` says so (`wants_lookup`).

    single: exactly one drafter. average: one drafter with the members' mean weights.
    route:confidence / route:entropy: verify the best member's tree.
    merged: all members' trees as one trie. merged:cut: the same, cut to `shape.total_tokens` nodes.
    With `shape.budget == "auto"` the proposer runs under a TreeBudget for this target and machine,
    except on a GPU where a fixed tree verifies nearly free: there it drafts that fixed tree
    (`taps.spec.budget.flat_tree_shape` says why), each merged member a share of its nodes, so that
    the merged tree fits the rows priced flat too.
    Where the target's forwards are padded to one row count (bf16, `taps.models.padded`), trees are
    capped to fit it.
    """
    from taps.spec.budget import BudgetedProposer, TreeBudget, flat_tree_shape
    from taps.spec.costs import load_or_measure

    if names == ["none"]:
        return None
    curve = None
    if shape.budget == "auto":
        # the costs the loop will see: through the CUDA graphs on a GPU (`accelerated`), else the model's
        curve = load_or_measure(accelerated(target.model))
        flat = flat_tree_shape(curve, target.model.device)
        if flat is not None:
            share = len(names) if strategy == "merged" else 1
            shape = dataclasses.replace(
                flat,
                total_tokens=flat.total_tokens // share,
                vocabulary=shape.vocabulary,
                drafts=shape.drafts,
            )
    rows = invariant_rows(target.model)
    shape = dataclasses.replace(shape, total_tokens=cap_tree(shape.total_tokens, rows))
    proposer = _strategy(strategy, names, target, shape)
    if proposer is not None and wants_lookup(lookup, names, target, shape):
        proposer = with_lookup(proposer, len(names), rows, draws=shape.drafts == "sampled")
    if proposer is None or shape.budget == "fixed":
        return proposer
    return BudgetedProposer(proposer, TreeBudget(curve, shape.total_tokens))


def _strategy(strategy: str, names: list[str], target, shape: TreeShape) -> Proposer | None:
    from taps.spec.combine import STRATEGIES, MergedProposer, RoutedProposer

    if names == ["none"]:
        return None
    if strategy not in STRATEGIES:
        raise TapsError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if strategy == "single":
        if len(names) != 1:
            raise TapsError(
                f"strategy single takes one drafter, got {len(names)}; pick a combining --strategy"
            )
        return make_proposer(names[0], target, shape)
    if len(names) < 2:
        raise TapsError(f"strategy {strategy} combines >= 2 drafters; pass --drafters a,b[,...]")
    if strategy == "average":
        from taps.models.average import average_drafters

        paths = [drafter_path(n, target.name) for n in names]
        drafter, fingerprint = average_drafters(paths)
        check_fingerprint(fingerprint, target.model.fingerprint(), paths[0])
        drafter = (
            drafter.to(target.model.device, drafter_dtype(target))
            .requires_grad_(False)
            .eval()
            .attach(target.model)
        )
        return DrafterProposer(
            scoring(drafter, target, shape.vocabulary), shape, name="average=" + ",".join(names)
        )
    members = [make_proposer(n, target, shape, source=i) for i, n in enumerate(names)]
    if strategy.startswith("route:"):
        return RoutedProposer(members, strategy.split(":")[1])
    return MergedProposer(members, shape.total_tokens if strategy == "merged:cut" else None)

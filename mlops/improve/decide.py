"""The promotion decision after the gates: promote, wait for a person, or stop. A plain function of the
policy and the gates' verdicts, so every branch is tested without training anything.

Each `vs: champion` gate carries a paired-bootstrap interval of the difference challenger - champion on the
same held-out rows. Oriented so that positive is better (negated for lower-is-better metrics), an interval is
*better* when it lies above zero, *worse* below zero, and *uncertain* when it straddles zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# What a decision does to a challenger. The first three come from the gates and the policy; a person answers a
# waiting one with approve or reject; a failing live stage rolls it back.
Action = Literal["promote", "await_approval", "stop", "approve", "reject", "rollback"]
PROMOTE: Action = "promote"
AWAIT: Action = "await_approval"
STOP: Action = "stop"
APPROVE: Action = "approve"
REJECT: Action = "reject"
ROLLBACK: Action = "rollback"
Verdict = Literal["better", "worse", "uncertain"]


@dataclass(frozen=True)
class Decision:
    """What happens to a challenger, who or what decided it, and on which evidence (as the audit log and the
    `mlops.improve.evidence` tag record it)."""

    action: Action
    by: str  # who or what decided: engine, gates, policy:<name>, user:<name>, rollout:<stage>
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """One `vs: champion` gate's paired comparison, oriented so that `verdict` reads alike for every metric."""

    metric: str  # test/auroc
    slice: str | None
    challenger: float | None
    champion: float | None
    difference: float | None  # challenger - champion, as the metric measures it
    ci: list[float]  # its interval, as the metric measures it
    p_value: float | None
    test: str | None  # paired_bootstrap | mcnemar
    verdict: Verdict
    direction: Literal["higher", "lower"]  # which way is better


def champion_comparisons(verdicts: list[dict[str, Any]], directions: dict[str, str]) -> list[Comparison]:
    """Each `vs: champion` gate that compared two models: its metric, interval and verdict (better/worse/uncertain).

    `directions` maps a metric name (`auroc`) to `higher` or `lower`.
    """
    out = []
    for v in verdicts:
        c = v.get("comparison")
        if v.get("kind") != "champion" or not c:
            continue
        name = v["metric"].partition("/")[2]
        mcnemar = c.get("test") == "mcnemar"  # decides (and reports) accuracy whatever the gate names
        sign = 1.0 if mcnemar or directions.get(name, "higher") == "higher" else -1.0
        lo, hi = sorted((sign * c["ci"][0], sign * c["ci"][1]))
        verdict: Verdict = "better" if lo > 0 else "worse" if hi < 0 else "uncertain"
        out.append(Comparison(v["metric"], v.get("slice"), c.get("challenger"), c.get("champion"),
                              c.get("estimate"), c["ci"], c.get("p_value"), c.get("test"), verdict,
                              "higher" if sign > 0 else "lower"))
    return out


def promotion_decision(policy: str, gates_passed: bool, failures: list[str], verdicts: list[dict[str, Any]],
                       directions: dict[str, str]) -> Decision:
    """What happens to a challenger whose gates were evaluated against the champion."""
    if not gates_passed:
        return Decision(STOP, "gates", "the challenger failed its gates", {"failures": failures})
    comparisons = champion_comparisons(verdicts, directions)
    evidence = {"comparisons": [asdict(c) for c in comparisons]}  # the audit log's and the tags' plain JSON
    by = f"policy:{policy}"
    if policy == "auto":
        return Decision(PROMOTE, by, "the gates passed and the policy is auto", evidence)
    if policy == "require_approval":
        return Decision(AWAIT, by, "the gates passed; the policy requires a person's approval", evidence)
    if not comparisons:
        return Decision(AWAIT, by, "the gates passed but no `vs: champion` gate compared it with the champion: "
                        "nothing shows it is better", evidence)
    worse = [c for c in comparisons if c.verdict == "worse"]
    if worse:
        return Decision(STOP, by, "not better: " + "; ".join(_describe(c) for c in worse), evidence)
    unsure = [c for c in comparisons if c.verdict == "uncertain"]
    if unsure:
        return Decision(AWAIT, by, "uncertain: " + "; ".join(_describe(c) for c in unsure), evidence)
    return Decision(PROMOTE, by, "better: " + "; ".join(_describe(c) for c in comparisons), evidence)


def _describe(c: Comparison) -> str:
    lo, hi = c.ci
    where = f" [{c.slice}]" if c.slice else ""
    side = {"better": "above", "worse": "below", "uncertain": "across"}[c.verdict]
    return (f"{c.metric}{where} difference {c.difference:+.4g} [{lo:+.4g}, {hi:+.4g}] lies {side} zero "
            f"({c.direction} is better)")

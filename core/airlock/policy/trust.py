"""The broker's trust policy: which CI job (by its verified claims) may get which grants.

:func:`compile_trust_policy` turns a :class:`~airlock.policy.broker_config.BrokerConfig` into a
:class:`TrustPolicy` once, at load, and refuses unsafe or ambiguous rules there:

- an allow rule must bind an immutable id (GitHub ``repository_id``/``repository_owner_id``,
  GitLab ``project_id``/``namespace_id``) with exact values, unless it says ``unsafe: true``
  (then a warning is logged);
- ``sub`` (and the token's own ``iss``/``aud``/``exp``/... claims) cannot be conditions;
- every glob is anchored and its ``*`` never crosses ``/``; ``**`` is refused;
- a rule that matches a sensitive trigger (``pull_request_target``...) in ``event_name`` must also
  name it in ``allow_events``; grant and issuer names must exist.

:meth:`TrustPolicy.evaluate` denies by default. A matching deny rule wins; otherwise the allow
rule granting the most of what was asked is chosen, and the job gets the intersection of that
rule's ceiling and its request. Every denial names the rule and claim that failed: coarsely in
``reason_public`` (for the caller), precisely in ``reason_detail`` (for the broker log).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import re2

from airlock.oidc.issuers import IssuerConfig
from airlock.policy.broker_config import (
    SENSITIVE_EVENTS,
    BrokerConfig,
    GrantEntry,
    RuleEntry,
    config_problems,
    load_broker_config,
)

__all__ = [
    "IMMUTABLE_ID_CLAIMS",
    "ClaimCondition",
    "CompiledRule",
    "Decision",
    "Explanation",
    "Mismatch",
    "RuleReport",
    "TrustPolicy",
    "compile_trust_policy",
    "load_trust_policy",
    "sensitive_events",
]

log = logging.getLogger("airlock.policy")

IMMUTABLE_ID_CLAIMS: Mapping[str, tuple[str, ...]] = {
    "github": ("repository_id", "repository_owner_id"),
    "gitlab": ("project_id", "namespace_id"),
    "other": (),
}
_RESERVED_CLAIMS = {
    "sub": "`sub` cannot be a condition: its format is configurable per repository and parsing "
    "it is ambiguous; bind the immutable ids and the exact claims (ref, event_name, "
    "environment, ...) instead",
    "iss": "`iss` is checked by the issuer allowlist; choose the issuer with `issuer:`",
    "aud": "`aud` is checked against the issuer's audience; it cannot be a rule condition",
    "exp": "token timing claims cannot be rule conditions",
    "iat": "token timing claims cannot be rule conditions",
    "nbf": "token timing claims cannot be rule conditions",
    "jti": "`jti` is single-use and cannot be a rule condition",
}
_BOOLEAN_CLAIMS = ("ref_protected", "environment_protected")
_EVENT_CLAIMS = ("event_name", "pipeline_source")
_MAX_STARS = 8
_MAX_VALUE_LENGTH = 512


@dataclass(frozen=True)
class Mismatch:
    """Why one condition failed: the claim's name (public) and the precise reason (log)."""

    claim: str
    detail: str


@dataclass(frozen=True)
class ClaimCondition:
    """``claim`` must equal one of ``exact`` or fully match one of the globs."""

    claim: str
    exact: frozenset[str]
    globs: tuple[str, ...]
    _compiled: tuple[Any, ...]

    def holds(self, claims: Mapping[str, Any]) -> bool:
        """True when the condition holds (the fast path: no message is built)."""
        value = claims.get(self.claim)
        if not isinstance(value, str):
            return False
        return value in self.exact or any(rx.fullmatch(value) for rx in self._compiled)

    def check(self, claims: Mapping[str, Any]) -> Mismatch | None:
        """None when the condition holds, else why not."""
        if self.claim not in claims:
            return Mismatch(self.claim, f"claim {self.claim} is absent")
        value = claims[self.claim]
        if not isinstance(value, str):
            return Mismatch(
                self.claim, f"claim {self.claim} is a {type(value).__name__}, not a string"
            )
        if value in self.exact or any(rx.fullmatch(value) for rx in self._compiled):
            return None
        return Mismatch(self.claim, f"claim {self.claim} = {value[:200]!r} {self._expected()}")

    def _expected(self) -> str:
        wanted = sorted(self.exact) + list(self.globs)
        return f"is not {wanted[0]!r}" if len(wanted) == 1 else f"is not one of {wanted}"


@dataclass(frozen=True)
class CompiledRule:
    """A validated rule, ready to match claims."""

    id: str
    issuer: str
    effect: str
    conditions: tuple[ClaimCondition, ...]
    grants: tuple[str, ...]
    allow_events: frozenset[str]
    unsafe: bool

    def matches(self, claims: Mapping[str, Any], platform: str) -> bool:
        """True when every condition holds (and, for allow rules, every trigger is named)."""
        if not all(condition.holds(claims) for condition in self.conditions):
            return False
        if self.effect == "deny":
            return True
        return all(event in self.allow_events for event, _ in sensitive_events(claims, platform))

    def mismatches(self, claims: Mapping[str, Any], platform: str) -> list[Mismatch]:
        """Every failing condition (all of them, for explain), events included for allow rules."""
        failed = [m for c in self.conditions if (m := c.check(claims)) is not None]
        if self.effect == "allow":
            failed.extend(self._event_mismatches(claims, platform))
        return failed

    def _event_mismatches(self, claims: Mapping[str, Any], platform: str) -> list[Mismatch]:
        out = []
        for event, claim in sensitive_events(claims, platform):
            if event not in self.allow_events:
                out.append(
                    Mismatch(
                        claim,
                        f"sensitive trigger {event!r} is refused unless the rule lists it in "
                        "allow_events",
                    )
                )
        return out

    def covers(self, requested: Sequence[str]) -> bool:
        """For deny rules: does this rule refuse any of ``requested``? (no grants = all)"""
        return not self.grants or any(g in self.grants for g in requested)


@dataclass(frozen=True)
class RuleReport:
    """How one rule fared against one job: matched or the list of failed conditions."""

    rule_id: str
    effect: str
    mismatches: tuple[Mismatch, ...]
    granted: tuple[str, ...] = ()

    @property
    def matched(self) -> bool:
        """True when every condition held."""
        return not self.mismatches


@dataclass(frozen=True)
class Decision:
    """The outcome. ``grants`` keeps the order of the request; ``not_granted`` what was cut."""

    allowed: bool
    rule_id: str | None
    grants: tuple[str, ...]
    reason_public: str
    reason_detail: str
    not_granted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Explanation:
    """A decision together with the report of every rule of the issuer, in file order."""

    decision: Decision
    reports: tuple[RuleReport, ...]


class TrustPolicy:
    """A compiled, immutable trust policy. Build it with :func:`compile_trust_policy`."""

    def __init__(self, config: BrokerConfig, rules: Sequence[CompiledRule]) -> None:
        self.config = config
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self._platforms = {i.name: i.resolved_platform or "other" for i in config.issuers}
        self._by_issuer: dict[str, tuple[CompiledRule, ...]] = {
            name: tuple(rule for rule in self.rules if rule.issuer == name)
            for name in self._platforms
        }
        self._index = {
            name: _RuleIndex(rules, IMMUTABLE_ID_CLAIMS[self._platforms[name]])
            for name, rules in self._by_issuer.items()
        }

    @property
    def grants(self) -> Mapping[str, GrantEntry]:
        """The grant definitions, by name."""
        return self.config.grants

    def issuer_configs(self) -> list[IssuerConfig]:
        """The issuer allowlist, for :class:`airlock.oidc.TokenVerifier`."""
        return [entry.issuer_config() for entry in self.config.issuers]

    def evaluate(
        self, issuer_name: str, claims: Mapping[str, Any], requested_grants: Iterable[str]
    ) -> Decision:
        """Decide what a job with these verified ``claims`` gets of ``requested_grants``.

        Allowing takes the fast path (no message built for rules that do not match); any
        denial is explained in full, so that its reasons are precise.
        """
        requested = tuple(dict.fromkeys(requested_grants))
        platform = self._platforms.get(issuer_name)
        if platform is None or not requested:
            return self.explain(issuer_name, claims, requested).decision
        best: CompiledRule | None = None
        best_granted: tuple[str, ...] = ()
        for rule in self._index[issuer_name].candidates(claims):
            if not rule.matches(claims, platform):
                continue
            if rule.effect == "deny" and rule.covers(requested):
                return self.explain(issuer_name, claims, requested).decision
            granted = tuple(g for g in requested if g in rule.grants)
            if rule.effect == "allow" and (best is None or len(granted) > len(best_granted)):
                best, best_granted = rule, granted
        if best is None or not best_granted:
            return self.explain(issuer_name, claims, requested).decision
        return _allow(best.id, best_granted, requested)

    def explain(
        self, issuer_name: str, claims: Mapping[str, Any], requested_grants: Iterable[str]
    ) -> Explanation:
        """:meth:`evaluate`, plus why each rule of the issuer did or did not match."""
        requested = tuple(dict.fromkeys(requested_grants))
        platform = self._platforms.get(issuer_name)
        rules = self._by_issuer.get(issuer_name, ())
        reports = tuple(
            self._report(rule, claims, requested, platform or "other") for rule in rules
        )
        if platform is None:
            decision = _deny(None, f"issuer {issuer_name!r} is not configured", "no such issuer")
        elif not requested:
            decision = _deny(None, "no grants were requested", "the request names no grant")
        else:
            decision = _decide(issuer_name, rules, reports, requested)
        return Explanation(decision=decision, reports=reports)

    def _report(
        self, rule: CompiledRule, claims: Mapping[str, Any], requested: Sequence[str], platform: str
    ) -> RuleReport:
        mismatches = tuple(rule.mismatches(claims, platform))
        granted = tuple(g for g in requested if g in rule.grants) if rule.effect == "allow" else ()
        return RuleReport(rule.id, rule.effect, mismatches, granted)


class _RuleIndex:
    """Rules of one issuer bucketed by their exact immutable-id values, so that evaluating a
    job looks at the rules that can match its ids (plus the rules that bind none), not all."""

    def __init__(self, rules: Sequence[CompiledRule], id_claims: Sequence[str]) -> None:
        self._rules = tuple(rules)
        self._id_claims = tuple(id_claims)
        self._buckets: dict[tuple[str, str], list[int]] = {}
        self._unindexed: list[int] = []
        for position, rule in enumerate(self._rules):
            condition = next((c for c in rule.conditions if c.claim in self._id_claims), None)
            if condition is None or condition.globs:
                self._unindexed.append(position)
                continue
            for value in condition.exact:
                self._buckets.setdefault((condition.claim, value), []).append(position)

    def candidates(self, claims: Mapping[str, Any]) -> list[CompiledRule]:
        """The rules that may match ``claims``, in file order."""
        positions = set(self._unindexed)
        for claim in self._id_claims:
            value = claims.get(claim)
            if isinstance(value, str):
                positions.update(self._buckets.get((claim, value), ()))
        return [self._rules[p] for p in sorted(positions)]


def sensitive_events(claims: Mapping[str, Any], platform: str) -> list[tuple[str, str]]:
    """The sensitive triggers these claims show, as ``(event, claim that shows it)``.

    GitHub: ``event_name`` ``pull_request_target`` or ``workflow_run`` (both run with the base
    repository's identity on behalf of code a fork controls). GitLab: ``pipeline_source``
    ``merge_request_event`` / ``external_pull_request_event`` (the token does not say whether the
    source branch is in a fork, so every merge-request pipeline counts). Any platform: a
    ``head_repository_id``/``head_repository`` claim that differs from the repository → "fork".
    """
    found = []
    event_claim = "event_name" if platform == "github" else "pipeline_source"
    event = claims.get(event_claim)
    if isinstance(event, str) and event in SENSITIVE_EVENTS:
        found.append((event, event_claim))
    for head, base in (("head_repository_id", "repository_id"), ("head_repository", "repository")):
        if head in claims and claims.get(head) != claims.get(base):
            found.append(("fork", head))
            break
    return found


def compile_trust_policy(config: BrokerConfig) -> TrustPolicy:
    """Validate every rule of ``config`` once; raise ConfigError listing every problem."""
    problems: list[str] = []
    rules: list[CompiledRule] = []
    seen_ids: set[str] = set()
    for index, entry in enumerate(config.rules):
        where = f"rules[{index}]"
        rule_problems = _rule_problems(config, index, entry, seen_ids)
        problems.extend(f"{config.where(loc)}: {msg}" for loc, msg in rule_problems)
        if not rule_problems:
            rules.append(_compile_rule(entry))
        seen_ids.add(entry.id)
        if entry.unsafe and not rule_problems:
            log.warning("trust policy: %s (%s) is marked unsafe", where, entry.id)
    if problems:
        source = config._source
        label = str(source.path) if source is not None and source.path else "broker config"
        raise config_problems(label, problems)
    return TrustPolicy(config, rules)


def load_trust_policy(path: str | Path) -> TrustPolicy:
    """Load and compile a broker config file."""
    return compile_trust_policy(load_broker_config(path))


def _deny(rule_id: str | None, public: str, detail: str) -> Decision:
    return Decision(
        allowed=False,
        rule_id=rule_id,
        grants=(),
        reason_public=f"denied: {public}",
        reason_detail=detail,
    )


def _decide(
    issuer: str,
    rules: Sequence[CompiledRule],
    reports: Sequence[RuleReport],
    requested: tuple[str, ...],
) -> Decision:
    by_id = {rule.id: rule for rule in rules}
    for report in reports:
        if report.effect == "deny" and report.matched and by_id[report.rule_id].covers(requested):
            return _deny(
                report.rule_id,
                f"refused by deny rule {report.rule_id!r}",
                f"deny rule {report.rule_id} matches every condition and covers the request "
                f"{list(requested)}",
            )
    allows = [r for r in reports if r.effect == "allow"]
    matched = [r for r in allows if r.matched]
    if not matched:
        return _no_match(issuer, allows)
    best = max(matched, key=lambda r: len(r.granted))  # first in file order among equals
    if not best.granted:
        return _deny(
            best.rule_id,
            f"rule {best.rule_id!r} matches but allows none of the requested grants",
            f"rule {best.rule_id} matches; its ceiling {list(by_id[best.rule_id].grants)} "
            f"shares nothing with the request {list(requested)}",
        )
    return _allow(best.rule_id, best.granted, requested)


def _allow(rule_id: str, granted: tuple[str, ...], requested: tuple[str, ...]) -> Decision:
    cut = tuple(g for g in requested if g not in granted)
    detail = f"rule {rule_id} matches; granted {list(granted)}"
    return Decision(
        allowed=True,
        rule_id=rule_id,
        grants=granted,
        reason_public=f"allowed by rule {rule_id!r}",
        reason_detail=detail + (f"; not in its ceiling: {list(cut)}" if cut else ""),
        not_granted=cut,
    )


def _no_match(issuer: str, allows: Sequence[RuleReport]) -> Decision:
    if not allows:
        return _deny(None, f"no rule for issuer {issuer!r}", f"issuer {issuer} has no allow rule")
    closest = min(allows, key=lambda r: len(r.mismatches))
    details = "; ".join(
        f"rule {r.rule_id}: " + ", ".join(m.detail for m in r.mismatches) for r in allows
    )
    return _deny(
        closest.rule_id,
        f"no rule matches this job (closest: rule {closest.rule_id!r} failed on claim "
        f"{closest.mismatches[0].claim!r})",
        details,
    )


def _rule_problems(
    config: BrokerConfig, index: int, entry: RuleEntry, seen_ids: set[str]
) -> list[tuple[tuple[str | int, ...], str]]:
    here: tuple[str | int, ...] = ("rules", index)
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if entry.id in seen_ids:
        problems.append(((*here, "id"), f"rule id {entry.id!r} is used twice"))
    issuer = config.issuer(entry.issuer)
    if issuer is None:
        known = [i.name for i in config.issuers]
        problems.append(((*here, "issuer"), f"unknown issuer {entry.issuer!r}; known: {known}"))
    problems.extend(_grant_problems(config, here, entry))
    problems.extend(_claim_problems(here, entry))
    if issuer is not None:
        problems.extend(_binding_problems(here, entry, issuer.resolved_platform or "other"))
    problems.extend(_event_problems(here, entry))
    return problems


def _grant_problems(
    config: BrokerConfig, here: tuple[str | int, ...], entry: RuleEntry
) -> list[tuple[tuple[str | int, ...], str]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if entry.effect == "allow" and not entry.grants:
        problems.append(((*here, "grants"), "an allow rule must list the grants it allows"))
    for position, name in enumerate(entry.grants):
        if name not in config.grants:
            problems.append(
                ((*here, "grants", position), f"unknown grant {name!r}; define it under grants:")
            )
    return problems


def _claim_problems(
    here: tuple[str | int, ...], entry: RuleEntry
) -> list[tuple[tuple[str | int, ...], str]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for claim, values in entry.claims.items():
        loc = (*here, "claims", claim)
        if claim in _RESERVED_CLAIMS:
            problems.append((loc, _RESERVED_CLAIMS[claim]))
            continue
        problems.extend((loc, msg) for value in values for msg in _value_problems(claim, value))
    return problems


def _value_problems(claim: str, value: str) -> list[str]:
    if len(value) > _MAX_VALUE_LENGTH:
        return [f"value is longer than {_MAX_VALUE_LENGTH} characters"]
    if "**" in value:
        return [f"{value!r}: `**` is not supported; `*` matches within one path segment only"]
    if value.count("*") > _MAX_STARS:
        return [f"{value!r}: at most {_MAX_STARS} `*` per pattern"]
    if "*" in value and claim in _all_immutable_ids():
        return [f"{value!r}: immutable ids must be exact values, not patterns"]
    if claim in _BOOLEAN_CLAIMS and value not in ("true", "false"):
        return [f"{value!r}: {claim} is 'true' or 'false'"]
    return []


def _binding_problems(
    here: tuple[str | int, ...], entry: RuleEntry, platform: str
) -> list[tuple[tuple[str | int, ...], str]]:
    if entry.effect == "allow" and not entry.claims:
        return [
            ((*here, "claims"), "an allow rule needs claim conditions; none would match any job")
        ]
    if entry.effect == "deny" or entry.unsafe:
        return []
    ids = IMMUTABLE_ID_CLAIMS[platform]
    if any(claim in entry.claims for claim in ids):
        return []
    wanted = " or ".join(ids) if ids else "an immutable id (this issuer's platform has none known)"
    return [
        (
            (*here, "claims"),
            f"rule {entry.id!r} binds no immutable id: add {wanted} (names can be renamed and "
            "re-registered by someone else), or set unsafe: true to accept the risk",
        )
    ]


def _event_problems(
    here: tuple[str | int, ...], entry: RuleEntry
) -> list[tuple[tuple[str | int, ...], str]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for claim in _EVENT_CLAIMS:
        for value in entry.claims.get(claim, []):
            if value in SENSITIVE_EVENTS and value not in entry.allow_events:
                problems.append(
                    (
                        (*here, "claims", claim),
                        f"{value!r} is a sensitive trigger: also list it in allow_events to "
                        "confirm that this rule may serve it",
                    )
                )
    return problems


def _all_immutable_ids() -> set[str]:
    return {claim for ids in IMMUTABLE_ID_CLAIMS.values() for claim in ids}


def _compile_rule(entry: RuleEntry) -> CompiledRule:
    return CompiledRule(
        id=entry.id,
        issuer=entry.issuer,
        effect=entry.effect,
        conditions=tuple(_compile_condition(c, v) for c, v in entry.claims.items()),
        grants=tuple(dict.fromkeys(entry.grants)),
        allow_events=frozenset(entry.allow_events),
        unsafe=entry.unsafe,
    )


def _compile_condition(claim: str, values: Sequence[str]) -> ClaimCondition:
    exact = frozenset(v for v in values if "*" not in v)
    globs = tuple(v for v in values if "*" in v)
    return ClaimCondition(
        claim=claim, exact=exact, globs=globs, _compiled=tuple(_glob(g) for g in globs)
    )


def _glob(pattern: str) -> Any:
    # Anchored by fullmatch; `*` is "any run of characters except / and control characters"
    # (a newline in a claim must not ride through a pattern); everything else is literal.
    regex = r"[^/\x00-\x1f\x7f]*".join(re2.escape(part) for part in pattern.split("*"))
    return re2.compile(regex)

"""The broker's logic, without HTTP: exchange, revoke, sweep, witness.

    exchange(token, grants)
      verify the OIDC token (allowlist, signature, audience, times)
      ▸ trust policy (deny by default; the grant is ceiling ∩ request)
      ▸ single-use jti and rate limit per repository/project: one SQL transaction
      ▸ each provider issues; any failure revokes what this exchange already issued
      ▸ ledger: claims, rule, grant, SHA-256 of each value, lease id, expiry
      ◀ credentials + a job token (for revoke and checkpoints at job end)

Two tiers of error detail: exceptions carry a short public message; the precise reason goes to
the broker's log through ``log.info``. Neither ever holds a token or a credential.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airlock.audit import SigningKey
from airlock.audit.checkpoints import checkpoint_message
from airlock.broker.state import (
    CheckpointRow,
    JobRow,
    LeaseRow,
    SqlReplayCache,
    StateStore,
    token_digest,
)
from airlock.broker.ticket_grants import TICKET_PROVIDER, TicketProvider
from airlock.errors import (
    AirlockError,
    InfrastructureUnavailable,
    PolicyDenied,
    UsageError,
)
from airlock.oidc import JWKSCache, OIDCError, TokenVerifier, VerifiedToken
from airlock.oidc.verify import replayed
from airlock.policy.broker_config import BrokerConfig
from airlock.policy.trust import TrustPolicy, compile_trust_policy
from airlock.providers.interface import (
    CredentialProvider,
    IssuedCredential,
    IssueRequest,
    get_provider,
)

__all__ = [
    "Broker",
    "ExchangeResult",
    "RateLimited",
]

log = logging.getLogger("airlock.broker")

_SUBJECT_CLAIMS = (
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "project_path",
    "project_id",
    "namespace_path",
    "namespace_id",
    "run_id",
    "run_attempt",
    "pipeline_id",
    "job_id",
    "ref",
    "sha",
    "event_name",
    "actor",
    "actor_id",
    "user_login",
    "user_id",
    "workflow_ref",
    "job_workflow_ref",
    "environment",
)


class RateLimited(PolicyDenied):
    """Too many exchanges for one repository or project in the current window."""


@dataclass(frozen=True)
class ExchangeResult:
    job_token: str  # secret: lets the job revoke its leases and send checkpoints
    rule_id: str
    credentials: tuple[IssuedCredential, ...]
    not_granted: tuple[str, ...]
    expires_at: float

    def __repr__(self) -> str:
        return f"ExchangeResult(rule_id={self.rule_id!r}, leases={len(self.credentials)})"


class Broker:
    """One broker process. Stateless itself: everything shared lives in :class:`StateStore`."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        store: StateStore,
        key: SigningKey,
        verifier: TokenVerifier | None = None,
        providers: Mapping[str, CredentialProvider] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.trust: TrustPolicy = compile_trust_policy(config)
        self.store = store
        self.key = key
        self._clock = clock
        self._jwks = JWKSCache()
        # Our own verifier leaves the jti to exchange(), which consumes it in the transaction
        # that counts the rate window; a given verifier consumes it in its own replay cache.
        self._store_consumes_jti = verifier is None
        self.verifier = verifier or TokenVerifier(
            self.trust.issuer_configs(),
            replay_cache=SqlReplayCache(store),
            keys=self._jwks,
            clock=clock,
        )
        if providers is None:
            self.providers = _build_providers(config, store.engine)
        else:
            self.providers = {**_ticket_providers(config, store.engine), **providers}
        _check_grants(config, self.providers)
        # Called with the job digest after a revoke (the approval service denies that job's
        # pending requests); a failing hook is logged, the revoke stands.
        self.on_revoke: list[Callable[[str], None]] = []

    @staticmethod
    def check_config(config: BrokerConfig) -> None:
        """Everything the constructor refuses, without opening the store or any connection."""
        compile_trust_policy(config)
        _check_grants(config, _build_providers(config))

    def close(self) -> None:
        """Close the connections this broker opened (the JWKS client); not the store."""
        self._jwks.close()

    # -- exchange ---------------------------------------------------------------------------------

    def exchange(self, token: str, grants: Sequence[str]) -> ExchangeResult:
        verified = self._verify(token)
        # An empty request asks only for a job token (to send checkpoints): a job gets one when
        # some rule would grant it something.
        asked = list(grants) or list(self.config.grants)
        decision = self.trust.evaluate(verified.issuer, verified.claims, asked)
        if not grants:
            decision = dataclasses.replace(decision, grants=(), not_granted=())
        subject = _subject(verified)
        self._admit(verified, subject, count=decision.allowed)
        if not decision.allowed:
            log.info("exchange denied: issuer=%s %s", verified.issuer, decision.reason_detail)
            raise PolicyDenied(decision.reason_public, rule_id=decision.rule_id)
        job_token = secrets.token_urlsafe(32)
        job_digest = token_digest(job_token)
        ceiling = self._ticket_ceiling(verified)
        issued = self._issue_all(decision.grants, subject)
        expires = max([c.expires_at.timestamp() for c in issued], default=verified.expires_at)
        rows = [_lease_row(c, decision.rule_id, subject) for c in issued]
        try:
            self.store.add_job(
                job_digest,
                subject,
                max(expires, self._clock() + 3600),
                issuer=verified.issuer,
                leases=rows,
                ceiling=ceiling,
                rule_id=decision.rule_id or "",
            )
        except BaseException:
            for credential in issued:  # not in the ledger means not issued
                self._revoke_credential(credential.provider, credential)
            raise
        log.info(
            "exchange allowed: issuer=%s rule=%s grants=%s leases=%s",
            verified.issuer,
            decision.rule_id,
            ",".join(decision.grants),
            ",".join(c.lease_id for c in issued),
        )
        return ExchangeResult(
            job_token, decision.rule_id or "", tuple(issued), decision.not_granted, expires
        )

    def _ticket_ceiling(self, verified: VerifiedToken) -> tuple[str, ...]:
        """The ticket grants the trust policy allows this job to ask for after its exchange."""
        tickets = [n for n, g in self.config.grants.items() if self._is_ticket(g.provider)]
        if not tickets:
            return ()
        decision = self.trust.evaluate(verified.issuer, verified.claims, tickets)
        return decision.grants if decision.allowed else ()

    def _is_ticket(self, provider: str) -> bool:
        return isinstance(self.providers.get(provider), TicketProvider)

    # -- tickets ----------------------------------------------------------------------------------

    def issue_ticket(self, job_token: str, gateway: str) -> IssuedCredential:
        """A ticket for central ``gateway``, if the rule that admitted the job grants one."""
        if gateway not in self.config.central_gateways:
            raise UsageError(f"no central gateway named {gateway!r} at this broker")
        digest = token_digest(job_token)
        job = self._live_job(digest)
        names = [
            name
            for name in job.ceiling
            if name in self.config.grants
            and self._is_ticket(self.config.grants[name].provider)
            and self.config.grants[name].settings.get("gateway") == gateway
        ]
        if not names:
            log.info(
                "ticket denied: gateway=%s rule=%s grants no ticket grant for it (ceiling=%s)",
                gateway,
                job.rule_id,
                ",".join(job.ceiling) or "-",
            )
            raise PolicyDenied(
                f"the trust rule that admitted this job grants no ticket for gateway {gateway!r}",
                rule_id=job.rule_id or None,
            )
        credential = self._issue(names[0], job.subject)
        row = _lease_row(credential, job.rule_id, job.subject)
        try:
            self.store.add_leases(digest, job.issuer, [row])
        except BaseException:
            self._revoke_credential(credential.provider, credential)
            raise
        log.info("ticket issued: gateway=%s lease=%s", gateway, credential.lease_id)
        return credential

    def check_ticket(self, gateway: str, ticket: str) -> tuple[dict[str, Any], float] | None:
        """(subject, expiry) of a live ticket for ``gateway``; None for anything else."""
        for provider in self.providers.values():
            if isinstance(provider, TicketProvider):
                return provider.check(gateway, ticket)
        return None

    def _live_job(self, digest: str) -> JobRow:
        job = self.store.job(digest)
        if job is None:
            raise PolicyDenied("unknown, expired or revoked job token")
        return job

    def _verify(self, token: str) -> VerifiedToken:
        try:
            return self.verifier.verify(token, consume=not self._store_consumes_jti)
        except OIDCError as exc:
            log.info("token refused: reason=%s detail=%s", exc.reason, exc.detail)
            raise

    def _admit(self, verified: VerifiedToken, subject: Mapping[str, Any], *, count: bool) -> None:
        """Use up the token's jti and, for an allowed request, count it in the repository's rate
        window: one transaction. A replayed token counts nothing; a denied one is used up."""
        limit = self.config.limits.per_repository
        repo = subject.get("repository_id") or subject.get("project_id") or "unknown"
        bucket = f"{verified.issuer}:{repo}"
        admission = self.store.admit(
            verified.issuer,
            verified.jti if self._store_consumes_jti else None,
            verified.replay_until,
            rate=(bucket, float(limit.per), limit.burst or limit.rate) if count else None,
            now=self._clock(),
        )
        if not admission.fresh:
            exc = replayed(verified.issuer, verified.jti)
            log.info("token refused: reason=%s detail=%s", exc.reason, exc.detail)
            raise exc
        if not admission.within_rate:
            log.info("exchange rate-limited: bucket=%s", bucket)
            raise RateLimited(
                "too many credential exchanges for this repository; try again shortly",
                hint="the broker's limits.per_repository sets the rate",
            )

    def _issue_all(
        self, grants: Sequence[str], subject: Mapping[str, Any]
    ) -> list[IssuedCredential]:
        issued: list[IssuedCredential] = []
        try:
            for name in grants:
                issued.append(self._issue(name, subject))
        except BaseException:
            for credential in issued:  # nothing half-issued
                self._revoke_credential(credential.provider, credential)
            raise
        return issued

    def _issue(self, grant_name: str, subject: Mapping[str, Any]) -> IssuedCredential:
        grant = self.config.grants[grant_name]
        provider = self.providers[grant.provider]
        request = IssueRequest(
            grant_name=grant_name,
            settings=grant.settings,
            lease_id="l" + secrets.token_hex(10),
            ttl_seconds=grant.ttl,
            session_name=_session_name(subject),
            tags={k: str(v) for k, v in subject.items() if k in ("repository", "run_id", "actor")},
        )
        try:
            # The ledger names the provider instance (providers:), which is what revoke looks up.
            return dataclasses.replace(provider.issue(request), provider=grant.provider)
        except UsageError as exc:  # the broker's own config is at fault, not the caller
            log.warning("provider %s cannot issue %s: %s", grant.provider, grant_name, exc.message)
            raise InfrastructureUnavailable(
                f"the broker cannot issue {grant_name} right now; its operators are told why"
            ) from exc
        except AirlockError:
            raise
        except Exception as exc:  # a provider bug must not leak details or half-issue
            log.exception("provider %s failed", grant.provider)
            raise InfrastructureUnavailable(
                f"the {grant.provider} provider failed to issue {grant_name}"
            ) from exc

    # -- revoke and sweep -------------------------------------------------------------------------

    def revoke_job(self, job_token: str) -> int:
        """End the job that holds ``job_token``: from now on the token gets nothing (no ticket,
        checkpoint or approval) and its tickets stop passing ``/check``; then revoke every live
        lease. How many leases were revoked."""
        digest = token_digest(job_token)
        if self.store.was_revoked(digest):
            return 0
        self._live_job(digest)
        self.store.revoke_job(digest, self._clock())
        log.info("job revoked: %s…", digest[:12])
        for hook in self.on_revoke:
            try:
                hook(digest)
            except Exception as exc:  # the revoke stands; the hook's own record may lag
                log.warning("after revoke of %s…: %s failed", digest[:12], type(exc).__name__)
        return sum(
            self._revoke_lease(row) for row in self.store.leases(job_digest=digest, live_only=True)
        )

    def sweep(self, now: float | None = None) -> int:
        """Revoke leases past their expiry. Any replica may sweep: each lease is claimed once."""
        now = self._clock() if now is None else now
        return sum(self._revoke_lease(row) for row in self.store.expired_unrevoked(now))

    def _revoke_lease(self, row: LeaseRow) -> bool:
        if not self.store.claim_revocation(row.lease_id, self._clock()):
            return False
        try:
            self.providers[row.provider].revoke(row.lease_id, row.revoke_handle)
        except Exception as exc:
            error = exc.message if isinstance(exc, AirlockError) else type(exc).__name__
            log.warning("revoke of lease %s failed: %s", row.lease_id, error)
            self.store.release_revocation(row.lease_id, error)
            return False
        log.info("lease revoked: %s (%s)", row.lease_id, row.grant_name)
        return True

    def _revoke_credential(self, provider_name: str, credential: IssuedCredential) -> None:
        try:
            self.providers[provider_name].revoke(credential.lease_id, credential.revoke_handle)
        except Exception:
            log.exception("rollback revoke of lease %s failed", credential.lease_id)

    # -- witness ----------------------------------------------------------------------------------

    def witness(self, job_token: str, session_id: str, seq: int, head: str) -> CheckpointRow:
        """Sign and store a session's chain head at ``seq``."""
        digest = token_digest(job_token)
        self._live_job(digest)
        if not (len(head) == 64 and all(c in "0123456789abcdef" for c in head)) or seq < 0:
            raise UsageError("a checkpoint needs seq >= 0 and head as 64 lowercase hex digits")
        owner = self.store.session_owner(session_id)
        if owner is not None and owner != digest:  # one session, one job: no borrowed ids
            raise PolicyDenied(f"session {session_id} belongs to another job")
        at = round(self._clock(), 6)
        signature = self.key.sign(checkpoint_message(session_id, seq, head, at))
        row = CheckpointRow(
            session_id, seq, head, at, self.key.key_id, base64.b64encode(signature).decode()
        )
        if not self.store.add_checkpoint(digest, row):
            raise UsageError(f"checkpoint {seq} of session {session_id} was already witnessed")
        return row

    def public_keys(self) -> list[dict[str, str]]:
        return [
            {
                "key_id": self.key.key_id,
                "alg": "Ed25519",
                "public_pem": self.key.public_pem().decode(),
            }
        ]


def _check_grants(config: BrokerConfig, providers: Mapping[str, CredentialProvider]) -> None:
    for name, grant in config.grants.items():
        provider = providers.get(grant.provider)
        if provider is None:
            raise UsageError(
                f"grant {name!r} names provider {grant.provider!r}, which is not configured",
                hint="add it under providers:, or use a provider kind",
            )
        provider.validate_grant(grant.settings)


def _build_providers(
    config: BrokerConfig, engine: Any | None = None
) -> dict[str, CredentialProvider]:
    built: dict[str, CredentialProvider] = _ticket_providers(config, engine)
    for name, kind, entry in _provider_entries(config):
        if kind != TICKET_PROVIDER:
            built[name] = get_provider(kind).from_config(entry)
    return built


def _ticket_providers(config: BrokerConfig, engine: Any | None) -> dict[str, CredentialProvider]:
    """The broker's own provider kind: tickets for central gateways, kept in its state store."""
    return {
        name: TicketProvider(config.central_gateways, engine)
        for name, kind, _ in _provider_entries(config)
        if kind == TICKET_PROVIDER
    }


def _provider_entries(config: BrokerConfig) -> list[tuple[str, str, dict[str, Any]]]:
    names = {grant.provider for grant in config.grants.values()} | set(config.providers)
    out = []
    for name in sorted(names):
        entry = dict(config.providers.get(name, {}))
        out.append((name, str(entry.pop("kind", name)), entry))
    return out


def _subject(verified: VerifiedToken) -> dict[str, Any]:
    return {k: verified.claims[k] for k in _SUBJECT_CLAIMS if k in verified.claims}


def _session_name(subject: Mapping[str, Any]) -> str:
    repo = subject.get("repository") or subject.get("project_path") or "job"
    run = subject.get("run_id") or subject.get("pipeline_id") or "0"
    return f"airlock-{repo}-{run}-{subject.get('run_attempt', '1')}"


def _lease_row(
    credential: IssuedCredential, rule_id: str | None, subject: Mapping[str, Any]
) -> LeaseRow:
    return LeaseRow(
        lease_id=credential.lease_id,
        grant_name=credential.grant_name,
        provider=credential.provider,
        rule_id=rule_id or "",
        subject=dict(subject),
        fingerprints=credential.fingerprints(),
        revoke_handle=dict(credential.revoke_handle),
        issued_at=time.time(),
        expires_at=credential.expires_at.timestamp(),
        revoked_at=None,
    )

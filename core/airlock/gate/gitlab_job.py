"""The job's side of the ``gitlab`` backend with a broker: the broker posts the merge request
note and takes GitLab's webhooks; the job only long-polls the broker.

Kept apart from ``gitlab.py`` (which talks to GitLab itself through python-gitlab, a broker-only
dependency) so that a job asking through the broker needs no GitLab client library.
"""

from __future__ import annotations

from typing import ClassVar

from airlock.gate.broker import BrokerBackend

__all__ = ["GitLabBackend"]


class GitLabBackend(BrokerBackend):
    """The job's side of ``gitlab`` with a broker: the broker posts the note and takes webhooks."""

    name: ClassVar[str] = "gitlab"
    forge: ClassVar[str] = "gitlab"

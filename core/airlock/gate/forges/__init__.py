"""Forges: where the broker shows an approval request and how it reads the answer.

One interface (:class:`~airlock.gate.forges.interface.Forge`) and one module per forge:

    Forge (abstract)                   interface.py
     ├── GitHubCheckForge              github_check.py   a check run with Approve / Deny buttons
     └── GitLabNotesForge              gitlab_notes.py   a merge request note, answered by note

The broker's approval service keeps the store, the quorum and the signing; a forge posts,
shows progress and outcome, tells who wrote the pull/merge request (asked at click time) and
what rights a clicker has, and turns a verified webhook payload into a :class:`Click`.
(``github-environment`` answers deployment protection rules, a flow of its own, in the service.)
"""

from __future__ import annotations

from airlock.gate.forges.interface import Click, Forge, ForgeRef, ForgeRequest, Shown

__all__ = ["Click", "Forge", "ForgeRef", "ForgeRequest", "Shown"]

"""The ``gitlab`` forge: a merge request note, answered by ``/airlock approve|deny <id> [why]``.

Each delivery and each note counts once; the author's member access level and bot flag are
asked at click time. Note texts: :mod:`airlock.gate.gitlab`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from airlock.gate.forges.interface import Click, Forge, ForgeRef, ForgeRequest, Shown
from airlock.gate.forges.payloads import NoteEvent
from airlock.gate.gitlab import GitLabApi, GitLabRights, note_body, outcome_note, progress_note
from airlock.gate.interface import Decision
from airlock.gate.rules import Clicker, Rights, parse_command

__all__ = ["GitLabNotesForge"]


class GitLabNotesForge(Forge):
    """Notes through the GitLab API (``api`` builds its client on first use)."""

    name: ClassVar[str] = "gitlab"
    source: ClassVar[str] = "gitlab"
    carries_text: ClassVar[bool] = True

    def __init__(self, api: Callable[[], GitLabApi]) -> None:
        self._api = api

    def post(self, request: ForgeRequest) -> ForgeRef:
        api = self._api()
        mr = api.merge_request(request.repository_id, request.target)
        text = note_body(request.request_id, request.op, request.requester, request.expires_at)
        note = api.post_note(request.repository_id, request.target, text)
        url = f"{mr.get('web_url')}#note_{note.get('id')}" if mr.get("web_url") else None
        author = str((mr.get("author") or {}).get("username", "")) or None
        return ForgeRef(str(note.get("id")), url, None, author)

    def show_progress(self, shown: Shown, approvers: list[str], needed: int) -> None:
        if shown.target is None or shown.ref is None:
            return
        note = progress_note(
            shown.request_id, shown.op, shown.requester, shown.expires_at, approvers, needed
        )
        self._api().update_note(shown.repository_id, shown.target, int(shown.ref), note)

    def show_outcome(self, shown: Shown, status: str, decision: Decision) -> None:
        if shown.target is None or shown.ref is None:
            return
        note = outcome_note(shown.request_id, status, decision.by, decision.at, decision.reason)
        self._api().update_note(shown.repository_id, shown.target, int(shown.ref), note)

    def author_id(self, shown: Shown) -> str | None:
        if shown.target is None:
            return None
        mr = self._api().merge_request(shown.repository_id, shown.target)
        author_id = (mr.get("author") or {}).get("id")
        return str(author_id) if author_id is not None else None

    def rights(self, shown: Shown) -> Rights:
        return GitLabRights(self._api(), shown.repository_id)

    def click(self, payload: Mapping[str, Any], delivery: str) -> Click | None:
        if payload.get("object_kind") != "note":
            return None
        event = NoteEvent.model_validate(payload)
        command = parse_command(event.object_attributes.note)
        note = event.object_attributes
        if command is None or note.system or note.edited or event.merge_request is None:
            return None  # an edited note answers nothing: an answer is what was first written
        user = event.user
        bot = self._api().is_bot(str(user.id))
        return Click(
            request_id=command.request_id,
            clicker=Clicker(user.username, str(user.id), bot),
            approve=command.approve,
            deliveries=(("gitlab", delivery), ("gitlab-note", str(event.object_attributes.id))),
            where="a note",
            repository_id=str(event.project.id),
            target=event.merge_request.iid,
            justification=command.justification,
        )

    def matches(self, click: Click, shown: Shown, head_sha: str | None) -> bool:
        return super().matches(click, shown, head_sha) and click.target == shown.target

    def reply(self, shown: Shown, text: str) -> None:
        if shown.target is not None:
            self._api().post_note(shown.repository_id, shown.target, text)

"""Job orchestration: compose the domains for one CI job (run a session, and later finalize,
bracket and the approval-backend factory). Calls the domains directly; never re-enters the CLI.

- :mod:`.launch` — ``airlock run``'s options → a session request (identity, env, key, broker).
- :mod:`.run` — ``airlock run``: mask, show and log a command's output and processes, then seal.
- :mod:`.recorder`, :mod:`.follow` — a bracket session's recorder and the command it records.
- :mod:`.credentials` — the broker exchange (``airlock credentials``, the action's steps).
"""

__all__: list[str] = []

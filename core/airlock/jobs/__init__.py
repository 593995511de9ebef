"""Job orchestration: compose the domains for one CI job (run a session, and later finalize,
bracket and the approval-backend factory). Calls the domains directly; never re-enters the CLI.

- :mod:`.run` — ``airlock run``: mask, show and log a command's output and processes, then seal.
"""

__all__: list[str] = []

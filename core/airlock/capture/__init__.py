"""Process capture: the strace exec-trace parser (:mod:`.exectrace`), the tracer probe
(:mod:`.tracer`) and the process runner (:mod:`.runner`). The recorded session that ties them to
the masker and the audit log is orchestration: :mod:`airlock.jobs.run`."""

__all__: list[str] = []

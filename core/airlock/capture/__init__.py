"""Process capture: the strace exec-trace parser (:mod:`.exectrace`), the tracer probe
(:mod:`.tracer`), the process runner (:mod:`.runner`) and the recorded session that ties them to
the masker and the audit log (:mod:`.session`)."""

__all__: list[str] = []

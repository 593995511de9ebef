"""The credential broker: the ASGI service (:mod:`.app`), its logic (:mod:`.service`), its SQL
state (:mod:`.state`), the job-side client (:mod:`.client`) and the witness check
(:mod:`.witness`). docs/broker.md describes the service and its API."""

__all__: list[str] = []

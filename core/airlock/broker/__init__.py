"""The credential broker: the ASGI service (:mod:`.app`), its logic (:mod:`.service`), its SQL
state (:mod:`.state`) and the witness check (:mod:`.witness`); the job-side client
is :mod:`airlock.brokerclient`. docs/broker.md describes the service and its API."""

__all__: list[str] = []

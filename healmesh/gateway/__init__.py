"""The gateway's runtime pieces: control state, feature log, upstream calls, the request
pipeline (core) and the HTTP API. The BentoML service that wires them is gateway/service.py."""

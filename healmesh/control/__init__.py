"""The control plane the gateway and the lifecycle share: Redis key names (``keys``), the typed
control state and its change rules (``state``), the gateway's async store (``store``), the
lifecycle's sync store (``sync_store``), lifecycle events (``events``) and the rollout lease
(``lease``)."""

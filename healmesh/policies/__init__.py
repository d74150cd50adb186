"""Every decision as plain, typed, I/O-free code, clocks injected: routing, circuit breaking,
retry budget, readiness, flapping (the gateway and the supervisor); canary analysis and its
counter evidence, the rollout's guards and plans, the drift decision, the retrain gate and live
quality (the lifecycle). Imports nothing of healmesh but ``settings`` and ``schema`` (floor 1).
Tested directly (tests/unit/test_policies_*.py)."""

"""The gateway's decisions as plain, typed, I/O-free code: routing, circuit breaking, retry
budget. Tested directly (tests/unit/test_policies_*.py), clocks injected."""

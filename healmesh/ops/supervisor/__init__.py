"""The local mesh under a process supervisor (circus, the one BentoML already runs its own
workers with).

``spec`` says what runs (pure: programs, the flapping policy, the state a status reports),
``daemon`` is the circus arbiter process with its two hooks, ``client`` starts it and talks
to it. `healmesh up` (``healmesh.ops.stack``) decides what to run and in which order.
"""

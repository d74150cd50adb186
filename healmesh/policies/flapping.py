"""When a supervised process that keeps exiting stops being restarted. Plain code, clock injected.

A process that exits is started again at once. One that has been started ``attempts`` times
within ``window_s`` is flapping: the next start waits ``retry_in_s`` (a pause), and after
``max_retry`` pauses in a row it is given up on: it stays stopped until an operator starts it
(`healmesh up`), and its state is ``failed``. A process that ran a whole window since its last
start is healthy again: its pauses are forgotten.

With the defaults a process that dies on start is given up after 9 starts in about a minute;
one SIGKILL, or one a minute, is restarted every time. (Circus's own flapping plugin decides
the same in a separate process and stops the watcher by a fire-and-forget message, which circus
drops while it is busy spawning: seen here, a crash loop ran on with 61 starts.)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class FlapPolicy:
    attempts: int = 3
    window_s: float = 30.0
    retry_in_s: float = 5.0
    max_retry: int = 2


class Decision(StrEnum):
    START = "start"      # start it now
    PAUSE = "pause"      # flapping: start it after retry_in_s
    GIVE_UP = "give_up"  # flapping after max_retry pauses: leave it stopped


@dataclass
class FlapGuard:
    policy: FlapPolicy = FlapPolicy()
    _starts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    _pauses: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def reset(self, name: str) -> None:
        """An operator started it: a clean slate."""
        self._starts.pop(name, None)
        self._pauses.pop(name, None)

    def before_start(self, name: str, now: float) -> Decision:
        """Whether the supervisor may start ``name`` now (it records the start when it may)."""
        p = self.policy
        starts = self._starts[name]
        if starts and now - starts[-1] > p.window_s:
            self._pauses[name] = 0  # it ran a whole window: healthy again
        recent = [t for t in starts if now - t <= p.window_s]
        if len(recent) >= p.attempts:
            self._starts[name] = []  # the next try starts a fresh window
            if self._pauses[name] < p.max_retry:
                self._pauses[name] += 1
                return Decision.PAUSE
            return Decision.GIVE_UP
        self._starts[name] = [*recent, now]
        return Decision.START

    def pauses(self, name: str) -> int:
        return self._pauses.get(name, 0)

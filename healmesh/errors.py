"""One exception tree for what healmesh raises for its own conditions (floor 1: imports nothing
from healmesh). Library errors (redis, httpx, MLflow) pass through as they are, or are turned
into one of these where we know what they mean.

    HealmeshError                    the base: everything below is ours
    ├── ConfigError                  (ValueError) a setting, config or parameter outside what it allows
    │   └── ProjectError             a project file that cannot be served (names the file and the field)
    ├── InvalidData                  (ValueError) data handed to us is not what it must be
    │   ├── SchemaError              a table does not match the feature schema
    │   ├── BadReportId              a drift report id that does not match, or leaves the reports folder
    │   └── DuplicateKey             a JSON object with a key twice
    ├── RequestRejected              an HTTP request refused before it does any work (status, error, detail)
    ├── ChangeRejected               (ValueError) a control change invalid in itself (422); ``field`` names it
    │   ├── WeightsError             routing weights that are not weights
    │   └── RolloutRejected          a rollout invalid in itself
    ├── Conflict                     (RuntimeError) does not fit the current state (409)
    │   └── ChangeConflict           a control change that does not fit, or lost its compare-and-set
    │       └── RolloutConflict      a rollout change that does not fit the running rollout
    ├── Unavailable                  (RuntimeError) a store or service we need did not answer (503)
    ├── Saturated                    the gateway itself is full: shed with 503 + Retry-After
    ├── IllegalTransition            (RuntimeError) a state machine (breaker, chain plan) asked for a move it forbids
    ├── NoModel                      (RuntimeError) the registry lacks a model, alias or run this needs
    ├── IncompatibleBundle           (RuntimeError) a saved model bundle this code cannot serve
    ├── NotEnoughLabels              (RuntimeError) too few labelled records to train or judge a candidate
    ├── ChallengerWaitTimedOut       (RuntimeError) a rollout held the lease past ``challenger_wait_s``
    ├── RolloutFailed                (RuntimeError) a stage failed its analysis, or the rollout cannot start
    │   └── LeaseLost                this rollout no longer holds the lease: retrying cannot help
    ├── MeshError                    (RuntimeError) the gateway's admin API refused a call or did not answer
    ├── UnexpectedReply              (RuntimeError) a store answered something its protocol does not allow
    ├── ServerFailed                 (RuntimeError) a local server did not start or did not get ready
    ├── PostgresUnavailable          (RuntimeError) no PostgreSQL to create the rehearsal's metadata databases
    ├── SupervisorError              (RuntimeError) the local supervisor refused, or did not answer
    └── DemoFailed                   (RuntimeError) a step of the narrated demo did not happen

The second base in brackets keeps older ``except ValueError`` / ``except RuntimeError`` callers
(and libraries such as pydantic, which turn a ``ValueError`` into a validation error) working.
The classes this module does not define live with the code that raises them and subclass a
branch here (``tests/unit/test_errors.py`` checks that this drawing and the classes agree).
"""

from __future__ import annotations


class HealmeshError(Exception):
    """The base of every exception healmesh raises for its own conditions."""


class ConfigError(HealmeshError, ValueError):
    """A setting, config or parameter outside what it allows."""


class InvalidData(HealmeshError, ValueError):
    """Data handed to us (a table, a file, a JSON body, an argument) is not what it must be."""


class ChangeRejected(HealmeshError, ValueError):
    """A control change that is invalid in itself (422); ``field`` names what is at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Conflict(HealmeshError, RuntimeError):
    """Something that does not fit the current state (409)."""


class Unavailable(HealmeshError, RuntimeError):
    """A store or service we need did not answer; ``what`` names it, ``cause`` says how it failed,
    ``retry_after_s`` is when asking again makes sense."""

    def __init__(self, what: str, cause: str, retry_after_s: int = 1) -> None:
        super().__init__(f"{what} is unavailable: {cause}")
        self.what, self.cause, self.retry_after_s = what, cause, retry_after_s


class Saturated(HealmeshError):
    """The gateway is full (its admission limit) or every model variant is (their limits, or
    they answered busy): shed with 503 + Retry-After."""

    def __init__(self, retry_after_s: float = 1.0, where: str = "admission") -> None:
        super().__init__(f"saturated ({where}); retry after {retry_after_s:g} s")
        self.retry_after_s = retry_after_s
        self.where = where


class IllegalTransition(HealmeshError, RuntimeError):
    """A state machine (a circuit breaker, a request's chain plan) asked for a move it does not
    allow: a bug in the caller, never an input."""


class NoModel(HealmeshError, RuntimeError):
    """The registry lacks a model, alias or run this needs (train and register first)."""


class RolloutFailed(HealmeshError, RuntimeError):
    """A stage failed its analysis (or the rollout could not start): roll back."""


class LeaseLost(RolloutFailed):
    """This rollout no longer holds the lease (aborted or expired): retrying cannot help."""


class UnexpectedReply(HealmeshError, RuntimeError):
    """A store answered something its protocol does not allow (a script returned an unknown code)."""

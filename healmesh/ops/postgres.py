"""PostgreSQL databases for the cluster rehearsal: Airflow's and MLflow's metadata, each in a
database of its own owned by a role of its own with a generated password.

The names carry a hash of HEALMESH_HOME, so two meshes (a user's and a test's) on one server
never share a database. The passwords live in 0600 files under ``home/secrets``; a URI holding
one goes to a process by its environment, never its arguments (``ps`` shows those to everyone).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from healmesh.credentials import read_or_create, secrets_dir
from healmesh.errors import HealmeshError
from healmesh.settings import Settings

PURPOSES = ("airflow", "mlflow")


class PostgresUnavailable(HealmeshError, RuntimeError):
    """No PostgreSQL answered at the admin URL, or it refused to create what the mesh needs."""


@dataclass(frozen=True)
class Database:
    name: str       # the database, and the role that owns it
    password: str
    host: str
    port: int

    def uri(self, driver: str = "postgresql+psycopg") -> str:
        """A SQLAlchemy URI (psycopg 3) for the owning role."""
        return f"{driver}://{self.name}:{quote(self.password, safe='')}@{self.host}:{self.port}/{self.name}"


def database_name(settings: Settings, purpose: str) -> str:
    digest = hashlib.sha1(str(settings.home).encode()).hexdigest()[:8]
    return f"healmesh_{digest}_{purpose}"


def _admin_conninfo(settings: Settings) -> str:
    # psycopg takes a libpq URI; a SQLAlchemy form (postgresql+psycopg://) is accepted too
    return settings.cluster.postgres_admin_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _connect(settings: Settings):  # -> psycopg.Connection
    import psycopg

    try:
        return psycopg.connect(_admin_conninfo(settings), autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        where = urlsplit(_admin_conninfo(settings))
        raise PostgresUnavailable(
            f"no PostgreSQL to create the metadata databases at {where.hostname}:{where.port or 5432} "
            f"({type(exc).__name__}): start one (apt-get install postgresql) or set "
            "HEALMESH_CLUSTER__POSTGRES_ADMIN_URL") from None


def ensure(settings: Settings, purposes: tuple[str, ...] = PURPOSES) -> dict[str, Database]:
    """Each purpose's role (its password set to the one on file) and database, created when missing.
    Safe to repeat: a second `up` finds them and changes nothing but the password to the file's."""
    from psycopg import sql

    where = urlsplit(_admin_conninfo(settings))
    out: dict[str, Database] = {}
    with _connect(settings) as conn:
        for purpose in purposes:
            name = database_name(settings, purpose)
            password = read_or_create(secrets_dir(settings) / f"postgres_{purpose}")
            role = sql.Identifier(name)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
            conn.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(verb, role, sql.Literal(password)))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role))
            out[purpose] = Database(name=name, password=password, host=where.hostname or "127.0.0.1",
                                    port=where.port or 5432)
    return out


def drop(settings: Settings, purposes: tuple[str, ...] = PURPOSES) -> None:
    """Remove the databases and roles ``ensure`` made for this home (tests clean up with it)."""
    from psycopg import sql

    with _connect(settings) as conn:
        for purpose in purposes:
            name = sql.Identifier(database_name(settings, purpose))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(name))

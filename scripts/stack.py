"""The team stack on one machine: what a team runs on shared servers, started with one command.

    python scripts/stack.py up | status | down [SERVICE...]   (= make stack / make stack-status / make stack-down)

`down mlflow` stops one service and `up` starts what is not running: a restart of one piece.

- PostgreSQL (Debian's package; a cluster in $STACK_DIR/pg, a user-level process on 127.0.0.1): the backend store
  of MLflow, of MLflow's user database and of the Prefect server;
- an MLflow tracking server on it, with proxied artifacts (`--serve-artifacts`, files in $STACK_DIR/mlflow/artifacts,
  so clients need no storage credentials) and MLflow's basic-auth app (users `admin` and `pipeline`);
- a Prefect server on it with its API behind an auth string, a process work pool with a concurrency limit of 1 (two
  pipeline runs never compete for the same cores) and one worker that executes the pool's runs;
- a DVC remote (a folder, $STACK_DIR/dvc-remote), set as this project's default remote in .dvc/config.local.

Everything binds $STACK_HOST (127.0.0.1). Credentials come from the environment (SSLOPS_STACK_PG_PASSWORD,
SSLOPS_STACK_MLFLOW_ADMIN_PASSWORD, SSLOPS_STACK_MLFLOW_PASSWORD, SSLOPS_STACK_PREFECT_AUTH) or are generated once
into $STACK_DIR/credentials.env (mode 600; $STACK_DIR is git-ignored). $STACK_DIR/client.env holds what a client
exports to use the stack (`source .stack/client.env`). Ports: STACK_PG_PORT, STACK_MLFLOW_PORT, STACK_PREFECT_PORT.

Only the standard library (and PyYAML for params.yaml): this runs before anything is known to work, so it checks
each piece itself and says what is missing (a port taken by someone else, the PostgreSQL package, a folder the
postgres user cannot enter).
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent  # the project's .venv: mlflow, prefect and dvc of the tested versions
PG_USER = "sslops"  # the database role every service connects as
MLFLOW_PIPELINE_USER = "pipeline"
DATABASES = ("mlflow", "mlflow_auth", "prefect")
SERVICES = ("worker", "prefect", "mlflow")  # started in reverse, stopped in this order; postgres last
START_TIMEOUT_S = 180


class StackError(RuntimeError):
    """A problem the person starting the stack has to fix; printed without a traceback."""


@dataclass(frozen=True)
class Stack:
    """Where the stack lives and which ports it uses; all from the environment with defaults."""

    dir: Path
    host: str
    pg_port: int
    mlflow_port: int
    prefect_port: int

    @classmethod
    def from_env(cls) -> Stack:
        def port(name: str, default: int) -> int:
            raw = os.environ.get(name, str(default))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise StackError(f"{name}={raw!r} is not a TCP port")
            return int(raw)

        return cls(
            dir=Path(os.environ.get("STACK_DIR", ".stack")).resolve(),
            host=os.environ.get("STACK_HOST", "127.0.0.1"),
            pg_port=port("STACK_PG_PORT", 5433),
            mlflow_port=port("STACK_MLFLOW_PORT", 5001),
            prefect_port=port("STACK_PREFECT_PORT", 4201),
        )

    @property
    def pool(self) -> str:
        """$STACK_POOL, else `flow.work_pool` of the project in the working directory (what `make deploy` uses)."""
        return work_pool()

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def prefect_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def pgdata(self) -> Path:
        return self.dir / "pg" / "data"

    @property
    def remote(self) -> Path:
        return self.dir / "dvc-remote"

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def pidfile(self, service: str) -> Path:
        return self.path("run", f"{service}.pid")

    def log(self, service: str) -> Path:
        return self.path("logs", f"{service}.log")

    def db_url(self, driver: str, database: str, password: str) -> str:
        return f"postgresql+{driver}://{PG_USER}:{password}@{self.host}:{self.pg_port}/{database}"


def project_setting(section: str, key: str, env: str) -> str | None:
    """$env, else params.yaml's `section.key` of the project in the working directory, else None (not a project)."""
    if os.environ.get(env):
        return os.environ[env]
    params = Path.cwd() / "params.yaml"
    if not params.exists():
        return None
    import yaml  # the project's venv has it; the rest of this script needs only the standard library

    return str(yaml.safe_load(params.read_text())[section][key])


def work_pool() -> str:
    """`flow.work_pool` of the project in the working directory: the pool `make deploy` registers the deployment on."""
    pool = project_setting("flow", "work_pool", "STACK_POOL")
    if pool is None:
        raise StackError(f"no params.yaml in {Path.cwd()}: run this in the project, or set STACK_POOL")
    return pool


# --- credentials -------------------------------------------------------------------------------------------------

CREDENTIAL_KEYS = (
    "SSLOPS_STACK_PG_PASSWORD",
    "SSLOPS_STACK_MLFLOW_ADMIN_PASSWORD",
    "SSLOPS_STACK_MLFLOW_PASSWORD",
    "SSLOPS_STACK_PREFECT_AUTH",
    "SSLOPS_STACK_FLASK_SECRET",
)


def credentials(stack: Stack) -> dict[str, str]:
    """The stack's secrets: the environment wins, then credentials.env, else new random ones written there (600)."""
    path = stack.path("credentials.env")
    stored = read_env_file(path) if path.exists() else {}
    creds: dict[str, str] = {}
    for key in CREDENTIAL_KEYS:
        value = os.environ.get(key) or stored.get(key)
        if not value:
            value = (
                f"admin:{secrets.token_urlsafe(18)}" if key == "SSLOPS_STACK_PREFECT_AUTH" else secrets.token_hex(16)
            )
        creds[key] = value
    if creds != stored:
        write_private(path, "".join(f"{k}={v}\n" for k, v in creds.items()))
    return creds


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (a leading `export ` allowed); what `source` reads, for the keys this script writes."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip().removeprefix("export ")
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs[key] = value.strip("'\"")
    return pairs


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (no moment where it exists with wider permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def client_env(stack: Stack, creds: dict[str, str]) -> dict[str, str]:
    """What a client (a person's shell, the worker, a test) exports to use the stack as the pipeline user."""
    return {
        "MLFLOW_TRACKING_URI": stack.mlflow_url,
        "MLFLOW_TRACKING_USERNAME": MLFLOW_PIPELINE_USER,
        "MLFLOW_TRACKING_PASSWORD": creds["SSLOPS_STACK_MLFLOW_PASSWORD"],
        "PREFECT_API_URL": f"{stack.prefect_url}/api",
        "PREFECT_API_AUTH_STRING": creds["SSLOPS_STACK_PREFECT_AUTH"],
    }


# --- processes ---------------------------------------------------------------------------------------------------


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_pid(stack: Stack, service: str) -> int | None:
    """The process-group leader of a service this script started, if it is still there."""
    path = stack.pidfile(service)
    if not path.exists():
        return None
    pid = int(path.read_text().split()[0])
    return pid if alive(pid) else None


def spawn(stack: Stack, service: str, cmd: list[str], env: dict[str, str]) -> int:
    """Start a service in its own session (one process group to stop, whatever it forks), output to its log."""
    stack.log(service).parent.mkdir(parents=True, exist_ok=True)
    stack.pidfile(service).parent.mkdir(parents=True, exist_ok=True)
    with open(stack.log(service), "ab") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    stack.pidfile(service).write_text(f"{proc.pid}\n")
    return proc.pid


def wait_for(
    what: str, check: Callable[[], bool], pid: int | None, log: Path, timeout: float = START_TIMEOUT_S
) -> None:
    """Poll until `check()` is true; fail naming the log as soon as the process died, or at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        if pid is not None and not alive(pid):
            raise StackError(f"{what} exited during start-up; see {log}:\n{tail(log)}")
        time.sleep(0.5)
    raise StackError(f"{what} not ready after {timeout:.0f} s; see {log}:\n{tail(log)}")


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def stop_group(pid: int, grace_s: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def http(
    url: str, data: dict | None = None, auth: tuple[str, str] | None = None, timeout: float = 10
) -> tuple[int, str]:
    """One JSON request; returns (status, body) for HTTP errors too, raises OSError when nothing answers."""
    request = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode())
    request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


# --- PostgreSQL --------------------------------------------------------------------------------------------------


def pg_bin() -> Path:
    """The newest installed PostgreSQL's server binaries (Debian keeps them off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise StackError("PostgreSQL is not installed: apt-get install postgresql (Debian's package; no server runs)")
    return found[-1].parent


def as_db_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its server commands as the `postgres` system user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def check_reachable_by_postgres(path: Path) -> None:
    """As root the server runs as `postgres`, which must be able to enter every folder above its data folder."""
    if os.geteuid() != 0:
        return
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise StackError(
                f"the postgres user cannot enter {parent} (mode {oct(parent.stat().st_mode & 0o777)}); "
                f"put STACK_DIR under a folder others may enter, or `chmod o+x {parent}`"
            )


def start_postgres(stack: Stack, creds: dict[str, str]) -> str:
    bindir = pg_bin()
    data, run = stack.pgdata, stack.path("pg", "run")
    check_reachable_by_postgres(stack.path("pg"))
    fresh = not (data / "PG_VERSION").exists()
    run.mkdir(parents=True, exist_ok=True)
    stack.log("postgres").parent.mkdir(parents=True, exist_ok=True)
    if fresh:
        data.mkdir(parents=True, exist_ok=True)
        pwfile = stack.path("pg", "pwfile")
        write_private(pwfile, creds["SSLOPS_STACK_PG_PASSWORD"] + "\n")
        owned = [data, run, pwfile, stack.log("postgres")]
        stack.log("postgres").touch()
        if os.geteuid() == 0:
            postgres = pwd.getpwnam("postgres")
            for path in owned:
                os.chown(path, postgres.pw_uid, postgres.pw_gid)
        try:
            subprocess.run(
                as_db_owner(
                    [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}",
                     "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]
                ),
                check=True, capture_output=True, text=True,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise StackError(f"initdb failed:\n{exc.stdout}\n{exc.stderr}") from exc
        finally:
            pwfile.unlink()
    options = f"-c listen_addresses={stack.host} -p {stack.pg_port} -c unix_socket_directories={run}"
    result = subprocess.run(
        as_db_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(stack.log("postgres")), "-o", options,
                     "-w", "-t", "60", "start"]),
        capture_output=True, text=True, start_new_session=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise StackError(f"PostgreSQL did not start:\n{result.stdout}{result.stderr}\n{tail(stack.log('postgres'))}")
    env = {**os.environ, "PGPASSWORD": creds["SSLOPS_STACK_PG_PASSWORD"]}
    psql = [str(bindir / "psql"), "-h", stack.host, "-p", str(stack.pg_port), "-U", PG_USER, "-d", "postgres", "-tAc"]
    for db in DATABASES:
        exists = subprocess.run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{db}'"], env=env,
                                capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        if not exists:
            subprocess.run([*psql, f"CREATE DATABASE {db}"], env=env, capture_output=True, check=True)
    return "initialised and started" if fresh else "started"


def postgres_running(stack: Stack) -> bool:
    return (stack.pgdata / "postmaster.pid").exists() and port_open(stack.host, stack.pg_port)


def stop_postgres(stack: Stack) -> bool:
    if not (stack.pgdata / "postmaster.pid").exists():
        return False
    subprocess.run(
        as_db_owner([str(pg_bin() / "pg_ctl"), "-D", str(stack.pgdata), "-m", "fast", "-w", "-t", "60", "stop"]),
        capture_output=True, check=False,
    )  # fmt: skip
    return True


# --- MLflow ------------------------------------------------------------------------------------------------------


AUTH_CACHE_S = 60


def start_mlflow(stack: Stack, creds: dict[str, str]) -> str:
    pw = creds["SSLOPS_STACK_PG_PASSWORD"]
    ini = stack.path("mlflow", "basic_auth.ini")
    write_private(
        ini,
        "[mlflow]\n"
        "default_permission = READ\n"  # teammates read each other's runs; only owners and admins change them
        f"database_uri = {stack.db_url('psycopg2', 'mlflow_auth', pw)}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Every request carries basic auth, and checking a password is a deliberately slow hash (scrypt): uncached,
        # the checks alone kept an MLflow worker at ~60 % of a core through a pipeline run on 2 cores. A checked
        # password is remembered for 60 s per server process: a password changed or a user deleted through
        # another process is refused there only after up to 60 s (docs/deployment.md).
        f"auth_cache_ttl_seconds = {AUTH_CACHE_S}\n",
    )
    artifacts = stack.path("mlflow", "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": stack.db_url("psycopg2", "mlflow", pw),  # not an argument: `ps` shows those
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": creds["SSLOPS_STACK_MLFLOW_ADMIN_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["SSLOPS_STACK_FLASK_SECRET"],
    }
    pid = spawn(
        stack,
        "mlflow",
        [str(BIN / "mlflow"), "server", "--host", stack.host, "--port", str(stack.mlflow_port),
         "--serve-artifacts", "--artifacts-destination", str(artifacts),
         "--app-name", "basic-auth", "--workers", "2"],
        env,
    )  # fmt: skip
    wait_for("MLflow server", lambda: http(f"{stack.mlflow_url}/health")[0] == 200, pid, stack.log("mlflow"))
    admin = ("admin", creds["SSLOPS_STACK_MLFLOW_ADMIN_PASSWORD"])
    user = {"username": MLFLOW_PIPELINE_USER, "password": creds["SSLOPS_STACK_MLFLOW_PASSWORD"]}
    status, body = http(f"{stack.mlflow_url}/api/2.0/mlflow/users/create", user, admin)
    if status != 200 and "RESOURCE_ALREADY_EXISTS" not in body:
        raise StackError(f"could not create the MLflow user {MLFLOW_PIPELINE_USER!r}: HTTP {status} {body[:300]}")
    return "started"


def runs_address(stack: Stack, creds: dict[str, str]) -> str | None:
    """The MLflow UI address of the project's runs, creating its experiment (owned by the pipeline user) if needed.

    MLflow 3.17's UI opens an experiment in its GenAI view (a traces overview) unless the browser chose "Model
    training"; an address with the experiment's id and `workflowType=machine_learning` opens on the runs.
    """
    name = project_setting("tracking", "experiment", "STACK_EXPERIMENT")
    if name is None:
        return None
    auth = (MLFLOW_PIPELINE_USER, creds["SSLOPS_STACK_MLFLOW_PASSWORD"])
    api = f"{stack.mlflow_url}/api/2.0/mlflow/experiments"
    kind = [{"key": "mlflow.experimentKind", "value": "custom_model_development"}]  # as the stages create it
    status, body = http(f"{api}/create", {"name": name, "tags": kind}, auth)
    if status != 200:
        status, body = http(f"{api}/get-by-name?experiment_name={urllib.parse.quote(name)}", auth=auth)
    if status != 200:
        raise StackError(f"could not find or create the MLflow experiment {name!r}: HTTP {status} {body[:300]}")
    found = json.loads(body)
    experiment_id = found.get("experiment_id") or found["experiment"]["experiment_id"]
    return f"{stack.mlflow_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


# --- Prefect -----------------------------------------------------------------------------------------------------


def prefect_env(stack: Stack, creds: dict[str, str], home: str) -> dict[str, str]:
    """A Prefect process's environment: the stack as its API, its own PREFECT_HOME, the project's tools first."""
    stack.path("prefect", home).mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        **client_env(stack, creds),
        "PREFECT_HOME": str(stack.path("prefect", home)),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def start_prefect(stack: Stack, creds: dict[str, str]) -> str:
    env = {
        **prefect_env(stack, creds, "server"),
        "PREFECT_API_DATABASE_CONNECTION_URL": stack.db_url("asyncpg", "prefect", creds["SSLOPS_STACK_PG_PASSWORD"]),
        "PREFECT_SERVER_API_AUTH_STRING": creds["SSLOPS_STACK_PREFECT_AUTH"],
        "PREFECT_SERVER_API_HOST": stack.host,
        "PREFECT_SERVER_API_PORT": str(stack.prefect_port),
        "PREFECT_UI_API_URL": f"{stack.prefect_url}/api",  # the UI calls this port, not 4200
    }
    pid = spawn(
        stack, "prefect",
        [str(BIN / "prefect"), "server", "start", "--host", stack.host, "--port", str(stack.prefect_port)], env,
    )  # fmt: skip
    wait_for("Prefect server", lambda: http(f"{stack.prefect_url}/api/health")[0] == 200, pid, stack.log("prefect"))
    return "started"


def ensure_pool(stack: Stack, creds: dict[str, str]) -> None:
    """The process work pool, limited to one concurrent flow run: two pipeline runs never share the two cores."""
    env = prefect_env(stack, creds, "client")
    prefect = str(BIN / "prefect")
    found = subprocess.run([prefect, "work-pool", "inspect", stack.pool], env=env, capture_output=True, text=True)
    if found.returncode != 0:
        made = subprocess.run([prefect, "work-pool", "create", stack.pool, "--type", "process"], env=env,
                              capture_output=True, text=True)  # fmt: skip
        if made.returncode != 0:
            raise StackError(f"could not create the work pool {stack.pool!r}:\n{made.stdout}{made.stderr}")
    limit = subprocess.run([prefect, "work-pool", "set-concurrency-limit", stack.pool, "1"], env=env,
                           capture_output=True, text=True)  # fmt: skip
    if limit.returncode != 0:
        raise StackError(f"could not limit the work pool {stack.pool!r}:\n{limit.stdout}{limit.stderr}")


HEARTBEAT_S = 30  # flow runs report every 30 s (Prefect's minimum); the automation below waits 3 beats
ZOMBIE_AUTOMATION = {
    "name": "crash flow runs whose heartbeat stopped",
    "description": "A flow run that misses 3 heartbeats (its worker or machine died) is marked Crashed.",
    "trigger": {
        "type": "event",
        "posture": "Proactive",
        "after": ["prefect.flow-run.heartbeat"],
        "expect": [
            "prefect.flow-run.heartbeat",
            "prefect.flow-run.Completed",
            "prefect.flow-run.Failed",
            "prefect.flow-run.Cancelled",
            "prefect.flow-run.Crashed",
        ],
        "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
        "for_each": ["prefect.resource.id"],
        "threshold": 1,
        "within": 3 * HEARTBEAT_S,
    },
    "actions": [
        {"type": "change-flow-run-state", "state": "CRASHED", "message": "no heartbeat for 90 s: its process is gone"}
    ],
}


def ensure_zombie_automation(stack: Stack, creds: dict[str, str]) -> None:
    """Prefect's documented answer to a worker that dies mid-run: the run's heartbeats stop, and this automation
    marks it Crashed (otherwise it stays Running for ever, holding the pool's only concurrency slot)."""
    env = prefect_env(stack, creds, "client")
    prefect = str(BIN / "prefect")
    found = subprocess.run([prefect, "automation", "inspect", ZOMBIE_AUTOMATION["name"]], env=env,
                           capture_output=True, text=True)  # fmt: skip
    if found.returncode == 0 and "not found" not in (found.stdout + found.stderr).lower():
        return
    made = subprocess.run([prefect, "automation", "create", "--from-json", json.dumps(ZOMBIE_AUTOMATION)], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode != 0:
        raise StackError(f"could not create the automation for crashed runs:\n{made.stdout}{made.stderr}")


def start_worker(stack: Stack, creds: dict[str, str]) -> str:
    ensure_pool(stack, creds)
    ensure_zombie_automation(stack, creds)
    env = {
        **prefect_env(stack, creds, "worker"),
        "PREFECT_WORKER_QUERY_SECONDS": "5",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),  # inherited by the flow-run processes
    }
    env.pop("SSLOPS_ROOT", None)  # each deployment's pull step sets its own project folder
    pid = spawn(
        stack, "worker",
        [str(BIN / "prefect"), "worker", "start", "--pool", stack.pool, "--type", "process",
         "--name", f"{stack.pool}-worker-1"], env,
    )  # fmt: skip
    wait_for("Prefect worker", lambda: "started" in tail(stack.log("worker"), 50).lower(), pid, stack.log("worker"), 90)
    return "started"


# --- DVC remote --------------------------------------------------------------------------------------------------


def configure_remote(stack: Stack) -> str:
    """The folder remote as the default remote of the project in the working directory, in .dvc/config.local
    (a path of this machine: not in git; a teammate's clone adds its own, see docs/deployment.md)."""
    stack.remote.mkdir(parents=True, exist_ok=True)
    project = Path.cwd()
    if not (project / ".dvc").is_dir():
        return f"{stack.remote} (not set as a remote: {project} is not a DVC project)"
    subprocess.run([str(BIN / "dvc"), "remote", "add", "--local", "--default", "--force", "stack", str(stack.remote)],
                   cwd=project, check=True, capture_output=True)  # fmt: skip
    return f"{stack.remote} (default remote 'stack' of {project}, in .dvc/config.local)"


# --- commands ----------------------------------------------------------------------------------------------------


def service_running(stack: Stack, service: str) -> bool:
    return postgres_running(stack) if service == "postgres" else running_pid(stack, service) is not None


PORTS = {"postgres": "pg_port", "mlflow": "mlflow_port", "prefect": "prefect_port"}
STARTERS = {"postgres": start_postgres, "mlflow": start_mlflow, "prefect": start_prefect, "worker": start_worker}


def up(stack: Stack) -> int:
    started = time.monotonic()
    order = ["postgres", *reversed(SERVICES)]
    if all(service_running(stack, s) for s in order):
        print(f"the stack in {stack.dir} is already running")
        print_urls(stack)
        return 0
    for service, attr in PORTS.items():  # every port first: fail before starting anything
        port = getattr(stack, attr)
        if not service_running(stack, service) and port_open(stack.host, port):
            env_name = f"STACK_{'PG' if service == 'postgres' else service.upper()}_PORT"
            raise StackError(f"port {stack.host}:{port} ({service}) is taken by another process; set {env_name}")
    stack.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(stack.dir, 0o711)  # others may pass through (postgres, as root) but not list it
    creds = credentials(stack)
    for service in order:
        if service_running(stack, service):
            print(f"  {service:9} already running")
            continue
        t0 = time.monotonic()
        print(f"  {service:9} {STARTERS[service](stack, creds)} ({time.monotonic() - t0:.1f} s)", flush=True)
    print(f"  dvc       {configure_remote(stack)}")
    write_private(stack.path("client.env"), "".join(f"export {k}={v}\n" for k, v in client_env(stack, creds).items()))
    print(f"stack up in {time.monotonic() - started:.1f} s")
    print_urls(stack)
    return 0


def print_urls(stack: Stack) -> None:
    print(f"  MLflow   {stack.mlflow_url}  (users admin, {MLFLOW_PIPELINE_USER})")
    runs = runs_address(stack, credentials(stack))
    if runs:
        print(f"  runs     {runs}")
    print(f"  Prefect  {stack.prefect_url}  (work pool {stack.pool!r}, one worker)")
    print(f"  Postgres {stack.host}:{stack.pg_port}  (role {PG_USER}; databases {', '.join(DATABASES)})")
    print(f"  DVC      {stack.remote}")
    print(
        f"credentials: {stack.path('credentials.env')}; use the stack from a shell: source {stack.path('client.env')}"
    )


def down(stack: Stack, only: list[str]) -> int:
    """Stop the stack, or only the named services (`up` starts them again: a restart)."""
    started = time.monotonic()
    stopped = []
    for service in SERVICES:
        if only and service not in only:
            continue
        pid = running_pid(stack, service)
        if pid is not None:
            stop_group(pid)
            stopped.append(service)
        stack.pidfile(service).unlink(missing_ok=True)
    if (not only or "postgres" in only) and stop_postgres(stack):
        stopped.append("postgres")
    print(
        f"stopped {', '.join(stopped) or 'nothing (the stack was not running)'} in {time.monotonic() - started:.1f} s"
    )
    return 0


def status(stack: Stack) -> int:
    every = ["postgres", *reversed(SERVICES)]
    for service in every:
        print(f"  {service:9} {'running' if service_running(stack, service) else 'stopped'}")
    return 0 if all(service_running(stack, s) for s in every) else 3


def main(argv: list[str]) -> int:
    every = ["postgres", *SERVICES]
    usage = f"usage: {Path(__file__).name} up | status | down [{' '.join(every)}]"
    if not argv or argv[0] not in ("up", "down", "status") or (argv[0] != "down" and len(argv) > 1):
        print(usage, file=sys.stderr)
        return 2
    if unknown := set(argv[1:]) - set(every):
        print(f"unknown service {', '.join(sorted(unknown))}; {usage}", file=sys.stderr)
        return 2
    try:
        if shutil.which("runuser") is None and os.geteuid() == 0:
            raise StackError("runuser (util-linux) is needed to run PostgreSQL as the postgres user")
        stack = Stack.from_env()
        if argv[0] == "down":
            return down(stack, argv[1:])
        return up(stack) if argv[0] == "up" else status(stack)
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

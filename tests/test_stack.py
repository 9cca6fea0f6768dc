"""The team stack, end to end, as a team uses it: `scripts/stack.py` (make stack) on free loopback ports, two clones
of one project as two machines, the work pool's worker running the pipeline, the shared MLflow server and DVC
remote carrying the results from one clone to the other, and the servers refusing anyone without credentials.

Real PostgreSQL (Debian's package), real MLflow and Prefect servers, a real Prefect worker, real `dvc push`/`pull`.
Marked `stack`: `make test-stack`, which .ci/run calls after `make test` (it installs the Debian packages first).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, TASK
from test_flows import make_flow_repo
from test_flows_server import free_port
from test_pipeline_dvc import GIT, RUNS

pytestmark = [pytest.mark.stack, pytest.mark.integration, pytest.mark.slow]

STACK = REPO / "scripts" / "stack.py"
OUTAGE_S = 30  # the MLflow restart test keeps the server down this long
CHROMIUM = "/usr/bin/chromium"  # Debian's; playwright downloads no browser here
POOL = "sslops-test"


@dataclass
class Stack:
    dir: Path
    env: dict[str, str]  # the stack's own settings: STACK_DIR and the ports
    client: dict[str, str]  # what `source client.env` exports: the servers and the pipeline user's credentials
    up_s: float

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [sys.executable, str(STACK), *args],
            cwd=self.dir.parent,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"stack.py {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def processes(self) -> list[str]:
        """Every live process whose command line names the stack folder (postgres -D, the servers' stores)."""
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if str(self.dir) in cmdline:
                    found.append(f"{proc.name}: {cmdline}")
        return found


def shell(*cmd: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """A command as a teammate types it, with the stack's client settings exported (or none)."""
    full = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for key in ("SSLOPS_ROOT", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        full.pop(key, None)
    full.update(env or {})
    out = subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # /tmp itself, not pytest's tmp_path: as root, PostgreSQL runs as `postgres`, which must enter every parent.
    folder = Path(tempfile.mkdtemp(prefix="sslops-stack-", dir="/tmp"))
    folder.chmod(0o755)
    env = {
        **os.environ,
        "STACK_DIR": str(folder / "stack"),
        "STACK_PG_PORT": str(free_port()),
        "STACK_MLFLOW_PORT": str(free_port()),
        "STACK_PREFECT_PORT": str(free_port()),
        "STACK_POOL": POOL,
        "STACK_EXPERIMENT": "sslops",  # tracking.experiment of the test project
    }
    started = time.monotonic()
    s = Stack(folder / "stack", env, {}, 0.0)
    try:
        up = s.run("up")
        s.up_s = time.monotonic() - started
        print(up.stdout)
        lines = (s.dir / "client.env").read_text().splitlines()  # export KEY=VALUE, as a shell sources it
        s.client = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        yield s
    finally:
        s.run("down", check=False)
        shutil.rmtree(folder, ignore_errors=True)


def request(url: str, auth: tuple[str, str] | None = None, data: dict | None = None) -> int:
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode())
    req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_stack_comes_up_once_and_refuses_strangers(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    assert stack.run("status").returncode == 0
    again = stack.run("up")
    assert "already running" in again.stdout
    assert (stack.dir / "credentials.env").stat().st_mode & 0o077 == 0  # secrets: owner only
    assert (stack.dir / "client.env").stat().st_mode & 0o077 == 0
    mlflow, prefect = stack.client["MLFLOW_TRACKING_URI"], stack.client["PREFECT_API_URL"]
    search = f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1"
    pipeline = (stack.client["MLFLOW_TRACKING_USERNAME"], stack.client["MLFLOW_TRACKING_PASSWORD"])
    assert request(search) == 401
    assert request(search, ("pipeline", "wrong")) == 401
    assert request(search, pipeline) == 200
    # A password that checked out is not hashed again for a minute (docs/deployment.md): MLflow's own reader of the
    # auth config finds the setting in the stack's.
    from mlflow.server.auth.config import read_auth_config

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(stack.dir / "mlflow" / "basic_auth.ini"))
    assert read_auth_config().auth_cache_ttl_seconds == 60
    prefect_user, _, prefect_password = stack.client["PREFECT_API_AUTH_STRING"].partition(":")
    assert request(f"{prefect}/flows/filter", data={}) == 401
    assert request(f"{prefect}/flows/filter", (prefect_user, "wrong"), data={}) == 401
    assert request(f"{prefect}/flows/filter", (prefect_user, prefect_password), data={}) == 200
    # Everything listens on loopback only.
    for port in ("STACK_PG_PORT", "STACK_MLFLOW_PORT", "STACK_PREFECT_PORT"):
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{stack.env[port]}"], capture_output=True, text=True)
        assert listening.stdout.strip() and all(
            line.split()[3].startswith("127.0.0.1:") for line in listening.stdout.splitlines()
        ), listening.stdout
    # No secret in a command line (`ps` shows them to every user) or a log.
    creds = (stack.dir / "credentials.env").read_text().splitlines()
    secrets = [line.partition("=")[2].rpartition(":")[2] for line in creds]  # the Prefect one is admin:<secret>
    exposed = [*stack.processes(), *(log.read_text() for log in (stack.dir / "logs").glob("*.log"))]
    assert not [s for s in secrets if any(s in text for text in exposed)]
    # A port someone else holds is named before anything starts.
    taken = {**stack.env, "STACK_DIR": str(stack.dir.parent / "other"), "STACK_MLFLOW_PORT": stack.env["STACK_PG_PORT"]}
    clash = subprocess.run([sys.executable, str(STACK), "up"], cwd=stack.dir, env=taken, capture_output=True, text=True)
    assert clash.returncode == 1 and f"port 127.0.0.1:{stack.env['STACK_PG_PORT']}" in clash.stderr
    assert not (stack.dir.parent / "other" / "run").exists()


@dataclass
class Team:
    """Machine A of a team: a clone with the data, pushing to a shared git server and the stack's DVC remote, its
    pipeline deployed to the stack's work pool."""

    a: Path
    shared_git: Path
    remote: str
    stack: Stack

    @contextlib.contextmanager
    def prefect(self) -> Iterator[None]:
        """This process as a Prefect client of the stack."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        api = {PREFECT_API_URL: self.stack.client["PREFECT_API_URL"]}
        with temporary_settings({**api, PREFECT_API_AUTH_STRING: self.stack.client["PREFECT_API_AUTH_STRING"]}):
            yield

    def run(self, parameters: dict | None = None, timeout: float = 900) -> Any:
        """Start a run of ssl-pipeline/pool through the API and wait until it ends: the worker executes it."""
        from prefect.deployments import run_deployment

        with self.prefect():
            return run_deployment("ssl-pipeline/pool", parameters=parameters, timeout=timeout, poll_interval=2)

    def flow_run(self, run_id: Any) -> Any:
        from prefect.client.orchestration import get_client

        with self.prefect(), get_client(sync_client=True) as client:
            return client.read_flow_run(run_id)

    def set_params(self, section: str, **values: Any) -> None:
        params = yaml.safe_load((self.a / "params.yaml").read_text())
        params[section].update(values)
        (self.a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def model_name(self) -> str:
        return json.loads((self.a / "metrics" / "register.json").read_text())["model_name"]

    def mlflow(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.stack.client["MLFLOW_TRACKING_URI"])

    def stage_runs(self, **tags: str) -> list[Any]:
        """Stage runs on the shared server (with the pipeline user's credentials), filtered by tags."""
        client = self.mlflow()
        with credentials(self.stack):
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
        return [r for r in runs if "sslops.stage" in r.data.tags and tags.items() <= r.data.tags.items()]


@contextlib.contextmanager
def credentials(stack: Stack) -> Iterator[None]:
    """The pipeline user's MLflow credentials in this process's environment, as MLflow's client reads them."""
    keys = {k: v for k, v in stack.client.items() if k.startswith("MLFLOW_TRACKING_")}
    os.environ.update(keys)
    try:
        yield
    finally:
        for key in keys:
            os.environ.pop(key, None)


@pytest.fixture(scope="module")
def team(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Team:
    root = tmp_path_factory.mktemp("team")
    t = Team(make_flow_repo(root / "a"), root / "shared.git", str(stack.dir / "dvc-remote"), stack)
    t.set_params("flow", work_pool=POOL)
    # A team's registry is shared: its record goes to git, so every clone agrees with the server.
    t.set_params("register", record_path="metrics/registered.json")
    shell("git", "init", "-q", "--bare", str(t.shared_git), cwd=root)
    shell(*GIT, "commit", "-qam", "the team's work pool and shared registry", cwd=t.a)
    shell("git", "remote", "add", "origin", str(t.shared_git), cwd=t.a)
    shell("dvc", "remote", "add", "--local", "--default", "stack", t.remote, cwd=t.a)
    deployed = shell(sys.executable, "flows/ssl_pipeline.py", "deploy", cwd=t.a, env=stack.client)
    assert f"on work pool '{POOL}'" in deployed.stdout
    return t


def test_two_clones_share_runs_models_and_data_through_the_stack(team: Team, tmp_path: Path):
    from prefect.client.orchestration import get_client

    stack, a = team.stack, team.a
    # A run started through the API is picked up by the worker (not by this process), and completes.
    run = team.run()
    assert run.state.is_completed(), f"{run.state.message}\n{tail(stack.dir / 'logs' / 'worker.log')}"
    assert run.work_pool_name == POOL and run.infrastructure_pid  # executed by the pool's worker process
    assert "Running stage 'pretrain'" in (stack.dir / "logs" / "worker.log").read_text()
    with team.prefect(), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("ssl-pipeline/pool")
    params = yaml.safe_load((a / "params.yaml").read_text())
    assert deployment.work_pool_name == POOL and deployment.schedules[0].schedule.cron == params["flow"]["cron"]
    assert deployment.parameters == {"overrides": {}}

    # A publishes: code, dvc.lock and the registry record to git; data and outputs to the DVC remote.
    shell("git", "add", "-A", cwd=a)
    shell(*GIT, "commit", "-qm", "pipeline run on the worker", cwd=a)
    shell("git", "push", "-q", "origin", "HEAD:main", cwd=a)
    assert "pushed" in shell("dvc", "push", cwd=a).stdout

    # Machine B: a fresh clone pulls everything and finds nothing to redo.
    b = tmp_path / "b"
    shell("git", "clone", "-q", "-b", "main", str(team.shared_git), str(b), cwd=tmp_path)
    shell("dvc", "remote", "add", "--local", "--default", "stack", team.remote, cwd=b)
    shell("dvc", "pull", cwd=b)
    assert json.loads(shell("dvc", "status", "--json", cwd=b).stdout) == {}
    assert (b / "artifacts" / "pretrain" / "encoder.pt").is_file()

    # B sees A's runs and the registered champion on the shared server, and the same lineage.
    assert set(RUNS) <= {r.info.run_name for r in team.stage_runs()}
    record = json.loads((b / "metrics" / "registered.json").read_text())
    assert record["tracking_uri"] == stack.client["MLFLOW_TRACKING_URI"]  # no credentials in git
    with credentials(stack):
        champion = team.mlflow().get_model_version_by_alias(record["model_name"], "champion")
    lineage_a = shell(sys.executable, "-m", "sslops", "lineage", "--json", cwd=a, env=stack.client).stdout
    lineage_b = shell(sys.executable, "-m", "sslops", "lineage", "--json", cwd=b, env=stack.client).stdout
    chain = json.loads(lineage_b)
    assert json.loads(lineage_a) == chain
    assert str(chain["model"]["version"]) == str(champion.version)
    assert {d["task"] for d in chain["downstream"]} == {TASK}
    # Without credentials B is refused, in one line that says so.
    refused = shell(sys.executable, "-m", "sslops", "lineage", cwd=b, check=False,
                    env={"MLFLOW_TRACKING_URI": stack.client["MLFLOW_TRACKING_URI"]})  # fmt: skip
    assert refused.returncode != 0 and "401" in refused.stderr and "Traceback" not in refused.stderr


def test_the_team_finds_runs_and_the_model_card_in_real_browsers(team: Team, tmp_path: Path):
    """Debian's Chromium, headless, on both servers as a teammate opens them: MLflow from the address `make stack`
    prints (runs first, not the GenAI overview) to the champion's model card; Prefect through its login to the
    deployment. Screenshots of each first screen go to $SSLOPS_SCREENSHOTS (default: the test's folder)."""
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("SSLOPS_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    client = team.stack.client
    runs_url = next(word for word in team.stack.run("up").stdout.split() if "/runs?workflowType=" in word)
    with credentials(team.stack):
        champion = team.mlflow().get_model_version_by_alias(team.model_name(), "champion")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        login = {"username": client["MLFLOW_TRACKING_USERNAME"], "password": client["MLFLOW_TRACKING_PASSWORD"]}
        page = browser.new_page(http_credentials=login, viewport={"width": 1400, "height": 900})
        page.goto(runs_url)
        for name in ("pretrain", "register", f"evaluate/{TASK}"):
            expect(page.get_by_role("link", name=name, exact=True)).to_be_visible(timeout=30_000)
        assert "/runs" in page.url and "overview" not in page.url
        page.screenshot(path=shots / "mlflow-runs.png")
        page.goto(f"{client['MLFLOW_TRACKING_URI']}/#/models/{team.model_name()}/versions/{champion.version}")
        expect(page.get_by_text(f"Model card: {team.model_name()} v{champion.version}")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("small_cnn, input 12x12x1")).to_be_visible()
        page.screenshot(path=shots / "mlflow-model-card.png")

        prefect = browser.new_page(viewport={"width": 1400, "height": 900})  # no credentials: the login page
        prefect.goto(client["PREFECT_API_URL"].removesuffix("/api") + "/deployments")
        prefect.get_by_placeholder("admin:pass").fill(client["PREFECT_API_AUTH_STRING"])
        prefect.get_by_role("button", name="Login").click()
        expect(prefect.get_by_placeholder("admin:pass")).to_be_hidden(timeout=30_000)
        prefect.goto(client["PREFECT_API_URL"].removesuffix("/api") + "/deployments")  # now with the auth string
        expect(prefect.get_by_text("ssl-pipeline").first).to_be_visible(timeout=30_000)
        expect(prefect.get_by_text("pool", exact=True).first).to_be_visible()
        prefect.screenshot(path=shots / "prefect-deployments.png")
        browser.close()


def test_the_pool_runs_one_pipeline_at_a_time(team: Team):
    """Two runs started together: the pool's concurrency limit (1) holds the second until the first has ended."""
    from prefect.deployments import run_deployment

    with team.prefect():
        first, second = (run_deployment("ssl-pipeline/pool", timeout=0) for _ in range(2))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        runs = [team.flow_run(r.id) for r in (first, second)]
        if all(r.state.is_final() for r in runs):
            break
        time.sleep(2)
    assert all(r.state.is_completed() for r in runs), [r.state for r in runs]
    earlier, later = sorted(runs, key=lambda r: r.start_time)
    gap = (later.start_time - earlier.end_time).total_seconds()
    print(f"two runs started together: the second started {gap:.1f} s after the first ended")
    assert gap >= 0, (earlier.start_time, earlier.end_time, later.start_time)


def test_an_mlflow_restart_mid_pipeline_records_nothing_twice(team: Team):
    """The tracking server goes down for 30 s and comes back while pretrain logs its epochs, in a run on the worker
    (a restart shorter than MLflow's client retries, about 15 s, goes unnoticed: measured once at 15.8 s). Checked:
    the flow retries the stage and completes, one finished pretrain run and the cut-off one marked KILLED, one model
    version per encoder."""
    from prefect.deployments import run_deployment

    stack = team.stack
    team.set_params("pretrain", seed=1, images=24000)  # stale from pretrain on, and long enough to restart under
    team.set_params("flow", retries=2, retry_delay_s=30)  # what a team sets: a retry after the server is back
    with team.prefect():
        run = run_deployment("ssl-pipeline/pool", timeout=0)
    wait_for(lambda: team.stage_runs(**{"sslops.stage": "pretrain", "prefect.flow_run_id": str(run.id)}),
             600, "pretrain of the run to start")  # fmt: skip
    time.sleep(3)  # inside the epochs
    stopped = time.monotonic()
    stack.run("down", "mlflow")
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))  # longer than the client's retries (about 15 s)
    stack.run("up")
    outage_s = time.monotonic() - stopped
    wait_for(lambda: team.flow_run(run.id).state.is_final(), 900, "the run to end")
    state = team.flow_run(run.id).state
    pretrain = team.stage_runs(**{"sslops.stage": "pretrain", "prefect.flow_run_id": str(run.id)})
    print(f"MLflow down for {outage_s:.1f} s mid-pretrain; flow run {state.type.value}; pretrain runs: "
          f"{sorted(r.info.status for r in pretrain)}")  # fmt: skip
    assert state.is_completed(), state.message
    # The stage failed as unavailable (one line, no traceback), the flow retried it once the server was back, and
    # the retry closed the cut-off run.
    assert sorted(r.info.status for r in pretrain) == ["FINISHED", "KILLED"]
    assert "sslops pretrain: unavailable: the MLflow tracking server" in (stack.dir / "logs" / "worker.log").read_text()
    with credentials(stack):
        versions = team.mlflow().search_model_versions(f"name = '{team.model_name()}'")
    shas = [v.tags["encoder.sha256"] for v in versions]
    assert len(shas) == len(set(shas)) == 2, shas  # seed 0 and seed 1: one version each, no orphan
    team.set_params("flow", retries=1, retry_delay_s=0)


def test_a_worker_killed_mid_run_leaves_a_crashed_run_and_a_rerun_redoes_only_stale_stages(team: Team):
    """The worker and everything it started are SIGKILLed while pretrain runs (a machine that died). Measured: the
    state Prefect gives the run and after how long; then a new run through a restarted worker."""
    from prefect.deployments import run_deployment

    stack = team.stack
    team.set_params("pretrain", seed=2)
    shell(*GIT, "commit", "-qam", "seed 2", cwd=team.a)
    with team.prefect():
        killed = run_deployment("ssl-pipeline/pool", timeout=0)
    wait_for(lambda: team.stage_runs(**{"sslops.stage": "pretrain", "prefect.flow_run_id": str(killed.id)}),
             600, "pretrain of the run to start")  # fmt: skip
    worker = int((stack.dir / "run" / "worker.pid").read_text())
    victims = [worker, *descendants(worker)]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    states = []
    while time.monotonic() - killed_at < 300:
        state = team.flow_run(killed.id).state
        if not states or states[-1][1] != state.type.value:
            states.append((round(time.monotonic() - killed_at), state.type.value))
        if state.is_final():
            break
        time.sleep(3)
    print(f"killed {len(victims)} processes; the run's states after the kill (s, state): {states}")
    assert states[-1][1] == "CRASHED", states
    stack.run("up")  # a new worker
    rerun = team.run()
    assert rerun.state.is_completed(), rerun.state.message
    ran = {r.info.run_name for r in team.stage_runs(**{"prefect.flow_run_id": str(rerun.id)})}
    assert ran == {"pretrain", "register", f"finetune/{TASK}", f"evaluate/{TASK}"}, ran  # prepare..augment: skipped
    cut_off = team.stage_runs(**{"sslops.stage": "pretrain", "prefect.flow_run_id": str(killed.id)})
    assert [r.info.status for r in cut_off] == ["KILLED"]  # closed by the rerun, not left RUNNING


def test_postgres_down_fails_a_stage_at_its_start_clearly(team: Team):
    stack, a = team.stack, team.a
    before = {p: p.stat().st_mtime_ns for p in (a / "artifacts").rglob("*") if p.is_file()}
    stack.run("down", "postgres")
    try:
        started = time.monotonic()
        out = shell(sys.executable, "-m", "sslops", "prepare", cwd=a, env=stack.client, check=False)
        took = time.monotonic() - started
    finally:
        stack.run("up")
    print(f"with PostgreSQL down, `sslops prepare` exited {out.returncode} after {took:.1f} s: {out.stderr.strip()}")
    assert out.returncode == 3 and out.stderr.startswith("sslops prepare: unavailable: the MLflow tracking server")
    assert "database" in out.stderr and "Traceback" not in out.stderr
    assert {p: p.stat().st_mtime_ns for p in (a / "artifacts").rglob("*") if p.is_file()} == before


def test_a_failed_run_notifies_a_webhook(team: Team):
    """`make deploy` with SSLOPS_NOTIFY_URL: a Prefect automation posts every failed run to the webhook (here a
    receiver on loopback)."""
    received: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        shell(
            sys.executable,
            "flows/ssl_pipeline.py",
            "deploy",
            cwd=team.a,
            env={**team.stack.client, "SSLOPS_NOTIFY_URL": url},
        )
        failed = team.run(parameters={"overrides": {"pretrain.no_such_key": 1}})
        assert failed.state.is_failed()
        deadline = time.monotonic() + 120
        while not received and time.monotonic() < deadline:
            time.sleep(1)
        waited = 120 - (deadline - time.monotonic())
    finally:
        server.shutdown()
    print(f"the webhook heard of the failed run after {waited:.0f} s: {received}")
    assert received and failed.name in received[0]["text"] and "Failed" in received[0]["text"]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children...), from /proc."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_for(check: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: {proc.args} exited with {proc.returncode} first")
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout} s")


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def test_stack_down_leaves_no_process(stack: Stack):
    assert stack.processes(), "the stack's processes should be visible while it runs"
    started = time.monotonic()
    down = stack.run("down")
    down_s = time.monotonic() - started
    print(f"stack up {stack.up_s:.1f} s, down {down_s:.1f} s")
    assert "postgres" in down.stdout
    assert stack.processes() == []
    assert stack.run("status", check=False).returncode == 3

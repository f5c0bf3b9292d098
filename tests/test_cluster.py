"""jobs/train.py on a real Spark standalone cluster (scripts/cluster.sh): one master and
two 1-core workers on 127.0.0.1, started and stopped by this module.

Executors get cfspark only from the zip that scripts/package.sh builds (--py-files):
their Python (PYSPARK_PYTHON) is a venv that sees numpy, pandas, pyarrow and pyspark
but not cfspark, the workers run with their own work dirs and no PYTHONPATH, and
spark-submit runs from an empty temp dir. A task that imports cfspark can then only
get it from the shipped zip.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from planted import planted_ratings
from tests_support import C1_ONLY, REPO

from cfspark.app.config import load_config
from cfspark.app.train import run_job

pytestmark = pytest.mark.cluster

SCRIPT = os.path.join(REPO, "scripts", "cluster.sh")
MAX_ITER, INTERVAL = 3, 2
# λ and λ_b are fixed: the claims here are about losses and resuming on a cluster, and each of
# the three runs would otherwise repeat the automatic search (or λ_b's task and its warm
# start), which test_end_to_end and test_spark_connect run through their jobs.
JOB = [
    "model.rank=2", "model.reg=0.1", "model.bias_reg=5", f"model.max_iter={MAX_ITER}", "model.tol=0",
    "model.num_user_blocks=2", "model.num_item_blocks=2", f"checkpoint.interval={INTERVAL}",
    "spark.shuffle_partitions=4", "output.top_n=5",
]  # fmt: skip


def _cluster_env(directory: Path) -> dict:
    return {**os.environ, "CFSPARK_CLUSTER_DIR": str(directory), "CFSPARK_PYTHON": sys.executable}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    directory = tmp_path_factory.mktemp("cluster")
    env = _cluster_env(directory)
    # Registered before start, so a start that fails half-way is cleaned up too.
    request.addfinalizer(lambda: subprocess.run([SCRIPT, "stop"], env=env, capture_output=True, timeout=120))
    proc = subprocess.run([SCRIPT, "start"], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr + _logs(directory)
    url = (directory / "master.url").read_text().strip()
    pids = {name: int((directory / f"{name}.pid").read_text()) for name in ("master", "worker-1", "worker-2")}
    return {"url": url, "dir": directory, "env": env, "pids": pids}


def _logs(directory: Path) -> str:
    return "".join(p.read_text()[-2000:] for p in sorted(directory.glob("logs/*.log")))


@pytest.fixture(scope="module")
def py_files(tmp_path_factory) -> str:
    """The documented packaging command: scripts/package.sh OUT_DIR prints the zip it built."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([os.path.join(REPO, "scripts", "package.sh"), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def executor_python(tmp_path_factory) -> str:
    """A venv whose site-packages point at this venv's, minus cfspark: a .pth file adds the
    directory to sys.path, but only a site dir's own .pth files run, so the editable
    install's finder (a .pth in this venv's site-packages) is never installed."""
    venv = tmp_path_factory.mktemp("executor-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(site, "cfspark-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = "import numpy, pandas, pyarrow, pyspark\ntry:\n import cfspark\nexcept ImportError:\n print('no cfspark')"
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=venv).stdout == "no cfspark\n"
    return python


@pytest.fixture(scope="module")
def ratings(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cluster-data") / "ratings.csv"
    p = planted_ratings(n_users=60, n_items=40, rank=2, density=0.4, noise=0.3, seed=9)
    path.write_text("userId,movieId,rating\n" + "".join(f"{u},{i},{r:.3f}\n" for u, i, r in p.rows()))
    return path


def submit_command(cluster, py_files: str, ratings: Path, out: Path) -> list[str]:
    """spark.locality.wait=0: with one core per executor, a task whose cached input sits on the
    busy executor would otherwise wait up to 3 s before it runs on the idle one (the module
    ran in 209 s against 231 s, one run each). Where a task runs changes no result."""
    submit = os.path.join(os.path.dirname(sys.executable), "spark-submit")
    sets = [f"input.path={ratings}", f"output.path={out}", *JOB]
    return [
        submit, "--master", cluster["url"], "--driver-memory", "1g", "--executor-memory", "768m",
        "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
        "--conf", "spark.ui.enabled=false", "--conf", "spark.locality.wait=0", "--py-files", py_files,
        "--conf", f"spark.driver.extraJavaOptions={C1_ONLY}", "--conf", f"spark.executor.extraJavaOptions={C1_ONLY}",
        os.path.join(REPO, "jobs", "train.py"), *[a for s in sets for a in ("--set", s)],
    ]  # fmt: skip


def submit_env(executor_python: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYSPARK_PYTHON": executor_python, "PYSPARK_DRIVER_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1"}  # fmt: skip


def start_job(cluster, py_files, executor_python, ratings, out: Path, log: Path) -> subprocess.Popen:
    """spark-submit in its own session (so the test can kill the whole driver), cwd an empty dir."""
    cwd = out.parent / "submit-cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.Popen(
        submit_command(cluster, py_files, ratings, out),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=submit_env(executor_python),
        cwd=cwd,
        start_new_session=True,
    )


def wait_for(predicate, proc: subprocess.Popen, log: Path, seconds: float = 600) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, f"the job ended early ({proc.returncode}):\n{log.read_text()[-4000:]}"
        assert time.time() < deadline, log.read_text()[-4000:]
        time.sleep(0.2)


def finish(proc: subprocess.Popen, log: Path) -> str:
    try:
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


@pytest.fixture(scope="module")
def local_run(spark, ratings, tmp_path_factory):
    """The reference: the same job in local mode (the test session, local[2]), in-process."""
    out = tmp_path_factory.mktemp("local") / "out"
    cfg = load_config(None, [f"input.path={ratings}", f"output.path={out}", *JOB])
    run_job(spark, cfg)
    return out


@pytest.fixture(scope="module")
def cluster_run(cluster, py_files, executor_python, ratings, tmp_path_factory):
    """The job on the cluster through both failures, in two submissions: worker-1's executor
    is killed once iteration 1 has ended, the driver once the first checkpoint (taken after
    that loss) is complete; then the same command again resumes from the checkpoint and
    finishes. Every check against the local run then holds through both losses."""
    tmp = tmp_path_factory.mktemp("on-cluster")
    log, out = tmp / "job.log", tmp / "out"
    marker = Path(f"{out}_checkpoints", "latest.json")
    proc = start_job(cluster, py_files, executor_python, ratings, out, log)
    try:
        wait_for(lambda: "iteration 1/" in log.read_text(), proc, log)
        pids = executor_pids(cluster["pids"]["worker-1"])
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: "Lost executor" in log.read_text(), proc, log)
        wait_for(marker.exists, proc, log)  # the first checkpoint is complete
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver: spark-submit's JVM and its Python
        proc.wait(timeout=60)
    killed = {"returncode": proc.returncode, "output_existed": out.exists(), "log": log.read_text(),
              "saved": json.loads(marker.read_text())["iteration"]}  # fmt: skip
    rerun = start_job(cluster, py_files, executor_python, ratings, out, tmp / "rerun.log")
    return out, finish(rerun, tmp / "rerun.log"), killed


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def factors(spark, out: Path) -> dict:
    users = spark.read.parquet(str(out / "model" / "user_factors")).collect()
    items = spark.read.parquet(str(out / "model" / "item_factors")).collect()
    return {("u", r.userId): [*r.features, r.bias] for r in users} | {("i", r.movieId): list(r.features) for r in items}


def assert_same_factors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) == 100
    assert max(float(np.max(np.abs(np.subtract(a[k], b[k])))) for k in a) <= 1e-6


def _listening(pid: int) -> set[str]:
    """Addresses the process listens on (TCP LISTEN sockets whose inode it holds)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addr = fields[1].split(":")[0]
                found.add(addr)
    return found


# 127.0.0.1 as /proc/net shows it: little-endian IPv4, or the IPv4-mapped IPv6 form.
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}


def test_cluster_script_runs_master_and_two_workers_on_loopback_only(cluster):
    proc = subprocess.run([SCRIPT, "status"], env=cluster["env"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    assert "worker-1: running" in proc.stdout and "worker-2: running" in proc.stdout
    assert cluster["url"].startswith("spark://127.0.0.1:") and not cluster["url"].endswith(":7077")
    for name, pid in cluster["pids"].items():
        addresses = _listening(pid)
        assert addresses and addresses <= LOOPBACK, (name, addresses)
    log = (cluster["dir"] / "logs" / "master.log").read_text()
    assert log.count("Registering worker 127.0.0.1") == 2
    for n in (1, 2):
        assert "with 1 cores, 1024.0 MiB RAM" in (cluster["dir"] / "logs" / f"worker-{n}.log").read_text()


def test_same_answer_on_the_cluster_as_in_local_mode(spark, cluster_run, local_run):
    out, text, _ = cluster_run
    assert "results in" in text
    a, b = metrics(out), metrics(local_run)
    assert a["counts"] == b["counts"]
    for split in ("train", "test"):
        for key in ("rmse", "mae"):
            assert abs(a[split][key] - b[split][key]) <= 1e-6, (split, key)
    recs = [sorted(map(tuple, spark.read.parquet(str(o / "recommendations")).collect())) for o in (out, local_run)]
    assert [r[:3] for r in recs[0]] == [r[:3] for r in recs[1]] and len(recs[0]) == 60 * 5
    assert np.allclose([r[3] for r in recs[0]], [r[3] for r in recs[1]], rtol=0, atol=1e-6)
    assert_same_factors(factors(spark, out), factors(spark, local_run))


def test_executors_ran_on_the_workers_with_the_shipped_zip(cluster, cluster_run, py_files):
    """Each executor's cwd is its worker's work dir, where Spark fetched the --py-files zip."""
    zips = sorted(cluster["dir"].glob(f"worker-*/app-*/*/{os.path.basename(py_files)}"))
    assert {p.parent.parent.parent.name for p in zips} == {"worker-1", "worker-2"}


def test_executor_loss_mid_training_gives_the_undisturbed_factors(cluster_run):
    _, _, killed = cluster_run
    text = killed["log"]
    lost_at = text.index("Lost executor")
    assert "iteration 1/" in text[:lost_at] and "iteration 2/" not in text[:lost_at]  # killed mid-training
    # Training went on without it to the checkpoint the resumed run starts from, and that run
    # ends on the local run's factors, metrics and recommendations (the test above).
    assert killed["saved"] >= INTERVAL


def executor_pids(worker: int) -> list[int]:
    """The executor JVMs a worker launched: its children running CoarseGrainedExecutorBackend."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if parent == worker and b"CoarseGrainedExecutorBackend" in command:
            found.append(int(entry))
    return found


def test_driver_loss_then_the_same_command_resumes_from_the_last_checkpoint(cluster_run, local_run):
    out, text, killed = cluster_run
    assert killed["returncode"] == -signal.SIGKILL and not killed["output_existed"]
    saved = killed["saved"]
    assert saved >= INTERVAL and saved < MAX_ITER
    assert f"resuming from the checkpoint at iteration {saved}" in text
    assert f"iteration {saved}/" not in text and f"iteration {MAX_ITER}/" in text
    a, b = metrics(out), metrics(local_run)
    for split in ("train", "test"):
        for key, value in b[split].items():
            assert a[split][key] == pytest.approx(value, abs=1e-6), (split, key)
    assert [it["iteration"] for it in a["iterations"]] == list(range(1, MAX_ITER + 1))
    assert np.allclose([it["train_loss"] for it in a["iterations"]], [it["train_loss"] for it in b["iterations"]],
                       rtol=1e-9)  # fmt: skip

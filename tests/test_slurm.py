"""`nnsweep run --cluster` on a real SLURM (tests/slurm_fixture.py) through dask-jobqueue.

The cluster file is cluster/slurm-local.yaml, the one cluster/README.md gives for
this test cluster: queue ``debug``, one core and one worker process per job,
the scheduler on 127.0.0.1, adapt to two jobs; the tests only point its job
script at this venv and put logs in the test's folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_helpers import (assert_bit_identical, n_done_seeds, read_arrays, reference_run, wait_until,
                              write_spec)
from slurm_fixture import slurm  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "sweeps" / "quickstart.yaml"
# 12 blocks of most of a second each on one core: a job can be cancelled, or end,
# mid-sweep with most blocks still to do.
LONGER = {
    "name": "longer", "random_seed": 5,
    "network": {"input_dim": 64, "output_dim": 10},
    "grid": {"L": [8], "m": [512], "ratio": [0.1, 0.3], "seeds": 36},
    "noise": {"draws": 768},  # blocks of about 1.5 s: the sweep outlasts a job's replacement
    "execution": {"seeds_per_block": 3},
}


def env() -> dict:
    """The environment of the commands a test runs (SLURM_CONF is set by the fixture).

    dask's default waits 15 s before it gives up on a lost worker's job and asks
    for a new one; the tests wait 2 s so that a replacement comes within the sweep.
    """
    return {**os.environ, "PYTHONUNBUFFERED": "1", "DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": "2s"}


def cluster_file(tmp: Path, prologue: tuple[str, ...] = ()) -> Path:
    """cluster/slurm-local.yaml, the file cluster/README.md gives for this test cluster, with this
    venv, and logs and scratch in ``tmp``."""
    raw = yaml.safe_load((REPO / "cluster" / "slurm-local.yaml").read_text())
    raw["cluster"].update({
        "job_script_prologue": [f"source {sys.prefix}/bin/activate", f"cd {tmp}", *prologue],
        "log_directory": str(tmp / "logs"),
        "local_directory": str(tmp / "dask"),
    })
    path = tmp / "slurm.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def jobs_started(tmp: Path) -> set[str]:
    """Ids of the jobs that ran (each job writes its own log file, name-<id>.out)."""
    return {p.stem.rsplit("-", 1)[-1] for p in (tmp / "logs").glob("*.out")}


def nnsweep(spec: Path, store: Path, cluster: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(spec), "--store", str(store),
                             "--cluster", str(cluster), "--no-progress"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env(), cwd=log.parent)


def finish(p: subprocess.Popen, log: Path, timeout: float = 150) -> str:
    try:
        rc = p.wait(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
    text = log.read_text()
    assert rc == 0, text
    assert "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def longer(tmp_path_factory) -> tuple[Path, dict]:
    """LONGER's spec file, and its results computed block by block in this process, without Dask."""
    return reference_run(tmp_path_factory.mktemp("longer"), LONGER)


def test_run_on_slurm_equals_a_local_run_bit_for_bit(slurm, tmp_path):
    cfg = cluster_file(tmp_path)
    out = tmp_path / "slurm.zarr"
    text = finish(nnsweep(QUICKSTART, out, cfg, tmp_path / "client.log"), tmp_path / "client.log")
    assert "24 blocks computed, 0 already done, 0 failed, of 24" in text, text
    local = tmp_path / "local.zarr"
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", str(QUICKSTART), "--store", str(local),
                        "--workers", "2", "--no-progress"], capture_output=True, text=True, env=env(),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert_bit_identical(read_arrays(out), read_arrays(local), "slurm vs local")
    assert read_arrays(out, ["done"])["done"].all()
    assert len(jobs_started(tmp_path)) >= 1
    assert not slurm.jobs(), "jobs outlived the run"


def test_scancel_a_worker_job_mid_sweep_completes_identical(slurm, longer, tmp_path):
    spec, ref = longer
    cfg = cluster_file(tmp_path)
    out = tmp_path / "run.zarr"
    client = nnsweep(spec, out, cfg, tmp_path / "client.log")
    wait_until(lambda: len(slurm.jobs()) == 2 and n_done_seeds(out) >= 6, 90, "two jobs and two blocks",
               interval=0.1)
    victim = sorted(slurm.jobs())[0]
    assert n_done_seeds(out) < 36, "the sweep finished before a job could be cancelled"
    slurm.command("scancel", victim)
    wait_until(lambda: len(jobs_started(tmp_path)) >= 3, 90, "a replacement job", interval=0.1)
    text = finish(client, tmp_path / "client.log")
    assert "0 failed" in text, text
    assert victim in jobs_started(tmp_path)
    assert_bit_identical(read_arrays(out), ref, "after scancel")


def test_jobs_that_end_mid_sweep_are_replaced_and_the_run_completes(slurm, longer, tmp_path):
    # The first two jobs end by themselves 4 s after their worker starts, as jobs do
    # at their walltime (dask's worker lifetime, which dask-jobqueue recommends for
    # leaving before the walltime). SLURM counts time limits in whole minutes, too
    # coarse for a test; a job killed by SLURM is the scancel test.
    spec, ref = longer
    first_two = (f"mkdir {tmp_path}/first-1 2>/dev/null || mkdir {tmp_path}/first-2 2>/dev/null && "
                 "export DASK_DISTRIBUTED__WORKER__LIFETIME__DURATION=4s")
    cfg = cluster_file(tmp_path, prologue=(first_two,))
    out = tmp_path / "run.zarr"
    text = finish(nnsweep(spec, out, cfg, tmp_path / "client.log"), tmp_path / "client.log")
    assert "0 failed" in text, text
    logs = {job: (tmp_path / "logs" / f"dask-worker-{job}.err").read_text() for job in jobs_started(tmp_path)}
    ended = [job for job, log in logs.items() if "worker-lifetime-reached" in log]
    assert len(ended) == 2, f"expected the first two jobs to end mid-sweep, ended: {ended}"
    assert len(logs) >= 3, "no replacement job ran"
    assert_bit_identical(read_arrays(out), ref, "with ending jobs")


def test_cluster_show_prints_the_script_that_was_submitted(slurm, tmp_path):
    cfg = cluster_file(tmp_path)
    shown = subprocess.run([sys.executable, "-m", "pipeline", "cluster", "show", str(cfg)], capture_output=True,
                           text=True, env=env(), timeout=60, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    out = tmp_path / "run.zarr"
    one_block = write_spec(tmp_path, {"grid": {"L": [2], "m": [8], "ratio": [0.1], "seeds": 1}})
    client = nnsweep(one_block, out, cfg, tmp_path / "client.log")
    job = wait_until(lambda: slurm.jobs(), 60, "a submitted job", interval=0.1)[0]
    submitted = slurm.command("scontrol", "write", "batch_script", job, "-")
    finish(client, tmp_path / "client.log")

    def normal(script: str) -> str:
        # the scheduler's port differs between two clusters; a job's worker name is given at submission
        script = re.sub(r"tcp://127\.0\.0\.1:\d+", "tcp://127.0.0.1:PORT", script)
        return re.sub(r"--name \S+", "--name NAME", script).strip()

    assert normal(submitted) == normal(shown.stdout)
    assert "#SBATCH -p debug" in submitted and f"source {sys.prefix}/bin/activate" in submitted


def test_a_job_the_batch_system_refuses_fails_at_once_naming_the_reason(slurm, tmp_path):
    cfg = cluster_file(tmp_path)
    cfg.write_text(cfg.read_text().replace("queue: debug", "queue: nosuchqueue"))
    out = tmp_path / "run.zarr"
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", str(QUICKSTART), "--store", str(out),
                        "--cluster", str(cfg), "--no-progress"], capture_output=True, text=True, env=env(),
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert "refused the first job" in r.stderr and "invalid partition" in r.stderr.lower(), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert not out.exists()
    assert not slurm.jobs()


def test_ctrl_c_cancels_the_jobs_and_says_how_to_resume(slurm, tmp_path):
    spec = write_spec(tmp_path, LONGER)
    out = tmp_path / "run.zarr"
    client = nnsweep(spec, out, cluster_file(tmp_path), tmp_path / "client.log")
    wait_until(lambda: n_done_seeds(out) >= 3, 90, "a first block", interval=0.1)
    assert slurm.jobs(), "no job running mid-sweep"
    client.send_signal(signal.SIGINT)
    assert client.wait(timeout=60) == 130, (tmp_path / "client.log").read_text()
    last = (tmp_path / "client.log").read_text().strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGINT): ") and "Run the same command again" in last, last
    wait_until(lambda: not slurm.jobs(), 30, "the run's jobs to be cancelled", interval=0.2)

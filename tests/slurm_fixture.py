"""A real single-node SLURM for the tests: munged, slurmctld and slurmd on 127.0.0.1.

Everything lives in a temporary directory: slurm.conf, the munge key and
socket, state, spool, logs and pid files. The daemons listen on free ports, so
the test cluster never touches a SLURM or munge the machine already runs, and
the fixture stops exactly the processes it started (by pid). The Debian
packages are installed with apt-get when they are missing and the tests run as
root; otherwise the tests fail with a message saying what to install.
cluster/README.md describes the same setup for trying SLURM on a laptop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "scancel", "squeue", "sinfo")
NODE = PARTITION = "debug"
NODE_CPUS = 4  # more job slots than cores: a replacement job need not wait for a cancelled one to be reaped

SLURM_CONF = """\
ClusterName=nnsweep-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=8192 State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _missing() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None]


def ensure_packages() -> None:
    """Install the SLURM and munge packages with apt-get if a program is missing.

    Fails the test (never skips it) when they are missing and cannot be installed.
    """
    if not _missing():
        return
    hint = ("the SLURM tests need the Debian/Ubuntu packages " + " ".join(PACKAGES) +
            f" (missing programs: {', '.join(_missing())}); install them with "
            "`apt-get install -y " + " ".join(PACKAGES) + "` as root, then rerun")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(hint, pytrace=False)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if p.returncode:
            pytest.fail(f"{' '.join(cmd)} failed ({p.stderr.strip()[-500:]}); {hint}", pytrace=False)
    if _missing():
        pytest.fail(hint, pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Slurm:
    """A running test cluster: its directory, slurm.conf and the daemons' processes."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.conf = directory / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    def command(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """Run a SLURM client command (sinfo, squeue, scancel, ...) against this cluster."""
        p = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode:
            raise RuntimeError(f"{' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def jobs(self) -> list[str]:
        """Ids of this cluster's jobs that are pending or running."""
        return self.command("squeue", "-h", "-o", "%i", "-t", "PENDING,RUNNING,CONFIGURING").split()

    def start(self) -> None:
        (self.dir / "state").mkdir()
        (self.dir / "spool").mkdir()
        key = self.dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = self.dir / "munge.sock"
        self.conf.write_text(SLURM_CONF.format(
            host=socket.gethostname().split(".")[0], ctld_port=_free_port(), slurmd_port=_free_port(),
            munge_socket=sock, dir=self.dir, node=NODE, partition=PARTITION, cpus=NODE_CPUS))
        self._spawn("munged", "munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}",
                    f"--pid-file={self.dir}/munged.pid", f"--log-file={self.dir}/munged.log",
                    f"--seed-file={self.dir}/munged.seed")
        self._wait(sock.exists, "munged's socket")
        self._spawn("slurmctld", "slurmctld", "-D", "-i", "-f", str(self.conf))
        self._spawn("slurmd", "slurmd", "-D", "-N", NODE, "-f", str(self.conf))
        self._wait(lambda: self.command("sinfo", "-h", "-n", NODE, "-o", "%T", check=False).strip() == "idle",
                   f"node {NODE} idle")

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.dir / f"{name}.out", "w")
        self.procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           cwd=self.dir))

    def _wait(self, cond, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {f.name}\n{f.read_text()[-2000:]}" for f in sorted(self.dir.glob("*.log"))
                                 + sorted(self.dir.glob("*.out")))
                raise RuntimeError(f"test SLURM: {'exited: ' + ', '.join(dead) if dead else 'timed out'} "
                                   f"waiting for {what}\n{logs}")
            time.sleep(0.2)

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job of this cluster and wait until none is left."""
        if self.jobs():
            self.command("scancel", "--full", *self.jobs(), check=False)
        self._wait(lambda: not self.jobs(), "all jobs to end", timeout)

    def stop(self) -> None:
        """Stop exactly the daemons started here, newest first: SIGTERM, then SIGKILL."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running single-node SLURM (node and partition ``debug``); ``SLURM_CONF`` points at it.

    The variable is set for the whole session so that dask-jobqueue's sbatch and
    scancel, and every subprocess, talk to this cluster.
    """
    ensure_packages()
    if os.geteuid() != 0:
        pytest.fail("the SLURM tests start slurmctld and slurmd, which run jobs as root here: run them as "
                    "root (for example in a container or VM)", pytrace=False)
    cluster = Slurm(tmp_path_factory.mktemp("slurm"))
    old = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
        cluster.cancel_all()  # jobs outlive slurmd: end them through slurmctld first
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old

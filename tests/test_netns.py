"""Many machines, for real: the scheduler and the workers in separate network namespaces.

Two namespaces joined by a veth pair, with addresses the test makes itself
(10.231.x.1 and 10.231.x.2): nothing runs on loopback. The scheduler and the
client (``python -m pipeline run --cluster``) live in one namespace, the
workers in the other; they reach the scheduler over TLS, and the store through
a path (namespaces share the filesystem). The result must equal the kernel's
bit for bit, also when one of the other namespace's workers is killed mid-run.

Needs root and ``ip`` (iproute2; .ci/run installs it). Where network
namespaces are not permitted the test fails with the reason rather than
passing unseen; `tests/test_clusterconfig.py`'s
``test_tls_scheduler_from_cluster_file`` runs the same path on loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pipeline import store
from pipeline_helpers import DASK, assert_bit_identical, raw_spec, read_arrays, reference_arrays, wait_until

pytestmark = pytest.mark.timeout(240)


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _why_not() -> str:
    """Why namespaces cannot be made here, or '' if they can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"nnsweep-probe-{os.getpid()}"
    r = _ip("netns", "add", probe)
    if r.returncode:
        return f"ip netns add was refused ({r.stderr.strip()})"
    _ip("netns", "del", probe)
    return ""


@pytest.fixture
def namespaces():
    """Two namespaces joined by a veth pair: {"sched": (name, address), "work": (name, address)}."""
    why = _why_not()
    if why:
        pytest.fail(f"{why}: this test needs two network namespaces (run as root with iproute2, as .ci/run "
                    "does); test_clusterconfig.py::test_tls_scheduler_from_cluster_file covers TLS on loopback")
    tag = os.getpid() % 200 + 20  # distinct per test process: two CI jobs on one host do not collide
    names = {"sched": f"nns-s{os.getpid()}", "work": f"nns-w{os.getpid()}"}
    addrs = {"sched": f"10.231.{tag}.1", "work": f"10.231.{tag}.2"}
    veth = {"sched": f"nvs{os.getpid()}"[:15], "work": f"nvw{os.getpid()}"[:15]}
    try:
        for ns in names.values():
            assert _ip("netns", "add", ns).returncode == 0
        steps = [("link", "add", veth["sched"], "type", "veth", "peer", "name", veth["work"])]
        for side in ("sched", "work"):
            steps += [("link", "set", veth[side], "netns", names[side]),
                      ("-n", names[side], "addr", "add", f"{addrs[side]}/24", "dev", veth[side]),
                      ("-n", names[side], "link", "set", veth[side], "up"),
                      ("-n", names[side], "link", "set", "lo", "up")]
        for step in steps:
            r = _ip(*step)
            assert r.returncode == 0, (step, r.stderr)
        yield {side: (names[side], addrs[side]) for side in names}
    finally:
        for ns in names.values():  # deleting a namespace deletes its end of the veth pair, and so the pair
            _ip("netns", "del", ns)


def _write_certs(d, ips: list[str]) -> dict:
    """A CA and one certificate for ``ips`` signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject, public_key, serial):
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("nnsweep netns CA"))
                .public_key(public_key).serial_number(serial).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1)))

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("nnsweep netns CA", ca_key.public_key(), 1).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    cert = build(ips[0], key.public_key(), 2).add_extension(
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]),
        critical=False).sign(ca_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "cert.pem").write_bytes(cert.public_bytes(pem))
    (d / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return {"ca_file": str(d / "ca.pem"), "cert": str(d / "cert.pem"), "key": str(d / "key.pem")}


def test_workers_in_another_namespace_over_tls_lose_nothing_when_killed(tmp_path, procs, namespaces):
    (s_ns, s_addr), (w_ns, w_addr) = namespaces["sched"], namespaces["work"]
    tls = _write_certs(tmp_path, [s_addr, w_addr])
    tls_args = ["--tls-ca-file", tls["ca_file"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
    in_ns = lambda ns: ["ip", "netns", "exec", ns]  # noqa: E731
    sfile = tmp_path / "scheduler.json"
    sched = procs.start(in_ns(s_ns) + DASK + ["distributed.cli.dask_scheduler", "--host", s_addr, "--port", "0",
                                             "--protocol", "tls", "--dashboard-address", f"{s_addr}:0",
                                             "--scheduler-file", sfile, *tls_args], "scheduler")

    def address():
        assert sched.poll() is None, procs.log("scheduler")
        text = sfile.read_text() if sfile.exists() else ""
        return yaml.safe_load(text)["address"] if text.strip() else None

    address = wait_until(address, 60, "the scheduler to start")
    assert address.startswith(f"tls://{s_addr}:")

    def worker(name):
        return procs.start(in_ns(w_ns) + DASK + ["distributed.cli.dask_worker", address, "--host", w_addr,
                                                 "--nthreads", "1", "--no-dashboard", "--name", name, *tls_args],
                           name)

    victim = worker("w1")
    worker("w2")
    raw = raw_spec(grid={"L": [2, 3], "m": [128, 256], "seeds": 40}, noise={"draws": 16},
                   execution={"seeds_per_block": 2})
    spec_file, store_path = tmp_path / "s.yaml", tmp_path / "s.zarr"
    spec_file.write_text(yaml.safe_dump(raw))
    cluster = tmp_path / "remote.yaml"
    cluster.write_text(yaml.safe_dump({"backend": "scheduler", "cluster": {"address": address, "timeout": 30},
                                       "tls": tls}))
    run = procs.start(in_ns(s_ns) + [sys.executable, "-m", "pipeline", "run", spec_file, "--cluster", cluster,
                                     "--store", store_path, "--no-progress"], "run")

    def some_done():
        assert run.poll() is None, procs.log("run")
        try:
            return store.done_mask(str(store_path)).any()
        except Exception:  # not created yet
            return False

    wait_until(some_done, 120, "the first blocks to finish")
    os.killpg(victim.pid, signal.SIGKILL)  # a worker of the other namespace dies mid-run
    assert not store.done_mask(str(store_path)).all(), "the run ended before the worker was killed"
    worker("w3")
    t0 = time.monotonic()
    while run.poll() is None and time.monotonic() - t0 < 180:
        time.sleep(0.2)
    log = procs.log("run")
    assert run.returncode == 0, log
    assert "without TLS" not in log and "failed" in log and " 0 failed" in log, log
    assert store.done_mask(str(store_path)).all()
    from pipeline.spec import Spec

    assert_bit_identical(read_arrays(store_path), reference_arrays(Spec.from_dict(raw)), "namespaces")

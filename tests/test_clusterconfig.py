"""Cluster files: validation, `nnsweep cluster show`, `--cluster`, and TLS to a real scheduler."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.clusterconfig import is_loopback, load_cluster_config

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny", "network": {"input_dim": 8, "output_dim": 3},
        "grid": {"L": [2], "m": [8], "ratio": [0.1, 0.2], "seeds": 4}, "noise": {"draws": 2},
        "execution": {"seeds_per_block": 2}}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("name", ["local", "slurm", "pbs", "kubernetes"])
def test_shipped_cluster_files_validate(name):
    cfg = load_cluster_config(REPO / "cluster" / f"{name}.yaml")
    assert cfg.backend == name and cfg.options


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in tmp_path: dask-jobqueue creates a cluster file's relative log_directory where it runs."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cluster_show_slurm_has_the_configured_resources(in_tmp):
    r = invoke("cluster", "show", REPO / "cluster" / "slurm.yaml")
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((REPO / "cluster" / "slurm.yaml").read_text())["cluster"]
    lines = r.output.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert f"#SBATCH -p {cfg['queue']}" in lines
    assert f"#SBATCH -A {cfg['account']}" in lines
    assert f"#SBATCH --cpus-per-task={cfg['cores']}" in lines
    assert "#SBATCH --mem=32G" in lines
    assert f"#SBATCH -t {cfg['walltime']}" in lines
    assert "#SBATCH --exclusive" in lines
    worker = next(line for line in lines if "dask_worker" in line)
    assert f"--nworkers {cfg['processes']}" in worker and "--nthreads 1" in worker
    assert "tcp://127.0.0.1:" in worker  # rendered against a loopback scheduler


def test_cluster_show_pbs_has_the_configured_resources(in_tmp):
    r = invoke("cluster", "show", REPO / "cluster" / "pbs.yaml")
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((REPO / "cluster" / "pbs.yaml").read_text())["cluster"]
    lines = r.output.splitlines()
    assert f"#PBS -q {cfg['queue']}" in lines
    assert f"#PBS -A {cfg['account']}" in lines
    assert f"#PBS -l {cfg['resource_spec']}" in lines
    assert f"#PBS -l walltime={cfg['walltime']}" in lines
    assert any(f"--nworkers {cfg['processes']}" in line for line in lines)


@pytest.mark.parametrize("raw, words", [
    ({"backend": "lsf", "cluster": {}}, ["backend", "'lsf'", "slurm"]),
    ({"backend": "slurm", "cluster": {"queu": "x"}}, ["cluster.queu", "queue"]),
    ({"backend": "local", "clutser": {}}, ["clutser", "cluster"]),
    ({"backend": "local", "cluster": {"n_workers": 1}, "adapt": {"maximum_jobs": 2}}, ["adapt"]),
    ({"backend": "scheduler", "cluster": {}}, ["cluster.address"]),
    ({"backend": "scheduler", "cluster": {"address": "tls://x:1"}, "tls": {"ca_file": "nope.pem"}},
     ["tls.ca_file", "nope.pem"]),
])
def test_bad_cluster_file_exits_2_naming_the_key(in_tmp, raw, words):
    tmp_path = in_tmp
    cfile = tmp_path / "c.yaml"
    cfile.write_text(yaml.safe_dump(raw))
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    for args in (["cluster", "show", cfile], ["run", spec, "--cluster", cfile, "--store", tmp_path / "s.zarr"]):
        r = invoke(*args)
        assert r.exit_code == 2, r.output
        assert all(w in r.output for w in words), r.output
        assert "Traceback" not in r.output
    assert not (tmp_path / "s.zarr").exists()


def test_cluster_show_refuses_backends_without_job_script(in_tmp):
    r = invoke("cluster", "show", REPO / "cluster" / "local.yaml")
    assert r.exit_code == 2 and "slurm and pbs" in r.output


def test_run_with_local_cluster_file(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    cfile = tmp_path / "local.yaml"
    cfile.write_text(yaml.safe_dump({"backend": "local", "cluster": {"n_workers": 1}}))
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec), "--cluster", str(cfile),
                        "--store", str(tmp_path / "s.zarr"), "--no-progress"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 blocks computed, 0 already done, 0 failed" in r.stdout
    assert "dashboard: http://127.0.0.1:" in r.stderr


def test_loopback_detection():
    assert is_loopback("tcp://127.0.0.1:8786") and is_loopback("tcp://localhost:8786")
    assert is_loopback("127.0.0.1:8786")
    assert not is_loopback("tcp://10.1.2.3:8786") and not is_loopback("tls://192.168.0.7:8786")


def _write_certs(d: Path) -> dict:
    """A CA and one certificate for 127.0.0.1 signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("nnsweep test CA")).issuer_name(name("nnsweep test CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "cert.pem").write_bytes(cert.public_bytes(pem))
    (d / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return {"ca_file": "ca.pem", "cert": "cert.pem", "key": "key.pem"}


@pytest.mark.timeout(180)
def test_tls_scheduler_from_cluster_file(tmp_path, procs):
    tls = _write_certs(tmp_path)
    tls_args = ["--tls-ca-file", "ca.pem", "--tls-cert", "cert.pem", "--tls-key", "key.pem"]
    _, address = procs.scheduler("scheduler", "--protocol", "tls", *tls_args)
    assert address.startswith("tls://127.0.0.1:")
    procs.worker(address, "w1", *tls_args)
    cfile = tmp_path / "remote.yaml"
    cfile.write_text(yaml.safe_dump({"backend": "scheduler", "cluster": {"address": address, "timeout": 20},
                                     "tls": tls}))
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec), "--cluster", str(cfile),
                        "--store", str(tmp_path / "s.zarr"), "--no-progress"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 blocks computed" in r.stdout and "without TLS" not in r.stderr
    # the same scheduler refuses a client without certificates
    plain = address.replace("tls://", "tcp://")
    r2 = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec), "--scheduler", plain,
                         "--store", str(tmp_path / "t.zarr"), "--no-progress"],
                        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r2.returncode == 2 and plain in r2.stderr, r2.stderr
    assert not (tmp_path / "t.zarr").exists()


@pytest.mark.parametrize("timeout", ["2s", 0, -1, True])
def test_scheduler_timeout_must_be_positive_seconds(tmp_path, timeout):
    cfile = tmp_path / "c.yaml"
    cfile.write_text(yaml.safe_dump({"backend": "scheduler", "cluster": {"address": "tcp://127.0.0.1:9",
                                                                          "timeout": timeout}}))
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    r = invoke("run", spec, "--cluster", cfile, "--store", tmp_path / "s.zarr")
    assert r.exit_code == 2 and "cluster.timeout" in r.output and "Traceback" not in r.output

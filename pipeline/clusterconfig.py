"""Cluster configurations (cluster/*.yaml) loaded into one small dataclass.

A file names a backend and gives, under ``cluster:``, the keyword arguments of
that backend's constructor one to one (LocalCluster, dask-jobqueue's
SLURMCluster / PBSCluster, dask-kubernetes' KubeCluster). Optional sections:
``adapt`` (``minimum_jobs`` / ``maximum_jobs`` for dask-jobqueue, passed to
``cluster.adapt``) and ``tls`` (certificate paths for distributed's Security).
This module only validates; :mod:`pipeline.execute` starts the cluster.

>>> cfg = ClusterConfig.from_dict({"backend": "local", "cluster": {"n_workers": 2}})
>>> cfg.backend, dict(cfg.options)
('local', {'n_workers': 2})
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import yaml

from . import yamlload
from .errors import UserError

# The constructor arguments each backend accepts. For the jobqueue backends
# they are read from dask-jobqueue itself (cluster and job classes); for
# KubeCluster, whose package is optional, they are listed here
# (dask-kubernetes 2026.3, dask_kubernetes.operator.KubeCluster).
LOCAL_KEYS = {"n_workers", "threads_per_worker", "processes", "memory_limit", "host",
              "dashboard_address", "worker_dashboard_address", "scheduler_port", "protocol",
              "interface", "silence_logs", "local_directory", "env", "death_timeout"}
KUBE_KEYS = {"name", "namespace", "image", "n_workers", "resources", "env", "worker_command",
             "port_forward_cluster_ip", "create_mode", "shutdown_on_close", "idle_timeout",
             "resource_timeout", "scheduler_service_type", "custom_cluster_spec",
             "scheduler_forward_port", "jupyter", "quiet"}
SCHEDULER_KEYS = {"address", "timeout", "name", "direct_to_workers", "heartbeat_interval"}
BACKENDS = ("local", "scheduler", "slurm", "pbs", "kubernetes")
TLS_KEYS = {"ca_file", "cert", "key", "require_encryption"}
ADAPT_KEYS = {"minimum_jobs", "maximum_jobs", "minimum", "maximum", "interval", "wait_count"}


def _jobqueue_keys(backend: str) -> set[str]:
    import dask_jobqueue
    from dask_jobqueue.core import Job, JobQueueCluster

    cluster_cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[backend]
    keys = set()
    for cls in (JobQueueCluster, Job, cluster_cls, cluster_cls.job_cls):
        keys |= {p.name for p in inspect.signature(cls.__init__).parameters.values()
                 if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return keys - {"self", "scheduler", "loop", "asynchronous", "security", "job_cls", "scheduler_cls"}


def allowed_keys(backend: str) -> set[str]:
    """The constructor arguments a backend accepts under ``cluster:``."""
    if backend == "local":
        return LOCAL_KEYS
    if backend == "kubernetes":
        return KUBE_KEYS
    if backend == "scheduler":
        return SCHEDULER_KEYS
    return _jobqueue_keys(backend)


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """A backend, its constructor arguments, optional adaptive scaling and TLS paths."""

    backend: str
    options: dict[str, Any]
    adapt: dict[str, Any] | None = None
    tls: dict[str, Any] | None = None
    source: str | None = None

    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None, base_dir: Path | None = None) -> ClusterConfig:
        """Validate a parsed cluster file; relative TLS paths are resolved against ``base_dir``.

        Raises:
            UserError: naming the key, the value and what is allowed.
        """
        where = f"{source}: " if source else ""
        try:
            backend = _backend(raw)
            options = _options(backend, raw.get("cluster"))
            adapt = _adapt(backend, raw.get("adapt"))
            tls = _tls(raw.get("tls"), base_dir or Path.cwd())
        except UserError as e:
            raise UserError(where + str(e)) from None
        return cls(backend, options, adapt, tls, source)


def _backend(raw: Any) -> str:
    """The top level: a mapping of known keys with a known backend."""
    if not isinstance(raw, dict):
        raise UserError(f"a cluster file is a mapping with the keys backend, cluster, adapt, tls; got {raw!r}.")
    unknown = sorted(set(raw) - {"backend", "cluster", "adapt", "tls"})
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r}; allowed at the top level: adapt, backend, cluster, tls.")
    backend = raw.get("backend")
    if backend not in BACKENDS:
        raise UserError(f"backend: {backend!r} is not allowed; expected one of {', '.join(BACKENDS)}.")
    return backend


def _options(backend: str, options: Any) -> dict[str, Any]:
    """``cluster:``: the backend constructor's keyword arguments (the scheduler backend's, checked)."""
    options = options or {}
    if not isinstance(options, dict):
        raise UserError(f"cluster: {options!r} is not allowed; expected a mapping of constructor arguments.")
    allowed = allowed_keys(backend)
    bad = sorted(set(options) - allowed)
    if bad:
        raise UserError(f"cluster.{bad[0]}: not an argument of the {backend} cluster's constructor; "
                        f"allowed: {', '.join(sorted(allowed))}.")
    if backend == "scheduler":
        if not options.get("address"):
            raise UserError("cluster.address: missing; the scheduler backend needs the address of a running "
                            "scheduler, e.g. tls://scheduler.example.org:8786.")
        timeout = options.get("timeout", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise UserError(f"cluster.timeout: {timeout!r} is not allowed; expected seconds, a number > 0.")
    return dict(options)


def _adapt(backend: str, adapt: Any) -> dict[str, Any] | None:
    """``adapt:``: arguments of ``cluster.adapt`` for the backends that start jobs or pods."""
    if adapt is None:
        return None
    if backend in ("local", "scheduler") or not isinstance(adapt, dict) or set(adapt) - ADAPT_KEYS:
        raise UserError(f"adapt: {adapt!r} is not allowed; expected, for slurm, pbs or kubernetes, a "
                        f"mapping with keys among {', '.join(sorted(ADAPT_KEYS))}.")
    return adapt


def _tls(tls: Any, base_dir: Path) -> dict[str, Any] | None:
    """``tls:``: certificate files, which must exist; returned as absolute paths."""
    if tls is None:
        return None
    if not isinstance(tls, dict) or set(tls) - TLS_KEYS:
        raise UserError(f"tls: {tls!r} is not allowed; expected a mapping with keys among "
                        f"{', '.join(sorted(TLS_KEYS))} (certificate file paths).")
    tls = dict(tls)
    for key in ("ca_file", "cert", "key"):
        if key in tls:
            path = base_dir / tls[key]
            if not path.is_file():
                raise UserError(f"tls.{key}: {tls[key]!r} is not a file ({path}); expected a PEM file path.")
            tls[key] = str(path.resolve())
    return tls


def is_loopback(address: str) -> bool:
    """Whether a host, ``HOST:PORT`` or ``PROTOCOL://HOST:PORT`` is this machine's loopback interface.

    >>> is_loopback("tcp://localhost:8786"), is_loopback("127.0.0.1"), is_loopback("tls://10.1.2.3:8786")
    (True, True, False)
    """
    import ipaddress
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _host(address: Any) -> str:
    """The host of 'HOST', 'HOST:PORT', ':PORT' or 'tcp://HOST:PORT' ('' = every interface)."""
    text = str(address).split("://")[-1]
    return text.rsplit(":", 1)[0] if ":" in text else text


def exposure(cfg: ClusterConfig) -> str | None:
    """A warning if the cluster a config starts listens beyond this machine without TLS, else None.

    >>> exposure(ClusterConfig("local", {"host": "127.0.0.1"})) is None
    True
    >>> exposure(ClusterConfig("local", {"host": "0.0.0.0"}))[:40]
    'warning: this local cluster binds its sc'
    """
    if cfg.tls:
        return None
    o = cfg.options
    if cfg.backend == "local":
        open_to = []
        if "host" in o and not is_loopback(str(o["host"])):
            open_to.append(f"scheduler and workers on {o['host'] or 'every interface'}")
        if o.get("interface"):
            open_to.append(f"scheduler and workers on interface {o['interface']}")
        if "dashboard_address" in o and not is_loopback(_host(o["dashboard_address"]) or "0.0.0.0"):
            open_to.append(f"the dashboard on {o['dashboard_address']}")
        if not open_to:
            return None
        what = "; ".join(open_to)
        return (f"warning: this local cluster binds its {what}, reachable from other machines, without TLS: the "
                "traffic is unencrypted and anyone who can reach the scheduler can run code on its workers. "
                "Use host: 127.0.0.1 unless other machines must join (see cluster/README.md).")
    if cfg.backend in ("slurm", "pbs"):
        host = (o.get("scheduler_options") or {}).get("host")
        if host and is_loopback(str(host)):
            return None
        where = f"interface {o['interface']}" if o.get("interface") else "this machine's network address"
        return (f"warning: the {cfg.backend} scheduler listens on {where} without TLS: the traffic is "
                "unencrypted and anyone on that network who can reach it can run code on its workers. Add a tls "
                "section with certificates (see cluster/README.md).")
    return None


def load_cluster_config(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster file (YAML, read by :mod:`pipeline.yamlload`: a repeated key is an error).

    Raises:
        UserError: the file is missing, not YAML, or has an unknown backend or key.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"cluster file {str(path)!r} does not exist; pass one of cluster/*.yaml.")
    try:
        raw = yamlload.load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())}).") from None
    return ClusterConfig.from_dict(raw, source=str(path), base_dir=path.resolve().parent)

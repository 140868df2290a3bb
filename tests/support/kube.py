"""A real Kubernetes API server for the tests: etcd + kube-apiserver v1.20.2, started per session.

The binaries come from ``scripts/k8s-tools`` (cached in ``$HERWA_TOOLS_DIR``, default
``~/.cache/herwa/tools``); a missing tool fails the test with "run scripts/k8s-tools".

Fixtures:

``kube_tools`` (session)
    :class:`KubeTools`: paths of helm, kubectl, kube-apiserver, etcd and promtool.
``kube_cluster`` (session)
    :class:`KubeCluster`: etcd and kube-apiserver on free 127.0.0.1 ports with RBAC, a static token
    file holding the admin token, and a cluster CA that also signs client certificates.
    ``server``, ``ca_file``, ``insecure``, ``admin_token``, ``admin_kubeconfig``, ``kubectl()``,
    ``helm()``, ``kubeconfig_for(username, groups)``, ``create_namespace(name)``.
``kube_namespace`` (function)
    A fresh namespace (with its ``default`` ServiceAccount) for one test; returns its name.
``kubectl`` / ``helm`` (session)
    ``kube_cluster.kubectl`` and ``kube_cluster.helm``.

Identities: ``admin_kubeconfig`` authenticates with a static token as ``herwa-admin`` in
``system:masters``. ``kubeconfig_for()`` makes any other identity without restarting the server:

* ``system:serviceaccount:<ns>:<name>`` for a ServiceAccount that exists (made by a test or by a
  chart that helm installed): a real, bound ServiceAccount token from the TokenRequest API, so
  the server authenticates it exactly as it would the operator's pod token (groups
  ``system:serviceaccounts``, ``system:serviceaccounts:<ns>``, ``system:authenticated``).
* anything else (a user, or a ServiceAccount name with no object): an X.509 client certificate
  signed by the cluster CA, with CN=username and one O= per group, which the server authenticates
  as that user and those groups (plus ``system:authenticated``).

The 1.20 server has no scheduler, kubelet or controller-manager: nothing becomes Ready, namespaces
never finish deleting and no ``default`` ServiceAccount appears by itself (``create_namespace``
makes one). It ignores ``x-kubernetes-validations`` (CEL) and serves neither ``batch/v1``
CronJob, ``policy/v1`` PodDisruptionBudget nor ``autoscaling/v2`` HPA: validate those offline.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TOOL_NAMES = ("helm", "kubectl", "kube-apiserver", "etcd", "promtool")
SA_PREFIX = "system:serviceaccount:"
ADMIN_USER = "herwa-admin"
START_TIMEOUT = 90.0


def tools_dir() -> Path:
    """Where ``scripts/k8s-tools`` installs (``$HERWA_TOOLS_DIR`` overrides)."""
    env = os.environ.get("HERWA_TOOLS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "herwa" / "tools"


@dataclass(frozen=True)
class KubeTools:
    dir: Path
    helm: Path
    kubectl: Path
    kube_apiserver: Path
    etcd: Path
    promtool: Path

    @classmethod
    def locate(cls, base: Path | None = None) -> KubeTools:
        """Finds every tool in ``<base>/bin``; fails (never skips) when one is missing."""
        base = base or tools_dir()
        paths = {name: base / "bin" / name for name in TOOL_NAMES}
        missing = [n for n, p in paths.items() if not (p.is_file() and os.access(p, os.X_OK))]
        if missing:
            pytest.fail(
                f"Kubernetes test tools missing from {base}/bin: {', '.join(missing)}; "
                "run scripts/k8s-tools (set HERWA_TOOLS_DIR to use another folder)",
                pytrace=False,
            )
        return cls(
            dir=base,
            helm=paths["helm"],
            kubectl=paths["kubectl"],
            kube_apiserver=paths["kube-apiserver"],
            etcd=paths["etcd"],
            promtool=paths["promtool"],
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Has the kernel SIGKILL the child if the test process dies without cleaning up."""
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _openssl(command: str, **options: str | Path) -> None:
    """``_openssl("req -new", key=k, out=o)`` runs ``openssl req -new -key k -out o``."""
    args = ["openssl", *command.split()]
    for name, value in options.items():
        args += [f"-{name}", str(value)]
    subprocess.run(args, capture_output=True, text=True, check=True)


class Pki:
    """A cluster CA (serving cert, client certs) and the ServiceAccount signing key pair, made
    with the openssl command line tool; ECDSA P-256 keys throughout (RSA costs ~1 s more)."""

    def __init__(self, root: Path, san_ips: Sequence[str] = ()) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        if shutil.which("openssl") is None:
            pytest.fail("kube_cluster needs the openssl command line tool", pytrace=False)
        self.ca_key, self.ca_crt = root / "ca.key", root / "ca.crt"
        self._genkey(self.ca_key)
        _openssl(
            "req -x509 -new -sha256 -days 30",
            subj="/CN=herwa-test-ca",
            key=self.ca_key,
            out=self.ca_crt,
        )
        self.serving_key, self.serving_crt = root / "apiserver.key", root / "apiserver.crt"
        self.sign(
            self.serving_key,
            self.serving_crt,
            "/CN=kube-apiserver",
            ext="subjectAltName=IP:127.0.0.1,"
            + "".join(f"IP:{ip}," for ip in san_ips)
            + "DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
            "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
        )
        self.sa_key, self.sa_pub = root / "sa.key", root / "sa.pub"
        self._genkey(self.sa_key)
        _openssl("pkey -pubout", **{"in": self.sa_key}, out=self.sa_pub)

    @staticmethod
    def _genkey(path: Path) -> None:
        _openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256", out=path)
        path.chmod(0o600)

    def sign(self, key: Path, crt: Path, subject: str, ext: str) -> None:
        self._genkey(key)
        csr, extfile = crt.with_suffix(".csr"), crt.with_suffix(".ext")
        extfile.write_text(ext)
        _openssl("req -new", key=key, out=csr, subj=subject)
        _openssl(
            "x509 -req -CAcreateserial -days 30 -sha256",
            **{"in": csr},
            out=crt,
            extfile=extfile,
            CA=self.ca_crt,
            CAkey=self.ca_key,
        )
        csr.unlink()
        extfile.unlink()

    def client_cert(self, username: str, groups: Sequence[str], stem: str) -> tuple[Path, Path]:
        """A key and certificate for ``username`` in ``groups`` (``<stem>.key``/``.crt``)."""

        def esc(value: str) -> str:  # openssl -subj escaping
            return re.sub(r"([/+=,\\])", r"\\\1", value)

        subject = "/CN=" + esc(username) + "".join("/O=" + esc(g) for g in groups)
        key, crt = self.root / f"{stem}.key", self.root / f"{stem}.crt"
        self.sign(
            key,
            crt,
            subject,
            ext="extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
        )
        return key, crt


@dataclass
class KubeCluster:
    """A running etcd + kube-apiserver. Build it with :meth:`start`; :meth:`stop` ends both."""

    tools: KubeTools
    workdir: Path
    server: str
    ca_file: Path
    admin_token: str
    admin_kubeconfig: Path
    etcd_url: str
    insecure: bool = False
    startup_seconds: float = 0.0
    pki: Pki | None = None
    _procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    _kubeconfigs: dict[tuple[str, tuple[str, ...]], Path] = field(default_factory=dict)

    # ---- lifecycle --------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        tools: KubeTools,
        workdir: Path,
        *,
        address: str = "127.0.0.1",
        san_ips: Sequence[str] = (),
        authorization_modes: str = "RBAC",
        extra_args: Sequence[str] = (),
        pre_start: Callable[[Pki], object] | None = None,
    ) -> KubeCluster:
        """``address`` is where the API server binds and what it advertises (a node's kubelet
        and pods need one they can reach); ``extra_args`` go to kube-apiserver as they are;
        ``pre_start`` may make files those arguments name (certificates) before it starts."""
        t0 = time.monotonic()
        workdir.mkdir(parents=True, exist_ok=True)
        pki = Pki(workdir / "pki", san_ips=(address, *san_ips))
        admin_token = uuid.uuid4().hex
        tokens = workdir / "tokens.csv"
        tokens.write_text(f'{admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        tokens.chmod(0o600)

        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        server = f"https://{address}:{api_port}"
        cluster = cls(
            tools=tools,
            workdir=workdir,
            server=server,
            ca_file=pki.ca_crt,
            admin_token=admin_token,
            admin_kubeconfig=workdir / "admin.kubeconfig",
            etcd_url=etcd_url,
            pki=pki,
        )
        cluster.write_kubeconfig(cluster.admin_kubeconfig, ADMIN_USER, {"token": admin_token})
        if pre_start is not None:
            pre_start(pki)
        try:
            cluster.spawn(
                "etcd",
                [
                    tools.etcd,
                    "--name=herwa-test",
                    f"--data-dir={workdir / 'etcd'}",
                    f"--listen-client-urls={etcd_url}",
                    f"--advertise-client-urls={etcd_url}",
                    f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                    f"--initial-cluster=herwa-test=http://127.0.0.1:{etcd_peer}",
                    f"--listen-metrics-urls=http://127.0.0.1:{free_port()}",
                    "--log-level=warn",
                ],
            )
            cluster.wait_http(f"{etcd_url}/health", "etcd", auth=False)
            cluster.spawn(
                "kube-apiserver",
                [
                    tools.kube_apiserver,
                    f"--etcd-servers={etcd_url}",
                    f"--bind-address={address}",
                    f"--advertise-address={address}",
                    f"--secure-port={api_port}",
                    f"--tls-cert-file={pki.serving_crt}",
                    f"--tls-private-key-file={pki.serving_key}",
                    f"--client-ca-file={pki.ca_crt}",
                    f"--token-auth-file={tokens}",
                    f"--authorization-mode={authorization_modes}",
                    "--anonymous-auth=false",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={pki.sa_pub}",
                    f"--service-account-signing-key-file={pki.sa_key}",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--allow-privileged=true",
                    f"--cert-dir={workdir / 'apiserver-certs'}",
                    "--profiling=false",
                    "--v=1",
                    *extra_args,
                ],
            )
            cluster.wait_http(f"{server}/readyz", "kube-apiserver", auth=True)
        except BaseException:
            cluster.stop()
            raise
        cluster.startup_seconds = time.monotonic() - t0
        return cluster

    def spawn(
        self, name: str, args: Sequence[str | Path], env: dict[str, str] | None = None
    ) -> None:
        """Starts one of the cluster's processes, logging to ``<workdir>/<name>.log``; it is
        stopped (in reverse order of start) by :meth:`stop`."""
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
        try:
            proc = subprocess.Popen(
                [str(a) for a in args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        self._procs.append((name, proc))

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def resident_bytes(self) -> dict[str, int]:
        """Resident memory of each process this cluster started (etcd, kube-apiserver, …)."""
        out: dict[str, int] = {}
        for name, proc in self._procs:
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{proc.pid}/status").read_text()
                kib = next(
                    int(line.split()[1])
                    for line in status.splitlines()
                    if line.startswith("VmRSS:")
                )
                out[name] = kib * 1024
        return out

    def wait_http(self, url: str, name: str, *, auth: bool) -> None:
        """Waits for ``url`` to answer 200 (failing the test if a cluster process exits)."""
        deadline = time.monotonic() + START_TIMEOUT
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        last = ""
        while time.monotonic() < deadline:
            for pname, proc in self._procs:
                if proc.poll() is not None:
                    pytest.fail(
                        f"{pname} exited with {proc.returncode} while starting:\n"
                        f"{self.log_tail(pname)}",
                        pytrace=False,
                    )
            req = urllib.request.Request(url)  # noqa: S310 - our own 127.0.0.1 URL
            if auth:
                req.add_header("Authorization", f"Bearer {self.admin_token}")
            try:
                with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        pytest.fail(
            f"{name} not ready after {START_TIMEOUT:.0f} s ({last}):\n{self.log_tail(name)}",
            pytrace=False,
        )

    def stop(self) -> None:
        """Stops kube-apiserver, then etcd (SIGTERM, then SIGKILL after 15 s)."""
        for _, proc in reversed(self._procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=15)
        self._procs.clear()

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self._procs if p.poll() is None}

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each running process (from /proc), for measurements."""
        out: dict[str, int] = {}
        for name, pid in self.pids().items():
            status = Path(f"/proc/{pid}/status").read_text()
            m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            if m:
                out[name] = int(m.group(1)) * 1024
        return out

    # ---- clients ----------------------------------------------------------------------------
    def tool_env(self) -> dict[str, str]:
        """Environment for kubectl/helm: caches and helm state under the cluster's workdir."""
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        env.update(
            KUBECACHEDIR=str(self.workdir / "kube-cache"),
            HELM_CACHE_HOME=str(self.workdir / "helm" / "cache"),
            HELM_CONFIG_HOME=str(self.workdir / "helm" / "config"),
            HELM_DATA_HOME=str(self.workdir / "helm" / "data"),
        )
        return env

    def kubectl_args(self, *args: str | Path, kubeconfig: Path | None = None) -> list[str]:
        """The command line of ``kubectl`` as admin (or ``kubeconfig``), for a long-running
        process such as ``logs -f``; run it with :meth:`tool_env`."""
        return [
            str(self.tools.kubectl),
            "--kubeconfig",
            str(kubeconfig or self.admin_kubeconfig),
            *map(str, args),
        ]

    def kubectl(
        self,
        *args: str | Path,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = False,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Runs kubectl as admin (or with ``kubeconfig``); never raises unless ``check``."""
        cmd = self.kubectl_args(*args, kubeconfig=kubeconfig)
        return subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            check=check,
            env=self.tool_env(),
            timeout=timeout,
        )

    def helm(
        self,
        *args: str | Path,
        kubeconfig: Path | None = None,
        check: bool = False,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Runs helm as admin (or with ``kubeconfig``); never raises unless ``check``."""
        cmd = [
            str(self.tools.helm),
            "--kubeconfig",
            str(kubeconfig or self.admin_kubeconfig),
            *map(str, args),
        ]
        return subprocess.run(
            cmd, capture_output=True, text=True, check=check, env=self.tool_env(), timeout=timeout
        )

    def create_namespace(self, name: str) -> str:
        """Creates ``name`` (if missing) and its ``default`` ServiceAccount, which no controller
        makes here. Returns ``name``."""
        manifest = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": name},
                },
            ],
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=True)
        return name

    def write_kubeconfig(self, path: Path, user: str, creds: dict[str, str]) -> None:
        """A kubeconfig for this server as ``user`` with ``creds`` (token or client cert)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [
                {
                    "name": "herwa-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": creds}],
            "contexts": [
                {
                    "name": "herwa-test",
                    "context": {"cluster": "herwa-test", "user": user, "namespace": "default"},
                }
            ],
            "current-context": "herwa-test",
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)

    def kubeconfig_for(self, username: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig that authenticates as ``username`` in ``groups``.

        An existing ServiceAccount (``system:serviceaccount:<ns>:<name>``) gets a real bound
        token from the TokenRequest API; its groups are then fixed by the server and ``groups``
        must be empty or a subset of them. Any other identity, including a ServiceAccount name
        with no object yet, gets a client certificate signed by the cluster CA (CN=username,
        O=each group; for a ServiceAccount name with no ``groups``, the two ServiceAccount
        groups). ``system:authenticated`` is always added by the server. Kubeconfigs are cached
        per (username, groups), except certificate stand-ins for ServiceAccounts."""
        groups = tuple(groups)
        key = (username, groups)
        if key in self._kubeconfigs:
            return self._kubeconfigs[key]
        stem = "user-" + re.sub(r"[^A-Za-z0-9_.-]", "_", username) + "-" + uuid.uuid4().hex[:8]
        path = self.workdir / f"{stem}.kubeconfig"
        creds: dict[str, str] | None = None
        cert_groups = groups
        if username.startswith(SA_PREFIX):
            ns, _, name = username[len(SA_PREFIX) :].partition(":")
            sa_groups = {
                "system:serviceaccounts",
                f"system:serviceaccounts:{ns}",
                "system:authenticated",
            }
            if not (ns and name) or ":" in name:
                raise ValueError(f"malformed ServiceAccount username {username!r}")
            exists = self.kubectl("get", "serviceaccount", name, "-n", ns).returncode == 0
            if exists:
                extra = set(groups) - sa_groups
                if extra:
                    raise ValueError(f"a ServiceAccount token cannot carry groups {extra}")
                token = self.kubectl(
                    "create", "token", name, "-n", ns, "--duration", "24h", check=True
                ).stdout.strip()
                creds = {"token": token}
            elif not groups:  # the certificate stand-in carries the usual ServiceAccount groups
                cert_groups = ("system:serviceaccounts", f"system:serviceaccounts:{ns}")
        if creds is None:
            assert self.pki is not None
            key_file, crt_file = self.pki.client_cert(username, cert_groups, stem)
            creds = {"client-certificate": str(crt_file), "client-key": str(key_file)}
        self.write_kubeconfig(path, username, creds)
        if "token" in creds or not username.startswith(SA_PREFIX):
            # a certificate stand-in for a missing ServiceAccount is not kept: once the
            # ServiceAccount exists, the next call gets a real token
            self._kubeconfigs[key] = path
        return path


# ---- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def kube_tools() -> KubeTools:
    return KubeTools.locate()


@pytest.fixture(scope="session")
def kube_cluster(
    kube_tools: KubeTools, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeCluster]:
    cluster = KubeCluster.start(kube_tools, tmp_path_factory.mktemp("kube"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster) -> str:
    """A fresh namespace for one test (left behind: nothing here finishes deleting one)."""
    return kube_cluster.create_namespace(f"t-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
def kubectl(kube_cluster: KubeCluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``kube_cluster.kubectl``: ``kubectl("get", "ns", check=True)`` runs as admin."""
    return kube_cluster.kubectl


@pytest.fixture(scope="session")
def helm(kube_cluster: KubeCluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``kube_cluster.helm``: ``helm("install", ..., check=True)`` runs as admin."""
    return kube_cluster.helm

"""A real one-node Kubernetes cluster for the tests: pods really run (docker + kubelet).

Everything comes from ``scripts/k8s-tools`` (helm, kubectl, etcd and the Kubernetes 1.20.2 node
binaries built from Debian's source package, plus the pause program) and ``scripts/node-tools``
(Debian's docker engine, iptables, conntrack, socat, dnsmasq, and a Python base image's file
system). A missing piece fails the test, never skips it. Needs root.

Fixtures (all session-scoped):

``docker_engine``
    :class:`DockerEngine`: dockerd with the cgroupfs driver, started here unless one already
    answers (and then stopped here again).
``herwa_image``
    The project's image, built by ``docker build`` from the repository's Dockerfile on a locally
    made Debian base image (no registry is reachable); returns its ``repository:tag``.
``kube_node``
    :class:`KubeNode`: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
    kube-proxy, the node Ready, a DNS stand-in that knows the cluster's Services and nothing
    else, and :meth:`KubeNode.expose` to make a loopback server on the host reachable from pods.

Network: pods sit on docker's bridge; the API server binds the bridge's address (kubelet
refuses a loopback node IP). Nothing a pod sends may leave the machine: a firewall rule drops
everything from the bridge that is not for the bridge, the host or a Service, kubelet's cloud
metadata probe is switched off, and pod DNS is answered by a dnsmasq with no upstream servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.kube import KubeCluster, KubeTools, free_port

ROOT = Path(__file__).resolve().parents[2]
NODE_NAME = "herwa-node"
BRIDGE_IP = "172.17.0.1"
BRIDGE_CIDR = "172.17.0.0/16"
SERVICE_CIDR = "10.0.0.0/24"
FIRST_SERVICE_IP = "10.0.0.1"
CLUSTER_DOMAIN = "cluster.local"
BASE_IMAGE = "herwa-test/python-base:bookworm-1"
BASE_TAR = "python-base-bookworm-1.tar"
PAUSE_IMAGE = "herwa-test/pause:3.2"
IMAGE_REPOSITORY = "herwa"
NODE_TOOLS = ("kubelet", "kube-scheduler", "kube-controller-manager", "kube-proxy", "pause")
HOST_TOOLS = ("dockerd", "iptables", "conntrack", "socat", "dnsmasq")
READY_TIMEOUT = 120.0
_GUARD_RULE = ["FORWARD", "-i", "docker0", "!", "-o", "docker0", "-j", "DROP"]


def _fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


def _run(
    args: Sequence[str | Path],
    *,
    check: bool = True,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and proc.returncode != 0:
        output = (proc.stdout[-3000:] + "\n" + proc.stderr[-3000:]).strip()
        _fail(f"{' '.join(map(str, args))} exited {proc.returncode}:\n{output}")
    return proc


def _host_tool(name: str) -> str:
    path = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin:" + os.environ.get("PATH", ""))
    if path is None:
        _fail(f"{name} is missing: run scripts/node-tools (as root)")
    assert path is not None
    return path


# ---- docker ---------------------------------------------------------------------------------
@dataclass
class DockerEngine:
    """The docker daemon this machine runs pods and builds images with."""

    docker: str
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def ensure(cls, workdir: Path) -> DockerEngine:
        if os.geteuid() != 0:
            _fail("the cluster tier needs root (docker, kubelet, iptables)")
        # Debian's client matches Debian's daemon; another client on PATH may be newer.
        client = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else _host_tool("docker")
        engine = cls(docker=client)
        if engine.answers():
            return engine
        dockerd = _host_tool("dockerd")
        log = open(workdir / "dockerd.log", "wb")  # noqa: SIM115 - owned by the process
        try:
            engine.proc = subprocess.Popen(
                [
                    dockerd,
                    "--exec-opt=native.cgroupdriver=cgroupfs",
                    "--storage-driver=overlay2",
                    "--log-level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + 60
        while not engine.answers():
            if engine.proc.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "dockerd.log").read_text(errors="replace")[-3000:]
                engine.stop()
                _fail(f"dockerd did not start:\n{tail}")
            time.sleep(0.3)
        return engine

    def answers(self) -> bool:
        return self.run("version", check=False, timeout=10).returncode == 0

    def run(
        self,
        *args: str | Path,
        check: bool = True,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return _run([self.docker, *args], check=check, timeout=timeout, env=env)

    def has_image(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def import_pause_image(docker: DockerEngine, tools: Path) -> None:
    """Loads the pod sandbox image into docker from the cached pause program (no registry)."""
    if not docker.has_image(PAUSE_IMAGE):
        pause = tools / "bin" / "pause"
        if not pause.exists():
            _fail(f"{pause} is missing: run scripts/k8s-tools")
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(pause, Path(tmp) / "pause")
            tar = Path(tmp) / "pause.tar"
            _run(["tar", "-C", tmp, "-cf", tar, "pause"])
            docker.run("import", "--change", 'ENTRYPOINT ["/pause"]', tar, PAUSE_IMAGE)


def import_python_base(docker: DockerEngine, tools: Path) -> None:
    """Loads the Python base image into docker from the cached root file system."""
    if not docker.has_image(BASE_IMAGE):
        tar = tools / BASE_TAR
        if not tar.exists():
            _fail(f"{tar} is missing: run scripts/node-tools")
        docker.run(
            "import",
            # The proxy's CA is in the bundle the base carries; pip must use that bundle.
            "--change",
            "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
            "--change",
            "ENV LANG=C.UTF-8",
            tar,
            BASE_IMAGE,
        )


def build_herwa_image(docker: DockerEngine, tag: str) -> str:
    """``docker build`` of the repository's Dockerfile, unchanged, on the local base image."""
    ref = f"{IMAGE_REPOSITORY}:{tag}"
    docker.run(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"PYTHON_IMAGE={BASE_IMAGE}",
        "--tag",
        ref,
        ROOT,
        timeout=1200,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    return ref


# ---- the node -------------------------------------------------------------------------------
@dataclass
class KubeNode:
    """A one-node cluster: :attr:`cluster` is the API server (kubectl/helm as admin)."""

    cluster: KubeCluster
    workdir: Path
    docker: DockerEngine
    node_ready_seconds: float = 0.0
    _forwards: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _guarded: bool = False

    @classmethod
    def start(cls, tools: KubeTools, docker: DockerEngine, workdir: Path) -> KubeNode:
        t0 = time.monotonic()
        node_bins = {}
        for name in NODE_TOOLS:
            path = tools.dir / "bin" / name
            if not path.exists():
                _fail(f"{path} is missing: run scripts/k8s-tools")
            node_bins[name] = path
        host = {name: _host_tool(name) for name in HOST_TOOLS}
        import_pause_image(docker, tools.dir)
        if not _has_address(BRIDGE_IP):
            _fail(
                f"docker's bridge has no {BRIDGE_IP}: is dockerd running with its default bridge?"
            )

        pki_dir = workdir / "pki"
        cluster = KubeCluster.start(
            tools,
            workdir,
            address=BRIDGE_IP,
            san_ips=(FIRST_SERVICE_IP,),
            authorization_modes="Node,RBAC",
            extra_args=[
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={pki_dir / 'apiserver-kubelet.crt'}",
                f"--kubelet-client-key={pki_dir / 'apiserver-kubelet.key'}",
                "--kubelet-preferred-address-types=InternalIP",
            ],
            pre_start=lambda pki: pki.client_cert(
                "herwa-apiserver-kubelet-client", ["system:masters"], "apiserver-kubelet"
            ),
        )
        node = cls(cluster=cluster, workdir=workdir, docker=docker)
        try:
            node._start_node(node_bins, host)
            node.node_ready_seconds = time.monotonic() - t0
        except BaseException:
            node.stop()
            raise
        return node

    def _kubeconfig(self, user: str, groups: Sequence[str], stem: str) -> Path:
        assert self.cluster.pki is not None
        key, crt = self.cluster.pki.client_cert(user, groups, stem)
        path = self.workdir / f"{stem}.kubeconfig"
        creds = {"client-certificate": str(crt), "client-key": str(key)}
        self.cluster.write_kubeconfig(path, user, creds)
        return path

    def _start_node(self, bins: dict[str, Path], host: dict[str, str]) -> None:
        w, c = self.workdir, self.cluster
        assert c.pki is not None
        self._guard()
        # DNS: answers only the cluster's Service names (hosts files in dns/), no upstream.
        (w / "dns").mkdir()
        c.spawn(
            "dnsmasq",
            [
                host["dnsmasq"],
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                f"--listen-address={BRIDGE_IP}",
                "--except-interface=lo",
                f"--hostsdir={w / 'dns'}",
                # Stays root: its hosts folder is inside the node's private (0700) work dir.
                "--user=root",
                "--group=root",
                "--pid-file=",
                "--log-facility=-",
            ],
        )
        cm = self._kubeconfig("system:kube-controller-manager", [], "controller-manager")
        c.spawn(
            "kube-controller-manager",
            [
                bins["kube-controller-manager"],
                f"--kubeconfig={cm}",
                f"--authentication-kubeconfig={cm}",
                f"--authorization-kubeconfig={cm}",
                f"--service-account-private-key-file={c.pki.sa_key}",
                f"--root-ca-file={c.pki.ca_crt}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--port=0",
                f"--secure-port={free_port()}",
                f"--cert-dir={w / 'controller-manager-certs'}",
                f"--flex-volume-plugin-dir={w / 'flex'}",
                "--node-monitor-grace-period=20s",
                "--v=1",
            ],
        )
        sched = self._kubeconfig("system:kube-scheduler", [], "scheduler")
        c.spawn(
            "kube-scheduler",
            [
                bins["kube-scheduler"],
                f"--kubeconfig={sched}",
                f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--port=0",
                f"--secure-port={free_port()}",
                f"--cert-dir={w / 'scheduler-certs'}",
                "--v=1",
            ],
        )
        kubelet_kc = self._kubeconfig(f"system:node:{NODE_NAME}", ["system:nodes"], "kubelet")
        resolv = w / "resolv.conf"
        resolv.write_text("")  # pods get the cluster DNS only, never the host's resolvers
        root = w / "kubelet"
        c.spawn(
            "kubelet",
            [
                bins["kubelet"],
                f"--kubeconfig={kubelet_kc}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={BRIDGE_IP}",
                "--container-runtime=docker",
                "--cgroup-driver=cgroupfs",
                "--fail-swap-on=false",
                f"--pod-infra-container-image={PAUSE_IMAGE}",
                "--node-status-update-frequency=1s",
                "--authentication-token-webhook=true",
                "--authorization-mode=Webhook",
                f"--client-ca-file={c.pki.ca_crt}",
                "--anonymous-auth=false",
                "--read-only-port=0",
                f"--port={free_port(BRIDGE_IP)}",
                f"--address={BRIDGE_IP}",
                "--healthz-port=0",
                "--image-gc-high-threshold=100",
                "--image-gc-low-threshold=99",
                "--eviction-hard=memory.available<100Mi,nodefs.available<1%,imagefs.available<1%",
                f"--cluster-dns={BRIDGE_IP}",
                f"--cluster-domain={CLUSTER_DOMAIN}",
                f"--resolv-conf={resolv}",
                "--oom-score-adj=0",
                f"--root-dir={root}",
                f"--cert-dir={root / 'pki'}",
                f"--volume-plugin-dir={w / 'volume-plugins'}",
                f"--experimental-dockershim-root-directory={w / 'dockershim'}",
                "--v=1",
            ],
            # Never probe a cloud metadata address: this node has no cloud.
            env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"},
        )
        proxy_kc = self._kubeconfig("system:kube-proxy", [], "kube-proxy")
        c.spawn(
            "kube-proxy",
            [
                bins["kube-proxy"],
                f"--kubeconfig={proxy_kc}",
                f"--hostname-override={NODE_NAME}",
                "--proxy-mode=iptables",
                f"--cluster-cidr={BRIDGE_CIDR}",
                "--conntrack-max-per-core=0",
                "--oom-score-adj=0",
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                f"--healthz-bind-address=127.0.0.1:{free_port()}",
                "--v=1",
            ],
        )
        self._wait_node_ready()
        self._wait_default_serviceaccount()

    def _guard(self) -> None:
        """Drops whatever a pod sends that is not for the bridge (pods), this host or a Service
        (those are rewritten to pods or this host before the FORWARD chain)."""
        iptables = _host_tool("iptables")
        if _run([iptables, "-C", *_GUARD_RULE], check=False).returncode != 0:
            _run([iptables, "-I", *_GUARD_RULE[:1], "1", *_GUARD_RULE[1:]])
        self._guarded = True

    def _wait_node_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive()
            out = self.cluster.kubectl("get", "node", NODE_NAME, "-o", "json")
            if out.returncode == 0:
                conds = json.loads(out.stdout)["status"].get("conditions", [])
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                    return
            time.sleep(0.5)
        _fail(f"node not Ready after {READY_TIMEOUT:.0f} s:\n{self.cluster.log_tail('kubelet')}")

    def _wait_default_serviceaccount(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive()
            out = self.cluster.kubectl("get", "serviceaccount", "default", "-o", "json")
            if out.returncode == 0 and json.loads(out.stdout).get("secrets"):
                return
            time.sleep(0.5)
        _fail(
            "no token for the default ServiceAccount:\n"
            + self.cluster.log_tail("kube-controller-manager")
        )

    def _check_alive(self) -> None:
        dead = {
            name
            for name in ("kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager")
            if name not in self.cluster.pids()
        }
        if dead:
            _fail(
                f"{', '.join(sorted(dead))} exited:\n"
                + "\n".join(self.cluster.log_tail(n) for n in sorted(dead))
            )

    # ---- what tests use ------------------------------------------------------------------------
    def expose(self, port: int) -> int:
        """Makes 127.0.0.1:``port`` on the host reachable from pods at ``BRIDGE_IP:port``."""
        if port not in self._forwards:
            socat = _host_tool("socat")
            proc = subprocess.Popen(
                [
                    socat,
                    f"TCP-LISTEN:{port},bind={BRIDGE_IP},reuseaddr,fork",
                    f"TCP:127.0.0.1:{port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self._forwards[port] = proc
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection((BRIDGE_IP, port), 1):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    _fail(f"socat could not forward {BRIDGE_IP}:{port}")
                time.sleep(0.05)
        return port

    def cut(self, port: int) -> None:
        """Makes a server exposed with :meth:`expose` unreachable from pods (its forwarder and
        the connections through it end); :meth:`expose` makes it reachable again."""
        proc = self._forwards.pop(port, None)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def for_pods(self, url: str) -> str:
        """``url`` with a loopback host rewritten to the bridge address (forwarded by
        :meth:`expose`)."""
        parts = urllib.parse.urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost"):
            return url
        assert parts.port is not None, url
        self.expose(parts.port)
        netloc = parts.netloc.rsplit("@", 1)
        hostport = f"{BRIDGE_IP}:{parts.port}"
        return urllib.parse.urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{hostport}" if len(netloc) == 2 else hostport)
        )

    def refresh_dns(self) -> None:
        """Writes the cluster's names into the DNS stand-in (dnsmasq re-reads its hostsdir):
        every Service's, and for a headless Service each of its pods' (``pod.service.ns.svc``),
        as CoreDNS would answer them."""
        kubectl = self.cluster.kubectl
        services = json.loads(kubectl("get", "services", "-A", "-o", "json", check=True).stdout)
        endpoints = json.loads(kubectl("get", "endpoints", "-A", "-o", "json", check=True).stdout)
        lines = []
        headless = set()
        for svc in services["items"]:
            name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
            ip = svc["spec"].get("clusterIP")
            if ip == "None":
                headless.add((ns, name))
            elif ip:
                lines.append(f"{ip} {name}.{ns}.svc.{CLUSTER_DOMAIN} {name}.{ns}.svc")
        for ep in endpoints["items"]:
            name, ns = ep["metadata"]["name"], ep["metadata"]["namespace"]
            if (ns, name) not in headless:
                continue
            for subset in ep.get("subsets", []):
                for addr in subset.get("addresses", []) + subset.get("notReadyAddresses", []):
                    if addr.get("hostname"):
                        host = f"{addr['hostname']}.{name}.{ns}.svc"
                        lines.append(f"{addr['ip']} {host}.{CLUSTER_DOMAIN} {host}")
        tmp = self.workdir / "dns.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.workdir / "dns" / "services")

    def rss_bytes(self) -> dict[str, int]:
        return self.cluster.rss_bytes()

    def stop(self) -> None:
        """Stops the node and leaves the machine as it was (dockerd aside)."""
        for proc in self._forwards.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._forwards.clear()
        self.cluster.stop()
        ids = self.docker.run(
            "ps", "-aq", "--filter", "label=io.kubernetes.pod.name", check=False
        ).stdout.split()
        if ids:
            self.docker.run("rm", "-f", *ids, check=False)
        proxy = self.cluster.tools.dir / "bin" / "kube-proxy"
        with contextlib.suppress(Exception):
            _run([proxy, "--cleanup"], check=False, timeout=60)
        if self._guarded:
            _run([_host_tool("iptables"), "-D", *_GUARD_RULE], check=False)
        _unmount_under(self.workdir)
        for cg in Path("/sys/fs/cgroup").glob("*/kubepods"):
            _remove_cgroup(cg)
        for leftover in ("/var/lib/kubelet", "/var/log/pods", "/var/log/containers"):
            shutil.rmtree(leftover, ignore_errors=True)


def _has_address(ip: str) -> bool:
    out = _run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    return f" {ip}/" in out


def _unmount_under(root: Path) -> None:
    prefix = str(root.resolve())
    mounts = [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(prefix)
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        _run(["umount", "-l", mount], check=False)


def _remove_cgroup(path: Path) -> None:
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def image_tag() -> str:
    """A tag that changes with the files the Dockerfile copies (docker's layer cache does the
    rest)."""
    out = _run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"], check=False).stdout.strip()
    dirty = _run(["git", "-C", ROOT, "status", "--porcelain"], check=False).stdout.strip()
    return f"test-{out or 'local'}{'-dirty' if dirty else ''}"


# ---- fixtures -------------------------------------------------------------------------------
@contextlib.contextmanager
def _node_dir() -> Iterator[Path]:
    # Outside pytest's tmp tree: pods' volumes live under kubelet's root dir.
    path = Path(tempfile.mkdtemp(prefix="herwa-node-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    with _node_dir() as workdir:
        engine = DockerEngine.ensure(workdir)
        try:
            yield engine
        finally:
            engine.stop()


@pytest.fixture(scope="session")
def herwa_image(docker_engine: DockerEngine, kube_tools: KubeTools) -> str:
    import_python_base(docker_engine, kube_tools.dir)
    return build_herwa_image(docker_engine, image_tag())


@pytest.fixture(scope="session")
def kube_node(kube_tools: KubeTools, docker_engine: DockerEngine) -> Iterator[KubeNode]:
    with _node_dir() as workdir:
        node = KubeNode.start(kube_tools, docker_engine, workdir)
        try:
            yield node
        finally:
            node.stop()

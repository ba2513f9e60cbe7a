"""A Kubernetes pod spec run with podman (or docker) on this machine, as a kubelet would run it:
one podman pod (shared network, and process namespace when shareProcessNamespace is set), init
containers to completion, then one container per spec container with its own command, args, env,
securityContext, volumes and resources, and the spec's startup, readiness and liveness probes run
for real (exec inside the container, httpGet/tcpSocket against the container's port).

What has no local equivalent is said where it is handled: ports are published on 127.0.0.1 (a
pod's IP is not reachable here), persistentVolumeClaim volumes are host folders the caller names,
secret volumes read-only folders of the data the caller gives for each Secret.
Resources: limits.cpu is a CFS quota (--cpus), limits.memory the memory cgroup's limit, requests.cpu
cpu shares, as the kubelet sets them; requests.memory only steers a scheduler and ephemeral-storage
is enforced by kubelet eviction, so neither has an effect here."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from scripts.containers.engine import Engine, detect
from scripts.serve.process import free_ports

DEFAULT_GRACE_SECONDS = 30  # terminationGracePeriodSeconds' default
QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's expansion of command, args and env values: $(NAME) becomes the variable's value
    when the container defines it (else stays as written), $$ becomes $."""
    return VAR_REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


class PodRunError(RuntimeError):
    """The pod does not run as declared; the message carries the container's own log lines."""


def quantity(value: str | int | float, cpu: bool = False) -> float:
    """A Kubernetes quantity: cpu in cores ("500m" → 0.5), others in bytes ("2Gi")."""
    s = str(value)
    if cpu and s.endswith("m"):
        return float(s[:-1]) / 1000
    m = QUANTITY.match(s)
    if not m or m.group(2) not in SUFFIX:
        raise PodRunError(f"cannot read quantity {value!r}")
    return float(m.group(1)) * SUFFIX[m.group(2)]


def security_context(pod_spec: dict, container: dict) -> dict:
    """The container's effective securityContext: its own fields over the pod's shared ones."""
    shared = ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile", "seLinuxOptions")
    pod_sc = pod_spec.get("securityContext") or {}
    return {**{k: pod_sc[k] for k in shared if k in pod_sc}, **(container.get("securityContext") or {})}


@dataclass
class Probe:
    ok: bool
    why: str


@dataclass
class PodRunner:
    """Run `pod_spec` (a PodSpec dict) under the name `name`. `claims` maps a persistentVolumeClaim
    name to the host folder that stands for its volume (mounted with the spec's subPath and
    readOnly). `extra_ports` are further container ports to publish (e.g. a scrape port named only
    by an annotation). `max_probe_period` shortens probe periods for tests (thresholds and timeouts
    stay as declared). `secrets` maps a Secret's name to its data: a secret volume is a read-only
    folder of its keys (or of the volume's items), as the kubelet writes it."""

    pod_spec: dict
    name: str
    claims: dict[str, Path] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # Secret name → its data (decoded)
    extra_ports: tuple[int, ...] = ()
    engine: Engine | None = None
    max_probe_period: float | None = None
    log_dir: Path | None = None
    pod: str = ""
    host_ports: dict[int, int] = field(default_factory=dict)
    mounts: list[Path] = field(default_factory=list)

    def __post_init__(self):
        self.engine = self.engine or detect()
        self.pod = f"{re.sub(r'[^a-z0-9-]', '-', self.name.lower())[:40]}-{uuid.uuid4().hex[:6]}"
        self.volume_root = Path(tempfile.gettempdir()) / "image-classifier-pods" / self.pod

    # --- the invocations ----------------------------------------------------------------------

    def container_name(self, container: dict) -> str:
        return f"{self.pod}-{container['name']}"

    def ports(self) -> list[int]:
        """Every container port something outside the pod may reach: declared ports, probe ports
        and the extra ones."""
        ports = list(self.extra_ports)
        for c in self.pod_spec["containers"]:
            ports += [p["containerPort"] for p in c.get("ports", [])]
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                action = (c.get(kind) or {}).get("httpGet") or (c.get(kind) or {}).get("tcpSocket")
                if action:
                    ports.append(self.resolve_port(c, action["port"]))
        return sorted(set(ports))

    @staticmethod
    def resolve_port(container: dict, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
        if not named:
            raise PodRunError(f"container {container['name']}: no port named {port!r}")
        return named[0]

    def pod_create_args(self) -> list[str]:
        share = "net,ipc,uts" + (",pid" if self.pod_spec.get("shareProcessNamespace") else "")
        if not self.host_ports:
            self.host_ports = dict(zip(self.ports(), free_ports(len(self.ports())), strict=True))
        args = ["pod", "create", "--name", self.pod, "--share", share]
        for container_port, host_port in self.host_ports.items():
            args += ["-p", f"127.0.0.1:{host_port}:{container_port}"]
        return args

    def volume_args(self, container: dict) -> list[str]:
        by_name = {v["name"]: v for v in self.pod_spec.get("volumes", [])}
        args = []
        for m in container.get("volumeMounts", []):
            volume = by_name.get(m["name"])
            if volume is None:
                raise PodRunError(f"container {container['name']}: volumeMount {m['name']!r} has no volume")
            ro = ":ro" if m.get("readOnly") else ""
            if "emptyDir" in volume:
                args += ["-v", f"{self.emptydir_path(volume)}:{m['mountPath']}{ro}"]
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if claim not in self.claims:
                    raise PodRunError(f"volume {m['name']}: no host folder stands for claim {claim!r}")
                src = self.claims[claim] / m.get("subPath", "")
                if not src.exists():
                    raise PodRunError(f"volume {m['name']}: subPath {m.get('subPath')!r} does not exist in "
                                      f"claim {claim} ({sorted(p.name for p in self.claims[claim].iterdir())})")
                args += ["-v", f"{src}:{m['mountPath']}{ro}"]
            elif "secret" in volume:
                args += ["-v", f"{self.secret_path(volume)}:{m['mountPath']}:ro"]
            else:
                raise PodRunError(f"volume {m['name']}: only emptyDir, persistentVolumeClaim and secret run locally")
        return args

    def secret_path(self, volume: dict) -> Path:
        """The Secret's keys as files (mode 0444: the container's user reads them), written once."""
        source = volume["secret"]
        name = source["secretName"]
        if name not in self.secrets:
            raise PodRunError(f"volume {volume['name']}: no data given for Secret {name!r}")
        data = self.secrets[name]
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        folder = self.volume_root / f"secret-{volume['name']}"
        if not folder.exists():
            folder.mkdir(parents=True)
            for item in items:
                if item["key"] not in data:
                    raise PodRunError(f"volume {volume['name']}: Secret {name} has no key {item['key']!r}")
                target = folder / item["path"]
                target.write_text(data[item["key"]])
                target.chmod(0o444)
            folder.chmod(0o755)
        return folder

    def emptydir_path(self, volume: dict) -> Path:
        return self.volume_root / volume["name"]

    def make_emptydirs(self) -> None:
        """Each emptyDir as a folder of mode 0777 (the kubelet's), shared by the pod's containers,
        with a tmpfs of its sizeLimit mounted on it. A folder, not a podman volume: podman gives a
        new volume the owner and mode of the image's mount point (/mnt is root's 0755), where a
        pod's emptyDir is writable by every container's user."""
        self.volume_root.mkdir(parents=True, exist_ok=True)
        for v in self.pod_spec.get("volumes", []):
            if "emptyDir" not in v:
                continue
            path = self.emptydir_path(v)
            path.mkdir()
            size = (v["emptyDir"] or {}).get("sizeLimit")
            opts = "mode=0777" + (f",size={int(quantity(size))}" if size else "")
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise PodRunError(f"emptyDir {v['name']}: cannot mount a tmpfs ({proc.stderr.strip()}): "
                                  "the pod runner needs root")
            self.mounts.append(path)

    def remove_emptydirs(self) -> None:
        for path in self.mounts:
            subprocess.run(["umount", str(path)], capture_output=True)
        self.mounts.clear()
        shutil.rmtree(self.volume_root, ignore_errors=True)

    def run_args(self, container: dict, detach: bool = True) -> list[str]:
        sc = security_context(self.pod_spec, container)
        args = ["run", *(["-d"] if detach else []), "--pod", self.pod, "--name", self.container_name(container),
                "--pull", "never"]
        if "runAsUser" in sc or "runAsGroup" in sc:
            user = sc["runAsUser"] if "runAsUser" in sc else self.image_user(container["image"])[0]
            args += ["--user", f"{user}{':' + str(sc['runAsGroup']) if 'runAsGroup' in sc else ''}"]
        pod_sc = self.pod_spec.get("securityContext") or {}
        for gid in [*([pod_sc["fsGroup"]] if "fsGroup" in pod_sc else []), *pod_sc.get("supplementalGroups", [])]:
            args += ["--group-add", str(gid)]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]  # podman would add writable tmpfs otherwise
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if sc.get("privileged"):
            args += ["--privileged"]
        caps = sc.get("capabilities") or {}
        args += [a for cap in caps.get("drop", []) for a in ("--cap-drop", cap)]
        args += [a for cap in caps.get("add", []) for a in ("--cap-add", cap)]
        seccomp = (sc.get("seccompProfile") or {}).get("type", "RuntimeDefault")
        if seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        elif seccomp != "RuntimeDefault":
            raise PodRunError(f"seccompProfile {seccomp} cannot run locally")
        limits = (container.get("resources") or {}).get("limits") or {}
        requests_ = (container.get("resources") or {}).get("requests") or {}
        if "cpu" in limits:
            args += ["--cpus", f"{quantity(limits['cpu'], cpu=True):g}"]
        if "memory" in limits:
            args += ["--memory", str(int(quantity(limits["memory"])))]
        if "cpu" in requests_:  # what the kubelet sets: cpu.shares = request in millicores * 1024 / 1000
            args += ["--cpu-shares", str(max(2, int(quantity(requests_["cpu"], cpu=True) * 1024)))]
        unknown = set(limits) - {"cpu", "memory", "ephemeral-storage"}
        if unknown:
            raise PodRunError(f"container {container['name']}: resources {sorted(unknown)} do not exist here")
        env: dict[str, str] = {}
        for e in container.get("env", []):
            if "value" not in e:
                raise PodRunError(f"env {e['name']}: only literal values run locally ({e})")
            env[e["name"]] = expand(e["value"], env)
            args += ["-e", f"{e['name']}={env[e['name']]}"]
        if container.get("workingDir"):
            args += ["-w", container["workingDir"]]
        grace = self.pod_spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        args += ["--stop-timeout", str(grace)]
        args += self.volume_args(container)
        if "command" in container:
            args += ["--entrypoint", json.dumps([expand(a, env) for a in container["command"]])]
        args.append(container["image"])
        args += [expand(a, env) for a in container.get("args", [])]
        return args

    def image_user(self, image: str) -> tuple[str, str]:
        proc = self.engine.run("image", "inspect", "--format", "{{.Config.User}}", image, check=False)
        if proc.returncode != 0:
            raise PodRunError(f"image {image} is not present (imagePullPolicy cannot pull here: "
                              f"build it with `make images`)")
        user, _, group = proc.stdout.strip().partition(":")
        return user, group

    def check_run_as_non_root(self, container: dict) -> None:
        """The kubelet's check: runAsNonRoot refuses UID 0 and an image user it cannot verify."""
        sc = security_context(self.pod_spec, container)
        if not sc.get("runAsNonRoot"):
            return
        uid = sc.get("runAsUser")
        if uid is None:
            user = self.image_user(container["image"])[0]
            if not user.isdigit():
                raise PodRunError(f"container {container['name']}: runAsNonRoot and image has non-numeric "
                                  f"user ({user or 'root'}), cannot verify user is non-root")
            uid = int(user)
        if int(uid) == 0:
            raise PodRunError(f"container {container['name']}: runAsNonRoot and image will run as root")

    def commands(self) -> list[list[str]]:
        """The engine invocations that start this pod, in order (for reading and for tests)."""
        cmds = [self.engine.argv(*self.pod_create_args())]
        cmds += [self.engine.argv(*self.run_args(c, detach=False)) for c in self.pod_spec.get("initContainers", [])]
        cmds += [self.engine.argv(*self.run_args(c)) for c in self.pod_spec["containers"]]
        return cmds

    # --- running --------------------------------------------------------------------------------

    def start(self) -> "PodRunner":
        for c in [*self.pod_spec.get("initContainers", []), *self.pod_spec["containers"]]:
            self.image_user(c["image"])  # present?
            self.check_run_as_non_root(c)
        try:
            self.make_emptydirs()
            self.engine.run(*self.pod_create_args())
            for c in self.pod_spec.get("initContainers", []):
                proc = self.engine.run(*self.run_args(c, detach=False), check=False, timeout=600)
                if proc.returncode != 0:
                    raise PodRunError(f"init container {c['name']} exited with {proc.returncode}; its log:\n"
                                      f"{self.logs(c['name'])}")
            for c in self.pod_spec["containers"]:
                proc = self.engine.run(*self.run_args(c), check=False)
                if proc.returncode != 0:
                    raise PodRunError(f"container {c['name']} did not start: {proc.stderr.strip()[-1500:]}"
                                      f"\n{self.logs(c['name'])}")
        except BaseException:
            self.remove()
            raise
        return self

    def container(self, name: str | None = None) -> dict:
        containers = self.pod_spec["containers"]
        return containers[0] if name is None else next(c for c in containers if c["name"] == name)

    def state(self, name: str | None = None) -> dict:
        proc = self.engine.run("inspect", "--format", "{{json .State}}", self.container_name(self.container(name)),
                               check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}

    def logs(self, name: str | None = None, tail: int = 40) -> str:
        cname = f"{self.pod}-{name}" if name else self.container_name(self.container())
        proc = self.engine.run("logs", "--tail", str(tail), cname, check=False)
        text = (proc.stdout + proc.stderr).strip()
        return "\n".join(f"  | {line}" for line in text.splitlines()) or "  | (no output)"

    def exec(self, *argv: str, name: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        """A command inside a running container (as its user, in its namespaces)."""
        return self.engine.run("exec", self.container_name(self.container(name)), *argv, check=False,
                               timeout=timeout)

    def url(self, container_port: int, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.host_ports[container_port]}"

    def address(self, container_port: int) -> str:
        return f"127.0.0.1:{self.host_ports[container_port]}"

    def probe(self, kind: str, name: str | None = None) -> Probe:
        """Run one probe of the container once, as the kubelet does."""
        c = self.container(name)
        spec = c.get(kind)
        if not spec:
            raise PodRunError(f"container {c['name']} has no {kind}")
        timeout = spec.get("timeoutSeconds", 1)
        if "exec" in spec:
            try:  # the kubelet's timeout, plus the engine's own start-up of an exec (~0.3 s)
                proc = self.exec(*spec["exec"]["command"], name=name, timeout=timeout + 2)
            except subprocess.TimeoutExpired:
                return Probe(False, f"exec probe timed out after {timeout} s")
            return Probe(proc.returncode == 0, (proc.stderr or proc.stdout).strip()[-400:] or f"exit {proc.returncode}")
        if "httpGet" in spec:
            get = spec["httpGet"]
            port = self.resolve_port(c, get["port"])
            url = f"{self.url(port, get.get('scheme', 'HTTP').lower())}{get.get('path', '/')}"
            try:
                r = requests.get(url, timeout=timeout, verify=False)
            except requests.RequestException as e:
                return Probe(False, f"GET {get.get('path', '/')} on port {port}: {type(e).__name__}")
            return Probe(200 <= r.status_code < 400, f"GET {get.get('path', '/')} on port {port}: {r.status_code}")
        if "tcpSocket" in spec:
            port = self.resolve_port(c, spec["tcpSocket"]["port"])
            try:
                socket.create_connection(("127.0.0.1", self.host_ports[port]), timeout=timeout).close()
            except OSError as e:
                return Probe(False, f"tcp port {port}: {e}")
            return Probe(True, f"tcp port {port}: open")
        raise PodRunError(f"{kind}: probe kind {sorted(spec)} cannot run locally")

    def period(self, spec: dict) -> float:
        period = spec.get("periodSeconds", 10)
        return min(period, self.max_probe_period) if self.max_probe_period else period

    def wait_ready(self, deadline_s: float = 300, name: str | None = None) -> float:
        """Startup probe until it passes (failureThreshold failures = the kubelet would restart the
        container: reported), then the readiness probe until it passes. Returns seconds taken."""
        c = self.container(name)
        started = time.monotonic()
        deadline = started + deadline_s
        time.sleep(max((c.get(k) or {}).get("initialDelaySeconds", 0) for k in ("startupProbe", "readinessProbe")))
        for kind in ("startupProbe", "readinessProbe"):
            spec = c.get(kind)
            if not spec:
                continue
            failures, threshold, last = 0, spec.get("failureThreshold", 3), None
            while True:
                state = self.state(name)
                if state and state.get("Status") not in ("running", "created", "configured"):
                    raise PodRunError(f"container {c['name']} {state.get('Status')} (exit code "
                                      f"{state.get('ExitCode')}) before its {kind} passed; its log:\n"
                                      f"{self.logs(c['name'])}")
                last = self.probe(kind, name)
                if last.ok:
                    break
                failures += 1
                if kind == "startupProbe" and failures >= threshold:
                    raise PodRunError(f"container {c['name']}: {kind} failed {failures} times (the kubelet "
                                      f"restarts it): {last.why}\nits log:\n{self.logs(c['name'])}")
                if time.monotonic() > deadline:
                    raise PodRunError(f"container {c['name']}: {kind} not passing after {deadline_s:.0f} s: "
                                      f"{last.why}\nits log:\n{self.logs(c['name'])}")
                time.sleep(self.period(spec))
        return time.monotonic() - started

    def pre_stop(self, container: dict, budget: float) -> str:
        """The container's preStop hook (exec or httpGet), run before its SIGTERM as the kubelet does."""
        hook = ((container.get("lifecycle") or {}).get("preStop")) or {}
        if "exec" in hook:
            try:
                proc = self.engine.run("exec", self.container_name(container), *hook["exec"]["command"],
                                       check=False, timeout=max(budget, 1))
                return f"exec exit {proc.returncode}"
            except subprocess.TimeoutExpired:
                return "exec timed out (grace period spent)"
        if "httpGet" in hook:
            get = hook["httpGet"]
            try:
                requests.get(f"{self.url(self.resolve_port(container, get['port']))}{get.get('path', '/')}",
                             timeout=max(budget, 1))
            except requests.RequestException as e:
                return f"httpGet {type(e).__name__}"
            return "httpGet done"
        if "sleep" in hook:
            time.sleep(min(hook["sleep"]["seconds"], budget))
            return "slept"
        return "none"

    def stop(self) -> dict[str, dict]:
        """The kubelet's deletion: each container's preStop hook, then SIGTERM, then SIGKILL once
        terminationGracePeriodSeconds (counted from the start, hooks included) are spent. Returns
        each container's final state, its hook's outcome and the seconds until it had exited."""
        from concurrent.futures import ThreadPoolExecutor

        grace = self.pod_spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        started = time.monotonic()

        def terminate(c: dict) -> dict:
            hook = self.pre_stop(c, grace)
            left = max(0, int(grace - (time.monotonic() - started)))
            self.engine.run("stop", "-t", str(left), self.container_name(c), check=False, timeout=left + 60)
            return {**self.state(c["name"]), "preStop": hook, "seconds": time.monotonic() - started}

        with ThreadPoolExecutor(len(self.pod_spec["containers"])) as pool:
            states = list(pool.map(terminate, self.pod_spec["containers"]))
        return {c["name"]: st for c, st in zip(self.pod_spec["containers"], states, strict=True)}

    def save_logs(self) -> None:
        if self.log_dir is None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for c in [*self.pod_spec.get("initContainers", []), *self.pod_spec["containers"]]:
            proc = self.engine.run("logs", self.container_name(c), check=False)
            (self.log_dir / f"{c['name']}.log").write_text(proc.stdout + proc.stderr)

    def remove(self) -> None:
        self.save_logs()
        self.engine.run("pod", "rm", "-f", "-t", "0", self.pod, check=False, timeout=120)
        self.remove_emptydirs()

    def __enter__(self) -> "PodRunner":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.remove()

    def describe(self) -> str:
        return "\n".join(shlex.join(c) for c in self.commands())

#!/usr/bin/python3
"""The container image, built and run with rootful podman, offline: the Dockerfile at the root
builds (the host's ccache mounted into the build stage), every library the binaries load is in
the image, and the broker runs with a read-only root filesystem, its data dir on a volume and its
Secrets as files. From the host: gRPC health (a raw grpcio call, no stubs of ours), REST health,
/metrics and the token; the broker is PID 1 and not root; a message queued for an offline peer
survives `podman stop` (SIGTERM: drain, exit 0) and a new container on the same volume delivers it.

Inside a container (/run/.containerenv) podman cannot run images: the test exits 77 (SKIP).
Usage: image_test.py REPO_ROOT MESH_CLI"""
import json, os, secrets, shutil, subprocess, sys, tempfile, time, unittest

REPO, CLI = sys.argv[1:3]
IMAGE = "localhost/mesh-broker:test"
BASE = "docker.io/library/debian:bookworm-slim"
DEADLINE = 30  # seconds; a first start in a fresh container is slower than on the host
UID = 10001
SKIP = 77


def skip(reason):
    print("SKIP: " + reason)
    sys.exit(SKIP)


if os.path.exists("/run/.containerenv"):
    skip("inside a container (/run/.containerenv): podman cannot run images here")
if os.geteuid() != 0:
    skip("rootful podman needs root; run the suite as root to test the image")

WORK = tempfile.mkdtemp(prefix="mesh-image-test-")
ENV = dict(os.environ, CONTAINERS_CONF=os.path.join(WORK, "containers.conf"))


def run(*args, check=True, timeout=None, **kwargs):
    result = subprocess.run(list(args), capture_output=True, text=True, env=ENV, timeout=timeout,
                            **kwargs)
    if check and result.returncode != 0:
        raise AssertionError("%s exited %d:\n%s%s" % (" ".join(args), result.returncode,
                                                      result.stdout[-3000:], result.stderr[-3000:]))
    return result


def wait_for(probe, what, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out after %ds waiting for %s" % (deadline, what))


def install_podman():
    need = [p for p in ("podman", "buildah", "mmdebstrap", "runc", "uidmap", "slirp4netns")
            if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                              text=True).stdout != "install ok installed"]
    if need:
        print("installing " + " ".join(need), flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need],
                       check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def write_engine_settings():
    """runc (crun refuses hybrid cgroup hosts), cgroupfs, a file event log, and ulimits no
    higher than this process may set (without CAP_SYS_RESOURCE podman's defaults fail)."""
    import resource
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
    nproc = 32768 if nproc == resource.RLIM_INFINITY or nproc > 32768 else nproc
    with open(ENV["CONTAINERS_CONF"], "w") as conf:
        conf.write('[containers]\ndefault_ulimits = ["nofile=%d:%d", "nproc=%d:%d"]\n'
                   'log_driver = "k8s-file"\n[engine]\nruntime = "runc"\n'
                   'cgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                   % (nofile, nofile, nproc, nproc))


def ensure_base_image():
    """No registry is reachable: debian:bookworm-slim is made with mmdebstrap from this
    machine's apt sources and tagged as Docker Hub's, so the Dockerfile stays ordinary."""
    if run("podman", "image", "exists", BASE, check=False).returncode == 0:
        return
    sources = "/etc/apt/sources.list.d/debian.sources"
    if not os.path.exists(sources):
        sources = "/etc/apt/sources.list"
    hook = os.path.join(WORK, "slim.sh")
    with open(hook, "w") as f:
        f.write('set -e\nr="$1"\nrm -f "$r/etc/hostname" "$r/etc/resolv.conf"\n'
                'printf \'Dir::Cache::pkgcache "";\\nDir::Cache::srcpkgcache "";\\n\' '
                '> "$r/etc/apt/apt.conf.d/docker-clean"\n')
    tarball = os.path.join(WORK, "rootfs.tar")
    print("making the base image with mmdebstrap", flush=True)
    run("mmdebstrap", "--variant=minbase", "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        '--customize-hook=sh %s "$1"' % hook, "bookworm", tarball, sources, timeout=900)
    run("podman", "import", "--change", 'CMD ["bash"]', tarball, BASE)
    os.remove(tarball)


def ccache_dir():
    out = subprocess.run(["ccache", "-k", "cache_dir"], capture_output=True, text=True)
    path = out.stdout.strip() or os.path.expanduser("~/.cache/ccache")
    os.makedirs(path, exist_ok=True)
    return path


def container_log(container):
    """The broker logs to stderr; podman returns the container's streams as they were."""
    out = run("podman", "logs", container, check=False)
    return out.stdout + out.stderr


def listening_ports(container):
    ports = {}
    for line in container_log(container).splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "listening":
            ports[event["listener"]] = event["port"]
    return ports


class ImageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        install_podman()
        write_engine_settings()
        ensure_base_image()
        started = time.monotonic()
        build = run("podman", "build", "--network=host", "--pull=never",
                    "-v", ccache_dir() + ":/ccache", "-t", IMAGE, REPO, check=False, timeout=3000)
        if build.returncode != 0:
            raise AssertionError("podman build failed:\n" + build.stdout[-4000:] + build.stderr[-4000:])
        print("image built in %.0f s" % (time.monotonic() - started), flush=True)
        cls.secrets = os.path.join(WORK, "secrets")
        os.makedirs(cls.secrets)
        cls.token = secrets.token_urlsafe(32)
        # As a Kubernetes Secret volume with defaultMode 0440 and fsGroup: root-owned, group
        # readable by the broker's group, not by others.
        for name, value in (("admin-token", cls.token), ("cluster-secret", secrets.token_hex(32))):
            path = os.path.join(cls.secrets, name)
            with open(path, "w") as f:
                f.write(value + "\n")
            os.chown(path, 0, UID)
            os.chmod(path, 0o440)
        cls.volume = "mesh-image-test-" + secrets.token_hex(4)
        run("podman", "volume", "create", cls.volume)
        cls.containers = []

    @classmethod
    def tearDownClass(cls):
        for container in cls.containers:
            run("podman", "rm", "-f", container, check=False)
        run("podman", "volume", "rm", "-f", cls.volume, check=False)
        shutil.rmtree(WORK, ignore_errors=True)

    def start(self):
        name = "mesh-image-test-" + secrets.token_hex(4)
        run("podman", "run", "-d", "--name", name, "--read-only", "--network=host",
            "-v", self.volume + ":/var/lib/mesh", "-v", self.secrets + ":/run/secrets/mesh:ro",
            IMAGE, "--listen-peer", "127.0.0.1:0", "--listen-grpc", "127.0.0.1:0",
            "--listen-http", "127.0.0.1:0", "--listen-cluster", "127.0.0.1:0", "--listen-ws", "127.0.0.1:0",
            "--admin-token-file", "/run/secrets/mesh/admin-token",
            "--cluster-secret-file", "/run/secrets/mesh/cluster-secret")
        self.containers.append(name)

        def ports():
            state = run("podman", "inspect", "-f", "{{.State.Running}}", name).stdout.strip()
            if state != "true":
                raise AssertionError("the container stopped:\n" + container_log(name))
            found = listening_ports(name)
            return found if {"peer", "grpc", "http"} <= found.keys() else None
        return name, wait_for(ports, "the broker in the container to listen")


    def stop(self, name):
        """podman stop sends the image's STOPSIGNAL (SIGTERM): the broker drains and exits 0."""
        run("podman", "stop", "-t", "60", name, timeout=90)
        code = run("podman", "inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
        self.assertEqual(code, "0", container_log(name))
        self.assertIn('"event":"drain_finished"', container_log(name))

    def http(self, port, path, token=None):
        args = ["curl", "-sS", "-o", "/dev/stdout", "-w", "\n%{http_code}", "--max-time", "15",
                "http://127.0.0.1:%d%s" % (port, path)]
        if token:
            args += ["-H", "Authorization: Bearer " + token]
        body, _, status = run(*args).stdout.rpartition("\n")
        return int(status), body

    def cli(self, *args, timeout=DEADLINE):
        return run(CLI, *args, timeout=timeout)

    def test_libraries_are_all_in_the_image(self):
        for binary in ("mesh-broker", "mesh-cli"):
            out = run("podman", "run", "--rm", "--entrypoint", "ldd", IMAGE,
                      "/usr/local/bin/" + binary).stdout
            self.assertNotIn("not found", out, out)
        labels = json.loads(run("podman", "image", "inspect", "-f", "{{json .Labels}}",
                                IMAGE).stdout)
        self.assertEqual(labels.get("org.opencontainers.image.title"), "mesh-broker")

    def test_runs_read_only_and_keeps_a_queued_message_across_containers(self):
        import grpc  # python3-grpcio: a client this project did not generate
        name, ports = self.start()
        # PID 1 in its namespace, as a non-root numeric user.
        pid = run("podman", "inspect", "-f", "{{.State.Pid}}", name).stdout.strip()
        with open("/proc/%s/status" % pid) as status:
            fields = dict(line.split(":", 1) for line in status.read().splitlines() if ":" in line)
        self.assertEqual(fields["Uid"].split()[0], str(UID))
        self.assertEqual(fields["NSpid"].split()[-1], "1")
        # Health and metrics from the host; the API needs the token from the Secret file.
        self.assertEqual(self.http(ports["http"], "/healthz")[0], 200)
        self.assertEqual(self.http(ports["http"], "/readyz")[0], 200)
        status, metrics = self.http(ports["http"], "/metrics")
        self.assertEqual(status, 200)
        self.assertIn("mesh_peers_connected", metrics)
        self.assertEqual(self.http(ports["http"], "/api/v1/stats")[0], 401)
        self.assertEqual(self.http(ports["http"], "/api/v1/stats", self.token)[0], 200)
        with grpc.insecure_channel("127.0.0.1:%d" % ports["grpc"]) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            # HealthCheckRequest{} is empty; HealthCheckResponse{status: SERVING} is 08 01.
            self.assertEqual(check(b"", timeout=15), b"\x08\x01")

        sender, recipient = (os.path.join(WORK, n + ".key") for n in ("sender", "recipient"))
        self.cli("keygen", "--out", sender)
        recipient_id = self.cli("keygen", "--out", recipient).stdout.strip()
        sent = self.cli("send", "--broker", "127.0.0.1:%d" % ports["peer"], "--key", sender,
                        "--to", recipient_id, "kept across containers")
        self.assertIn("ACCEPTED", sent.stdout)
        self.stop(name)

        second, ports = self.start()
        got = self.cli("listen", "--broker", "127.0.0.1:%d" % ports["peer"], "--key", recipient,
                       "--count", "1")
        self.assertEqual(json.loads(got.stdout.splitlines()[0])["payload"], "kept across containers")
        self.stop(second)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)

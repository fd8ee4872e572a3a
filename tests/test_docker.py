"""The Docker image (issue 5): built from the Dockerfile, and relay really runs in it.

No container engine can run a container here, but podman can *build* one with
``--isolation=chroot``. So the image is tested from inside a build: a small
Containerfile ``FROM`` the relay image, whose ``RUN`` step (as the image's user, not
root) does what a first ``docker run`` would: starts relay through the image's
entrypoint with the image's defaults, waits for ``/healthz``, sets a source's secret
with ``relay secret set``, posts a correctly signed Tito sample to
``/hooks/tito`` and waits for its row in ``/data/tito/tickets.csv`` (the shipped
example recipe), runs the image's HEALTHCHECK command, checks that only ``/data``
and ``/tmp`` are writable, and stops relay with SIGTERM. It prints
``RELAY-IMAGE-OK`` with its figures, or ``RELAY-IMAGE-FAIL`` and exits non-zero.

The base image (``debian:bookworm-slim``) cannot be pulled here either: when it is
missing, ``tests/docker_base.sh`` makes it with debootstrap (about half a minute).
Both builds use podman's layer cache, so a second run only rebuilds what changed.

The build step shares the machine's network (chroot isolation has no network
namespace of its own): relay listens on 0.0.0.0:8000 as shipped when that port is
free, else on a free port, and the probe only talks to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, SAMPLES, missing

BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
IMAGE = "localhost/relay:test"
PROBE_IMAGE = "localhost/relay-probe:test"


def _missing() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the image test needs Linux"
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install podman debootstrap)"
    if os.geteuid() != 0:
        return "building images with podman --isolation=chroot and debootstrap needs root"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
]


@pytest.fixture(autouse=True)
def needs_podman() -> None:
    """Skipped without podman (fails instead in CI, where .ci/run installs it)."""
    reason = _missing()
    if reason is not None:
        missing(reason)


def run(args: list[str], log: Path, timeout: float) -> tuple[int, str, float]:
    """Run ``args`` with its output in ``log``; (exit code, output, seconds).

    On a timeout, its whole process group is ended: a build step's processes too.
    """
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 60)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=wait)
                    break
            code = -1
            out.write(f"\n[test] timed out after {timeout:.0f} s\n".encode())
    return code, log.read_text(errors="replace"), time.monotonic() - started


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def image_id(name: str) -> str | None:
    result = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", name],
                            capture_output=True, text=True, timeout=60)
    return result.stdout.strip() if result.returncode == 0 else None


def host_ca() -> Path | None:
    """This machine's CA bundle, so that pip in the build trusts what the machine trusts."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """The relay image, built from the Dockerfile (and its base made if missing)."""
    logs = tmp_path_factory.mktemp("docker")
    timings: dict[str, float] = {}
    if image_id(BASE_IMAGE) is None:
        code, output, timings["base"] = run(["sh", str(ROOT / "tests" / "docker_base.sh"), BASE_IMAGE],
                                            logs / "base.log", timeout=900)
        assert code == 0, f"making {BASE_IMAGE} failed:\n{tail(output)}"
    before = image_id(IMAGE)
    args = ["podman", "build", "--isolation=chroot", "--pull=never", "--format", "docker",
            "--layers", "-t", IMAGE]
    ca = host_ca()
    if ca is not None:
        args += ["-v", f"{ca}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    code, output, timings["build"] = run(args + [str(ROOT)], logs / "build.log", timeout=900)
    assert code == 0, f"podman build failed:\n{tail(output)}"
    after = image_id(IMAGE)
    if before and before != after:  # the previous build, now untagged: don't pile them up
        subprocess.run(["podman", "rmi", before], capture_output=True, timeout=120)
    return timings


def inspect(name: str) -> dict[str, Any]:
    result = subprocess.run(["podman", "image", "inspect", name], capture_output=True, text=True,
                            timeout=60, check=True)
    return json.loads(result.stdout)[0]  # type: ignore[no-any-return]


def healthcheck(info: dict[str, Any]) -> dict[str, Any]:
    """The HEALTHCHECK (podman shows it beside Config, Docker inside it)."""
    return info.get("Healthcheck") or info["Config"].get("Healthcheck") or {}


def test_image_settings(built: dict[str, float]) -> None:
    info = inspect(IMAGE)
    config = info["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert config["User"] == "10001:10001"
    assert "8000/tcp" in config["ExposedPorts"]
    assert "/data" in config["Volumes"]
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"] == ["/usr/local/bin/relay-entrypoint"]
    assert config["Cmd"] == ["relay", "serve"]
    assert config["WorkingDir"] == "/data"
    assert {k: env[k] for k in ("RELAY_HOST", "RELAY_PORT", "RELAY_DATA", "RELAY_DB", "RELAY_RECIPES")} \
        == {"RELAY_HOST": "0.0.0.0", "RELAY_PORT": "8000", "RELAY_DATA": "/data",
            "RELAY_DB": "/data/relay.db", "RELAY_RECIPES": "/data/recipes"}
    health = healthcheck(info).get("Test") or []
    assert health[0] == "CMD" and "/healthz" in " ".join(health), health
    size = info["Size"] / 1e6
    print(f"\nimage {IMAGE}: {size:.0f} MB; base made in {built.get('base', 0):.1f} s "
          f"(0: it was there), relay image built in {built['build']:.1f} s")


def test_relay_runs_in_the_image(built: dict[str, float], tmp_path: Path) -> None:
    context = tmp_path / "probe"
    context.mkdir()
    info = inspect(IMAGE)
    (context / "image.json").write_text(json.dumps({
        "entrypoint": info["Config"]["Entrypoint"], "cmd": info["Config"]["Cmd"],
        "healthcheck": healthcheck(info)}))
    shutil.copy(SAMPLES / "tito" / "ticket.completed.json", context / "sample.json")
    (context / "probe.py").write_text(PROBE)
    (context / "Containerfile").write_text(f"""\
FROM {IMAGE}
COPY probe.py sample.json image.json /probe/
RUN ["/opt/relay/bin/python", "/probe/probe.py"]
""")
    started = time.monotonic()
    code, output, seconds = run(
        # --no-cache: the probe must run every time; --layers=false: leave no layer behind
        ["podman", "build", "--isolation=chroot", "--pull=never", "--no-cache", "--layers=false",
         "--format", "docker", "-t", PROBE_IMAGE, str(context)], tmp_path / "probe.log", timeout=300)
    subprocess.run(["podman", "rmi", PROBE_IMAGE], capture_output=True, timeout=120)
    assert code == 0 and "RELAY-IMAGE-OK" in output, f"the image failed its probe:\n{tail(output, 80)}"
    marker = re.search(r"^RELAY-IMAGE-OK .*$", output, re.MULTILINE)
    assert marker is not None
    print(f"\n{marker.group(0)}\nprobe build {seconds:.1f} s, "
          f"whole image test {sum(built.values()) + time.monotonic() - started:.1f} s")


# The RUN step of the probe image: standard library only, so it tests the image and
# nothing this test brings along. Runs as the image's USER.
PROBE = r'''
import atexit, base64, csv, hashlib, hmac, json, os, signal, socket, subprocess, sys, time
import urllib.error, urllib.request

T0 = time.monotonic()
LOG = "/tmp/relay.log"
TOKEN = "tito-token-for-the-image-test-0123456789"
proc = None


@atexit.register
def no_stray_relay():  # whatever happens, the build step leaves no relay running
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def fail(why):
    print(f"RELAY-IMAGE-FAIL {why}", flush=True)
    if os.path.exists(LOG):
        print("--- relay's output:\n" + open(LOG, errors="replace").read()[-4000:], flush=True)
    if proc is not None and proc.poll() is None:
        proc.kill()
    sys.exit(1)


def until(what, check, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            fail(f"relay exited with {proc.returncode} while waiting for {what}")
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            fail(f"no {what} within {timeout} s")
        time.sleep(0.2)


def request(path, body=None, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except OSError:
        return None, None


figures = {}
# --- who and where
uid = subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip()
if uid != "10001" or os.getuid() == 0:
    fail(f"running as uid {uid}, not 10001")
figures["uid"] = uid
if os.path.exists("/data/recipes"):
    fail("/data/recipes exists before the first start")

# The build shares the machine's network: use the shipped port unless it is taken.
port = int(os.environ["RELAY_PORT"])
env = dict(os.environ)
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("0.0.0.0", port))
    except OSError:
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
        env["RELAY_PORT"] = str(port)
figures["port"] = port

# --- first start, exactly as the image starts it (entrypoint + command)
image = json.load(open("/probe/image.json"))
started = time.monotonic()
proc = subprocess.Popen(image["entrypoint"] + image["cmd"], cwd="/data", env=env,
                        stdout=open(LOG, "wb"), stderr=subprocess.STDOUT)
until("/healthz answer", lambda: request("/healthz")[0] == 200, 60)
figures["healthy_after"] = f"{time.monotonic() - started:.1f}s"
if not os.path.isfile("/data/recipes/sources.yaml") or not os.path.isfile("/data/recipes/tito-tickets.yaml"):
    fail("the example recipes were not copied to /data/recipes")
figures["recipes"] = len([n for n in os.listdir("/data/recipes") if n.endswith(".yaml")])

listening = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        lines = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        local, state = line.split()[1], line.split()[3]
        address, hexport = local.rsplit(":", 1)
        if state == "0A" and int(hexport, 16) == port:
            listening.add(address)
if not listening & {"00000000", "00000000000000000000000000000000"}:
    fail(f"relay does not listen on 0.0.0.0:{port} ({listening})")
figures["listen"] = f"0.0.0.0:{port}"

# --- a correctly signed Tito sample: refused until the secret is set, then accepted
body = open("/probe/sample.json", "rb").read()
signature = base64.b64encode(hmac.new(TOKEN.encode(), body, hashlib.sha256).digest()).decode()
headers = {"Content-Type": "application/json", "Tito-Signature": signature,
           "X-Webhook-Name": "ticket.completed"}
status, answer = request("/hooks/tito", body, headers)
if status != 503 or "TITO_TOKEN" not in json.dumps(answer):
    fail(f"before its secret is set, /hooks/tito answered {status} {answer}, not 503 naming TITO_TOKEN")
secret = subprocess.run(["relay", "secret", "set", "TITO_TOKEN"], input=TOKEN + "\n", text=True,
                        capture_output=True, env=env, cwd="/data", timeout=60)
if secret.returncode != 0:
    fail(f"relay secret set failed: {secret.stdout} {secret.stderr}")
# `docker run IMAGE secret list` is `relay secret list`
listed = subprocess.run(image["entrypoint"] + ["secret", "list"], capture_output=True, text=True,
                        env=env, cwd="/data", timeout=60)
if listed.returncode != 0 or not listed.stdout.startswith("TITO_TOKEN\t"):
    fail(f"the entrypoint did not run `relay secret list`: {listed.stdout} {listed.stderr}")
posted = time.monotonic()
answer = until("2xx for the signed sample", lambda: (lambda r: r if r[0] == 200 else None)(
    request("/hooks/tito", body, headers)), 30)[1]
if answer.get("status") != "accepted":
    fail(f"the signed sample was answered {answer}")
figures["accepted_after_secret"] = f"{time.monotonic() - posted:.1f}s"
accepted = time.monotonic()
out = "/data/tito/tickets.csv"


def rows():
    if not os.path.exists(out):
        return None
    with open(out, newline="") as f:
        return list(csv.DictReader(f)) or None


got = until(f"row in {out}", rows, 30)
sample = json.loads(body)
if len(got) != 1 or got[0]["email"] != sample["email"] or got[0]["reference"] != sample["reference"]:
    fail(f"{out} holds {got}")
figures["delivered_after"] = f"{time.monotonic() - accepted:.1f}s"
figures["csv_rows"] = len(got)
for name in ("relay.db", "secret.key"):
    if not os.path.isfile(f"/data/{name}"):
        fail(f"/data/{name} is missing")

# --- the web UI's templates and static files came with the (non-editable) install
for page, kind in (("/login", "text/html"), ("/static/relay.css", "text/css")):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{page}", timeout=10) as r:
            status, got_kind = r.status, r.headers.get("content-type", "")
    except (OSError, urllib.error.HTTPError) as e:
        status, got_kind = getattr(e, "code", e), ""
    if status != 200 or kind not in got_kind:
        fail(f"GET {page} answered {status} {got_kind}: the web UI's files are not installed")
figures["ui"] = "ok"

# --- the image's own HEALTHCHECK command
test = image["healthcheck"].get("Test")
if not test or test[0] != "CMD":
    fail(f"unexpected HEALTHCHECK {test}")
check = subprocess.run(test[1:], env=env, capture_output=True, text=True, timeout=30)
if check.returncode != 0:
    fail(f"the HEALTHCHECK command failed: {check.stdout} {check.stderr}")
figures["healthcheck"] = "ok"

# --- only /data and /tmp are writable
for path in ("/opt/relay/x", "/opt/relay/bin/x", "/opt/relay/share/recipes/x", "/etc/x", "/x",
             "/usr/local/bin/x", "/var/tmp/x", "/run/lock/x", "/root/x", "/home/x"):
    try:
        open(path, "w").close()
    except OSError:
        continue
    os.unlink(path)
    fail(f"relay could write {path}")
for path in ("/data/x", "/tmp/x"):
    try:
        open(path, "w").close()
        os.unlink(path)
    except OSError as e:
        fail(f"relay cannot write {path}: {e}")
root_dev = os.lstat("/").st_dev
skip = {"/proc", "/sys", "/dev", "/data", "/tmp"}
writable = []
for top, dirs, files in os.walk("/"):
    for name in list(dirs):
        path = os.path.join(top, name)
        # and other filesystems, mounted for the build (/etc/hosts ... are files, checked below)
        if path in skip or os.lstat(path).st_dev != root_dev:
            dirs.remove(name)
    for name in dirs + files:
        path = os.path.join(top, name)
        if os.path.islink(path) or os.lstat(path).st_dev != root_dev:
            continue
        if os.access(path, os.W_OK):
            writable.append(path)
if writable:
    fail(f"relay can write outside /data and /tmp: {writable[:20]}")
figures["writable"] = "/data,/tmp"

# --- SIGTERM: relay stops cleanly
stopping = time.monotonic()
proc.send_signal(signal.SIGTERM)
try:
    code = proc.wait(timeout=60)
except subprocess.TimeoutExpired:
    fail("relay did not stop within 60 s of SIGTERM")
figures["stop"] = f"{time.monotonic() - stopping:.1f}s"
if code != 0:
    fail(f"relay exited with {code} on SIGTERM")
figures["exit"] = code
log = open(LOG, errors="replace").read()
if "Traceback" in log or TOKEN in log:
    fail("relay's output has a traceback or the secret")
figures["total"] = f"{time.monotonic() - T0:.1f}s"
print("RELAY-IMAGE-OK " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
'''

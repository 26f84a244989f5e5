"""test_deploy_files.py - checks deploy/ (Dockerfile, Compose, Kubernetes,
systemd) against the real server, without a Docker engine or a cluster.

What can be checked here is: every COPY source exists and is in the build
context; the runtime image installs exactly the packages of the libraries the
built binary links (readelf, ldd and dpkg on this Debian 12 machine); ports,
probe paths and healthchecks name the server's real default port and routes
(src/http/routes.c); `docker-compose config` accepts the Compose file; the
Kubernetes manifests agree with each other and with the server (the
ConfigMap's aiserve.yaml is loaded by the real binary, the Secret lands where
auth.keys_file points, grace periods exceed the drain timeout);
`systemd-analyze verify` accepts the unit. And the "bad input" of these
setups: a wrong MODEL_PATH, an unreadable config file.
"""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess

import pytest
import requests
import yaml

from harness import BIN, MODELS, ROOT

DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "k8s")

# Packages of libraries the binary links that debian:12-slim already has
# (apt would find them installed): the C library only.
BASE_IN_SLIM = {"libc6"}
# Sanitizer runtimes: linked only by the ASan build the CI also tests with,
# never by the image's Release build.
SANITIZER_RUNTIMES = re.compile(r"^lib(asan|ubsan|tsan|lsan)\d*$")
# Runtime packages that are not libraries of the binary, and why.
RUNTIME_TOOLS = {"ca-certificates",   # HTTPS to upstream LLM providers (gateway)
                 "curl"}              # the HEALTHCHECK command


# -- helpers ------------------------------------------------------------------

def clean_env(**extra):
    """The environment without the caller's aiserve settings, plus extra."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AISERVE_") and k not in ("MODEL_PATH", "LOG_LEVEL")}
    env.update(extra)
    return env


def run_serve(*args, env):
    """Runs `aiserve serve ARGS` that must exit on its own (a start-up
    failure); returns (exit code, JSON log lines, stderr)."""
    p = subprocess.run([BIN, "serve", *args], env=env, capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    logs = []
    for line in p.stdout.splitlines():
        try:
            logs.append(json.loads(line))
        except ValueError:
            pass
    return p.returncode, logs, p.stderr


def one_log(logs, msg):
    found = [e for e in logs if e.get("msg") == msg]
    assert len(found) == 1, "expected one %r line in %r" % (msg, logs)
    return found[0]


@pytest.fixture(scope="module")
def defaults(tmp_path_factory):
    """The server's effective default settings, as its "starting" line shows
    them; the start then fails on a model repository that is not there."""
    rc, logs, err = run_serve(env=clean_env(MODEL_PATH="/nonexistent/aiserve-defaults",
                                            AISERVE_KEYS_FILE="/nonexistent/keys.json",
                                            AISERVE_BATCH_DATA_DIR=str(tmp_path_factory.mktemp("d"))))
    assert rc == 2, (rc, logs, err)
    return one_log(logs, "starting")["config"]


def seconds(text):
    """A duration as docs/configuration.md and Compose write it (1m30s, 40s, 250ms)."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), text
    return sum(float(n) * units[u] for n, u in parts)


def get_routes():
    """GET paths of the route table (src/http/routes.c)."""
    with open(os.path.join(ROOT, "src", "http", "routes.c")) as f:
        return set(re.findall(r'\{HTTP_GET[^,]*,\s*"([^"]+)"', f.read()))


def dockerfile():
    """deploy/Dockerfile as stages: [(FROM args, [(INSTRUCTION, args), ...])]."""
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stages.append((rest.split(), []))
        else:
            stages[-1][1].append((word, rest.strip()))
    return stages


def stage(name):
    for frm, body in dockerfile():
        if frm[-1] == name:
            return frm, body
    raise AssertionError("no stage %r in deploy/Dockerfile" % name)


def instructions(body, word):
    return [args for w, args in body if w == word]


def env_of(body):
    env = {}
    for args in instructions(body, "ENV"):
        for item in shlex.split(args):
            k, _, v = item.partition("=")
            env[k] = v
    return env


def packages_of(path):
    """The Debian package that ships a file (dpkg -S), by its real path."""
    for p in (path, os.path.realpath(path)):
        out = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split(":")[0]
    raise AssertionError("no package ships %s" % path)


def ldd_paths(binary):
    """SONAME -> resolved path for every library ldd loads."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^\s*(\S+) => (/\S+)", out, re.M))


def depends_closure(packages):
    """The packages and every package they depend on (installed ones, via
    dpkg-query), alternatives included."""
    seen, todo = set(), list(packages)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        out = subprocess.run(["dpkg-query", "-W", "-f=${Depends},${Pre-Depends}", p],
                             capture_output=True, text=True)
        for dep in re.split(r"[,|]", out.stdout):
            name = dep.strip().split(" ")[0].split(":")[0]
            if name:
                todo.append(name)
    return seen


def k8s():
    """kind -> the manifest of deploy/k8s/ (one of each)."""
    docs = {}
    for name in sorted(os.listdir(K8S)):
        with open(os.path.join(K8S, name)) as f:
            for d in yaml.safe_load_all(f):
                assert d["kind"] not in docs, "two %s manifests" % d["kind"]
                docs[d["kind"]] = d
    return docs


def configmap_settings():
    """The ConfigMap's aiserve.yaml as {"section.key": value}."""
    data = yaml.safe_load(k8s()["ConfigMap"]["data"]["aiserve.yaml"])
    return {"%s.%s" % (s, k): v for s, keys in data.items() for k, v in keys.items()}


def env_settings():
    """Environment variable -> YAML key, from the table of docs/configuration.md."""
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        rows = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| ([^|]+) \|", f.read(), re.M)
    return {var: key for key, envs in rows for var in re.findall(r"`([A-Z_]+)`", envs)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- Dockerfile -----------------------------------------------------------------

def test_dockerfile_copies_only_what_exists_in_the_build_context():
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = {l.strip() for l in f if l.strip() and not l.startswith("#")}
    copies = 0
    for _, body in dockerfile():
        for args in instructions(body, "COPY") + instructions(body, "ADD"):
            words = shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue
            for src in [w for w in words if not w.startswith("--")][:-1]:
                copies += 1
                assert os.path.exists(os.path.join(ROOT, src)), "COPY source %s is missing" % src
                assert src.split("/")[0] not in ignored, "COPY source %s is in .dockerignore" % src
    assert copies >= 4


def test_dockerfile_builds_as_ci_and_runs_as_the_service_did():
    frm, build = stage("build")
    assert frm[0] == "debian:12"
    runs = " ".join(instructions(build, "RUN"))
    assert "scripts/install-deps.sh" in runs
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci_flags = re.search(r'CMAKE_FLAGS="([^"]*)"', f.read()).group(1).split()
    for flag in ci_flags + ["-DCMAKE_BUILD_TYPE=Release"]:
        assert flag in runs.split(), flag

    frm, runtime = stage("runtime")
    assert frm[0] == "debian:12-slim"
    user = instructions(runtime, "USER")
    assert user and user[-1] not in ("root", "0")
    env = env_of(runtime)
    assert env["MODEL_PATH"] == "/models" and env["LOG_LEVEL"] == "info"
    assert env["AISERVE_HOST"] == "0.0.0.0"
    assert "models/sentiment/1 /models/sentiment/1" in instructions(runtime, "COPY")
    assert instructions(runtime, "STOPSIGNAL") == ["SIGTERM"]
    assert instructions(runtime, "ENTRYPOINT") == ['["/usr/local/bin/aiserve"]']


def test_runtime_stage_installs_exactly_the_libraries_of_the_binary():
    # The binary's own libraries (NEEDED), each mapped to its package.
    dyn = subprocess.run(["readelf", "-d", BIN], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+)\]", dyn)
    resolved = ldd_paths(BIN)
    linked = {packages_of(resolved[soname]) for soname in needed}
    direct = {p for p in linked if not SANITIZER_RUNTIMES.match(p)}
    sanitized = direct != linked  # a sanitizer runtime brings libstdc++ along

    _, runtime = stage("runtime")
    installs = [r for r in instructions(runtime, "RUN") if "apt-get install" in r]
    assert len(installs) == 1, installs
    words = installs[0].split("apt-get install", 1)[1].split("&&")[0].split()
    listed = {w for w in words if not w.startswith("-")}
    assert RUNTIME_TOOLS <= listed
    assert listed - RUNTIME_TOOLS == direct - BASE_IN_SLIM, (
        "runtime stage installs %s; the binary needs %s"
        % (sorted(listed - RUNTIME_TOOLS), sorted(direct - BASE_IN_SLIM)))

    # Every library ldd loads (transitively) comes with those packages.
    closure = depends_closure(listed | BASE_IN_SLIM)
    missing = {so: packages_of(p) for so, p in resolved.items()
               if packages_of(p) not in closure and not SANITIZER_RUNTIMES.match(packages_of(p))
               and not (sanitized and packages_of(p).startswith("libstdc++"))}
    assert not missing, missing


def test_exposed_port_and_healthcheck_are_the_servers(defaults):
    _, runtime = stage("runtime")
    assert instructions(runtime, "EXPOSE") == [str(defaults["port"])]
    check = instructions(runtime, "HEALTHCHECK")
    assert len(check) == 1
    url = re.search(r'http://127\.0\.0\.1:\$\{AISERVE_PORT:-(\d+)\}(/\S*)"', check[0])
    assert url, check
    assert int(url.group(1)) == defaults["port"]
    assert url.group(2) == "/health/live" and "/health/live" in get_routes()


# -- Compose ------------------------------------------------------------------

def test_compose_file_is_valid_and_matches_the_server(defaults):
    with open(os.path.join(DEPLOY, "compose.yaml")) as f:
        raw = f.read()
    referenced = re.findall(r"^\s*- \./(\S+?):", raw, re.M)
    absent = [r for r in referenced if not os.path.exists(os.path.join(DEPLOY, r))]
    if absent:
        pytest.skip("deploy/compose.yaml mounts %s, not written yet" % ", ".join(absent))

    out = subprocess.run(["docker-compose", "-f", os.path.join(DEPLOY, "compose.yaml"), "config"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    services = cfg["services"]
    assert set(services) == {"aiserve-1", "aiserve-2", "haproxy", "redis", "prometheus", "alertmanager"}
    drain = defaults["drain_timeout_ms"] / 1000
    for name in ("aiserve-1", "aiserve-2"):
        s = services[name]
        assert s["build"]["dockerfile"] == "deploy/Dockerfile"
        assert os.path.samefile(s["build"]["context"], ROOT)
        assert seconds(s["stop_grace_period"]) > drain
        assert s["environment"]["AISERVE_REDIS_URL"] == "redis://redis:6379"
    assert services["redis"]["command"][1:] == ["--appendonly", "yes"]
    # The GPU reservation, documented (commented out) for hosts with one.
    assert re.search(r"^\s*#\s*- driver: nvidia$", raw, re.M)
    assert re.search(r"^\s*#\s*capabilities: \[gpu\]$", raw, re.M)
    # Prometheus scrapes every replica on the server's port.
    with open(os.path.join(DEPLOY, "prometheus", "prometheus.yml")) as f:
        prom = yaml.safe_load(f)
    targets = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]}
    assert {"aiserve-1:%d" % defaults["port"], "aiserve-2:%d" % defaults["port"]} <= targets


# -- Kubernetes ---------------------------------------------------------------

def test_k8s_manifests_agree_with_each_other_and_the_server(defaults):
    docs = k8s()
    listed = yaml.safe_load(open(os.path.join(K8S, "kustomization.yaml")))["resources"]
    assert sorted(listed) == sorted(n for n in os.listdir(K8S) if n != "kustomization.yaml")
    dep, svc, cm = docs["Deployment"], docs["Service"], docs["ConfigMap"]
    settings = configmap_settings()
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    (c,) = pod["containers"]

    # Ports: the container's is the one the ConfigMap (or the default) sets,
    # and the Service sends there.
    port = settings.get("server.port", defaults["port"])
    (cport,) = c["ports"]
    assert cport["containerPort"] == port
    assert svc["spec"]["ports"][0]["targetPort"] in (cport["name"], port)
    assert svc["spec"]["selector"].items() <= labels.items()

    # Probes hit the real routes.
    routes = get_routes()
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["startupProbe"]["httpGet"]["path"] in routes
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] in routes
        assert c[probe]["httpGet"]["port"] in (cport["name"], port)

    # A stop: preStop pause, then the drain, within the grace period.
    drain = seconds(settings.get("server.drain_timeout", "%dms" % defaults["drain_timeout_ms"]))
    pause = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > drain + float(pause[1])

    # Non-root, read-only root; what the server writes is on an emptyDir.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    assert "emptyDir" in mounts[settings["batch.data_dir"]]

    # The config file the server is told to read is the ConfigMap's.
    env = {e["name"]: e.get("value") for e in c["env"]}
    config_dir, config_file = os.path.split(env["AISERVE_CONFIG"])
    assert mounts[config_dir]["configMap"]["name"] == cm["metadata"]["name"]
    assert config_file in cm["data"]

    # The key store is the Secret's, and the pod does not start without it.
    keys_dir, keys_file = os.path.split(settings["auth.keys_file"])
    secret = mounts[keys_dir]["secret"]
    assert secret["secretName"] == docs["Secret"]["metadata"]["name"]
    assert not secret.get("optional", False)
    assert keys_file in docs["Secret"]["stringData"]

    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_configmap_is_loaded_by_the_server(tmp_path):
    """The real binary reads the ConfigMap's aiserve.yaml (an unknown key or a
    bad value would stop it there) and takes its values; the start then fails
    only on the model repository given here."""
    cfg = tmp_path / "aiserve.yaml"
    cfg.write_text(k8s()["ConfigMap"]["data"]["aiserve.yaml"])
    rc, logs, err = run_serve("--config", str(cfg),
                              env=clean_env(MODEL_PATH="/nonexistent/aiserve-models"))
    assert rc == 2 and logs, err
    settings = configmap_settings()
    # Here no Secret is mounted at the store's path: the ConfigMap requires
    # keys, so that is what stops the start.
    assert settings["auth.keys_required"] is True
    failed = one_log(logs, "startup_failed")
    assert failed["keys_file"] == settings["auth.keys_file"], logs
    assert "keys are required" in failed["error"], logs
    effective = one_log(logs, "starting")["config"]
    assert effective["config_file"] == str(cfg)
    assert effective["port"] == settings["server.port"]
    assert effective["drain_timeout_ms"] == seconds(settings["server.drain_timeout"]) * 1000
    assert effective["keys_file"] == settings["auth.keys_file"]
    assert effective["batch_data_dir"] == settings["batch.data_dir"]

    # The image's environment overrides the file: the ConfigMap must not set
    # what it would lose to.
    _, runtime = stage("runtime")
    overridden = {env_settings()[v] for v in env_of(runtime)}
    assert overridden == {"models.repository", "logging.level", "server.host"}
    assert not overridden & set(settings)


def test_secret_holds_a_key_store_the_server_reads(tmp_path):
    store = tmp_path / "keys.json"
    store.write_text(k8s()["Secret"]["stringData"]["keys.json"])
    out = subprocess.run([BIN, "keys", "list", "--keys-file", str(store)],
                         capture_output=True, text=True, timeout=30, env=clean_env())
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("secret", ["missing", "placeholder", "revoked"])
def test_missing_secret_stops_the_start_naming_it(server_factory, tmp_path, secret):
    """The ConfigMap's settings with the Secret's mount point here: without a
    store holding an active key the start fails naming the file, and nothing
    answers the readiness probe; with a key the same config serves."""
    store = tmp_path / "keys" / "keys.json"
    store.parent.mkdir()
    cfg = tmp_path / "aiserve.yaml"
    cfg.write_text(k8s()["ConfigMap"]["data"]["aiserve.yaml"].replace(
        configmap_settings()["auth.keys_file"], str(store)))
    env = clean_env(MODEL_PATH=MODELS, AISERVE_BATCH_DATA_DIR=str(tmp_path))
    if secret == "placeholder":
        store.write_text(k8s()["Secret"]["stringData"]["keys.json"])
    elif secret == "revoked":
        for args in (["create", "--name", "app", "--scopes", "predict"], ["revoke", "app"]):
            out = subprocess.run([BIN, "keys", *args, "--keys-file", str(store)],
                                 capture_output=True, text=True, timeout=30, env=clean_env())
            assert out.returncode == 0, out.stderr
    port = free_port()
    rc, logs, err = run_serve("--config", str(cfg), "--port", str(port), env=env)
    assert rc == 2, (logs, err)
    failed = one_log(logs, "startup_failed")
    reason = {"missing": "the file is missing", "placeholder": "it has no keys",
              "revoked": "every key is revoked"}[secret]
    assert failed["keys_file"] == str(store)
    assert failed["error"].startswith("%s: %s, and keys are required (auth.keys_required)" % (store, reason))
    assert not [e for e in logs if e.get("msg") == "listening"]
    with pytest.raises(requests.ConnectionError):
        requests.get("http://127.0.0.1:%d/health/ready" % port, timeout=5)
    # The same config with a key in the store starts and gets ready.
    out = subprocess.run([BIN, "keys", "create", "--name", "web", "--scopes", "predict", "--keys-file", str(store)],
                         capture_output=True, text=True, timeout=30, env=clean_env())
    assert out.returncode == 0, out.stderr
    s = server_factory("--config", str(cfg), repo=None, env={"MODEL_PATH": MODELS, "AISERVE_KEYS_FILE": str(store),
                                                             "AISERVE_BATCH_DATA_DIR": str(tmp_path)})
    assert s.get("/health/ready").status_code == 200
    assert s.post("/predict", json={"text": "fine"}).status_code == 401


# -- systemd --------------------------------------------------------------------

def test_systemd_unit(tmp_path, defaults):
    path = os.path.join(DEPLOY, "systemd", "aiserve.service")
    with open(path) as f:
        text = f.read()
    service = dict(re.findall(r"^(\w+)=(.*)$", text.split("[Service]")[1].split("[Install]")[0], re.M))
    assert service["Type"] == "simple"
    assert service["ExecStart"].split()[1:] == ["serve"]
    assert service["User"] not in ("root", "0")
    assert service["KillSignal"] == "SIGTERM"
    assert seconds(service["TimeoutStopSec"] + "s") > defaults["drain_timeout_ms"] / 1000
    for option in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome"):
        assert option in service

    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed: structure checked only")
    # Verified with the binary under test in place of the installed one.
    unit = tmp_path / "aiserve.service"
    unit.write_text(text.replace("ExecStart=" + service["ExecStart"].split()[0], "ExecStart=" + BIN))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


# -- bad input ------------------------------------------------------------------

def test_wrong_model_path_stops_the_start_naming_it(tmp_path):
    port = free_port()
    rc, logs, err = run_serve("--port", str(port),
                              env=clean_env(MODEL_PATH="/nonexistent/models",
                                            AISERVE_KEYS_FILE=str(tmp_path / "keys.json"),
                                            AISERVE_BATCH_DATA_DIR=str(tmp_path)))
    assert rc == 2
    failed = one_log(logs, "startup_failed")
    assert failed["error"] == ("cannot read model repository /nonexistent/models: "
                               "No such file or directory")
    assert not [e for e in logs if e.get("msg") == "listening"]
    # Nothing answers readiness (a probe sees the port closed).
    with pytest.raises(requests.ConnectionError):
        requests.get("http://127.0.0.1:%d/health/ready" % port, timeout=5)


def test_empty_model_path_serves_but_is_never_ready(server_factory, tmp_path):
    """A MODEL_PATH that exists but holds no model (an empty volume): the
    process lives, readiness stays 503, and the log names the directory."""
    empty = tmp_path / "models"
    empty.mkdir()
    s = server_factory(repo=None, env={"MODEL_PATH": str(empty)}, wait="live")
    s.wait_log("not_ready")
    assert s.logs("listening")[0]["model_repository"] == str(empty)
    assert s.get("/health/ready").status_code == 503
    assert s.get("/health/live").status_code == 200


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_config_file_stops_the_start_naming_it(tmp_path, kind):
    """AISERVE_CONFIG as the Deployment sets it, when the ConfigMap's file is
    not there or the mount is a directory in its place."""
    path = tmp_path / "aiserve.yaml"
    if kind == "directory":
        path.mkdir()
    rc, logs, err = run_serve(env=clean_env(AISERVE_CONFIG=str(path)))
    assert rc == 2
    assert logs == []
    reason = "cannot open: No such file or directory" if kind == "missing" else "is a directory"
    assert err.strip() == "aiserve serve: config file %s (from environment AISERVE_CONFIG): %s" % (path, reason)

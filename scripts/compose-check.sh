#!/usr/bin/env bash
# Static checks of the compose stack (docker-compose.yml, Dockerfile, deploy/, grafana/provisioning/), by the tools
# that read those files, without a Docker engine:
#
#   1. `docker-compose config -q`: the compose file is valid (Debian's docker-compose reads it without an engine).
#   2. The resolved compose file against the repository: every bind-mounted file or directory exists, every image
#      has a pinned tag, the addresses the configs name are the services and ports that exist (nginx upstreams,
#      Prometheus targets, OTLP endpoints, the trusted proxy), and the storyline environment is one the binary
#      accepts (`storyline config` / `storyline token` with exactly that environment: an unknown STORYLINE_*
#      variable or a bad value exits 64).
#   3. The Dockerfile: its stages, what it copies, the binary's name, the port, the health check, a non-root user,
#      `--locked`, a Rust at least the workspace's rust-version; .dockerignore keeps target/ out. Its HEALTHCHECK
#      command runs for real (Debian's busybox, fetched with `apt-get download`) against `storyline serve`: it
#      passes when the instance is ready and fails while it drains.
#   4. `nginx -t` on deploy/nginx/. nginx resolves upstream host names when it loads its configuration, and the
#      compose service names resolve only inside the compose network, so the check runs on copies in which the
#      two `server` host names of upstreams.conf are replaced by 127.0.0.1, under a minimal top-level nginx.conf
#      (pid, logs and temporary paths in a temporary directory, standing in for the image's own nginx.conf);
#      storyline.conf, with every SSE directive, is checked byte for byte.
#   5. `promtool check config deploy/prometheus/prometheus.yml`, which also checks the rule file it names
#      (grafana/prometheus/storyline-rules.yml, relative to it).
#   6. The OpenTelemetry Collector's config: no collector binary is installable from the package registries this
#      project uses, so it is parsed (YAML) and every pipeline must name defined receivers, processors and
#      exporters, and every enabled extension must be defined.
#
# Installs what it needs with apt-get (as root, or through sudo): nginx, docker-compose (which brings python3-yaml
# for Debian's /usr/bin/python3) and prometheus (promtool). Exits non-zero on the first failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

say() { echo "compose-check: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

# nginx from Debian. Its package starts a server on :80 where the machine allows it (systemd, or an init script
# without a policy-rc.d that forbids it); these checks do not use one, so a server this install started is
# stopped again.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  apt_install_daemon nginx nginx nginx /run/nginx.pid || fail "nginx is required (Debian/Ubuntu: apt-get install nginx)"
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$NGINX" ] || fail "nginx is not on PATH after installing it"

if ! command -v docker-compose >/dev/null 2>&1; then
  apt_install docker-compose docker-compose --no-install-recommends \
    || fail "docker-compose is required (Debian/Ubuntu: apt-get install docker-compose; or pip install docker-compose)"
fi
# Debian's python3 with python3-yaml (a dependency of docker-compose), whatever python3 comes first on PATH.
PY=/usr/bin/python3
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  apt_install python3-yaml python3-yaml --no-install-recommends || fail "python3-yaml is required"
fi

if ! command -v promtool >/dev/null 2>&1; then
  apt_install_daemon promtool prometheus prometheus \
    || fail "promtool is required (Debian/Ubuntu: apt-get install prometheus)"
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
: >"$TMP/empty.env"

# --- 1. docker-compose config -q -----------------------------------------------------------------------------
say "docker-compose $(docker-compose version --short 2>/dev/null || echo '?') config -q"
# Only the interpolation defaults of the file count, not a .env or variables of this shell.
env -u STORYLINE_JWT_SECRET -u GRAFANA_ADMIN_PASSWORD docker-compose --project-directory "$ROOT" \
  --env-file "$TMP/empty.env" -f docker-compose.yml config -q || fail "docker-compose config -q"
env -u STORYLINE_JWT_SECRET -u GRAFANA_ADMIN_PASSWORD docker-compose --project-directory "$ROOT" \
  --env-file "$TMP/empty.env" -f docker-compose.yml config >"$TMP/resolved.yml" 2>"$TMP/config.err" \
  || { cat "$TMP/config.err" >&2; fail "docker-compose config"; }

# --- 2 and 3. the resolved compose file and the Dockerfile against the repository ------------------------------
# The storyline binary, built as `cargo test --workspace` builds it (same features, so the test run that follows
# in scripts/test.sh reuses every artifact instead of building the workspace a second time).
say "building the storyline binary for the environment check (cargo test --workspace --locked --no-run)"
cargo test --workspace --locked --no-run --quiet 2>/dev/null || cargo test --workspace --locked --no-run
STORYLINE_BIN="$(cargo metadata --format-version 1 --no-deps | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/storyline"

# The image's health check runs busybox's wget; the same program (Debian's busybox, the package the runtime stage
# installs) is fetched here, unpacked into the temporary directory, and run as the HEALTHCHECK runs it.
( cd "$TMP" && { apt-get download busybox >/dev/null 2>&1 || { ${SUDO:-} apt-get update -qq && apt-get download busybox >/dev/null; }; } \
    && dpkg -x busybox_*.deb busybox ) || fail "could not fetch Debian's busybox (apt-get download busybox)"
BUSYBOX="$TMP/busybox/bin/busybox"

"$PY" - "$ROOT" "$TMP/resolved.yml" "$STORYLINE_BIN" "$BUSYBOX" <<'PY' || fail "the compose stack does not match the repository (above)"
import ipaddress, json, os, re, subprocess, sys
import yaml

root, resolved_path, storyline, busybox = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
problems = []
def check(ok, what):
    if not ok:
        problems.append(what)
    return ok

compose = yaml.safe_load(open(resolved_path))
raw = yaml.safe_load(open(os.path.join(root, "docker-compose.yml")))
services = compose["services"]

# Images: built here, or pulled with a pinned tag.
for name, svc in services.items():
    image = svc.get("image", "")
    if "build" in svc:
        continue
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    check(tag not in ("", "latest"), f"{name}: image {image!r} has no pinned tag")

# Bind mounts: every source is in the repository and exists.
mounted = set()
for name, svc in services.items():
    for vol in svc.get("volumes", []):
        if isinstance(vol, str):
            source = vol.split(":", 1)[0]
            if not source.startswith(("/", ".")):
                continue  # a named volume
        else:
            if vol.get("type") != "bind":
                continue
            source = vol["source"]
        source = os.path.normpath(os.path.join(root, source))
        check(source.startswith(root + os.sep), f"{name}: mounts {source}, outside the repository")
        check(os.path.exists(source), f"{name}: mounts {source}, which does not exist")
        mounted.add(os.path.relpath(source, root))
for path in ["deploy/nginx", "deploy/prometheus", "grafana/prometheus", "deploy/otel-collector/config.yaml",
             "grafana/provisioning", "grafana/dashboards"]:
    check(path in mounted, f"{path} is not mounted by any service")

def env(name):
    e = services[name].get("environment", {})
    if isinstance(e, list):
        e = dict(item.split("=", 1) for item in e)
    return {k: ("" if v is None else str(v)) for k, v in e.items()}

instances = [n for n in ("storyline-1", "storyline-2") if check(n in services, f"service {n} is missing")]
nginx_ip = services["nginx"]["networks"]["default"]["ipv4_address"]
subnets = [ipaddress.ip_network(c["subnet"]) for c in compose["networks"]["default"]["ipam"]["config"]]
check(any(ipaddress.ip_address(nginx_ip) in s for s in subnets), f"nginx's address {nginx_ip} is not in {subnets}")

listen_port = {}
for name in instances:
    e = env(name)
    check(e.get("STORYLINE_TRUSTED_PROXIES") == nginx_ip,
          f"{name}: STORYLINE_TRUSTED_PROXIES={e.get('STORYLINE_TRUSTED_PROXIES')!r} is not nginx's address {nginx_ip}")
    check(e.get("STORYLINE_REDIS_URL") == "redis://redis:6379", f"{name}: STORYLINE_REDIS_URL is not the redis service")
    listen_port[name] = e.get("STORYLINE_LISTEN", "0.0.0.0:8080").rsplit(":", 1)[1]
    otlp = e.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    check(otlp == "http://otel-collector:4318", f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT={otlp!r}")
    # The binary's own settings parser, with exactly this environment (PATH aside).
    run = subprocess.run([storyline, "config"], env={"PATH": os.environ["PATH"], **e}, capture_output=True, text=True)
    check(run.returncode == 0, f"{name}: `storyline config` refuses the environment ({run.returncode}): {run.stderr.strip()}")
    secret = e.get("STORYLINE_JWT_SECRET", "")
probe_env = env("probe")
check(probe_env.get("STORYLINE_JWT_SECRET") == secret, "the probe's secret is not the instances'")
probe_script = " ".join(services["probe"]["command"])
token_cmd = re.search(r"\$\((storyline token [^)]*)\)", probe_script)
if check(token_cmd is not None, f"the probe's command mints no token: {probe_script}"):
    import shlex
    args = shlex.split(token_cmd.group(1))
    run = subprocess.run([storyline] + args[1:], env={"PATH": os.environ["PATH"], **probe_env}, capture_output=True, text=True)
    check(run.returncode == 0 and run.stdout.count(".") == 2, f"the probe's `storyline token` fails: {run.stderr.strip()}")
probe_listen = re.search(r"--listen\s+(\S+)", probe_script)
check(probe_listen is not None and "--url http://nginx:8080" in probe_script, f"probe command: {probe_script}")

# nginx: the upstream servers are the instances, on their listen port; nginx listens on the port compose publishes.
upstreams = open(os.path.join(root, "deploy/nginx/upstreams.conf")).read()
servers = re.findall(r"^\s*server\s+([^\s;]+)", upstreams, re.M)
check(sorted(servers) == sorted(f"{n}:{listen_port[n]}" for n in instances), f"upstreams.conf servers {servers}")
site = open(os.path.join(root, "deploy/nginx/storyline.conf")).read()
listens = re.findall(r"^\s*listen\s+([^\s;]+)", site, re.M)
published = [str(p).split("/")[0].rsplit(":", 1)[-1] if isinstance(p, str) else str(p.get("target"))
             for p in services["nginx"].get("ports", [])]
check(listens == ["8080"] and "8080" in published, f"nginx listens on {listens}, compose publishes {published}")

# Prometheus: the targets are the instances and the probe, on their ports.
prom = yaml.safe_load(open(os.path.join(root, "deploy/prometheus/prometheus.yml")))
targets = {job["job_name"]: sorted(t for sc in job.get("static_configs", []) for t in sc["targets"])
           for job in prom["scrape_configs"]}
check(targets.get("storyline") == sorted(f"{n}:{listen_port[n]}" for n in instances), f"job storyline targets {targets.get('storyline')}")
if probe_listen:
    check(targets.get("storyline-probe") == [f"probe:{probe_listen.group(1).rsplit(':', 1)[1]}"],
          f"job storyline-probe targets {targets.get('storyline-probe')}")

# Grafana: the provisioned datasource is the prometheus service.
ds = yaml.safe_load(open(os.path.join(root, "grafana/provisioning/datasources/prometheus.yml")))
check(any(d.get("url") == "http://prometheus:9090" for d in ds["datasources"]), "the Grafana datasource is not http://prometheus:9090")
check("prometheus" in services and "grafana" in services, "prometheus and grafana services")

# The collector: pipelines name defined components; storyline's endpoint is its OTLP/HTTP receiver; it exports to
# the jaeger service's OTLP/gRPC receiver.
col = yaml.safe_load(open(os.path.join(root, "deploy/otel-collector/config.yaml")))
for kind in ("receivers", "processors", "exporters"):
    check(isinstance(col.get(kind), dict) or kind == "processors", f"collector: no {kind}")
for ext in col["service"].get("extensions", []):
    check(ext in (col.get("extensions") or {}), f"collector: extension {ext} is enabled but not defined")
pipelines = col["service"]["pipelines"]
check("traces" in pipelines, "collector: no traces pipeline")
for pname, p in pipelines.items():
    check(p.get("receivers") and p.get("exporters"), f"collector pipeline {pname} needs receivers and exporters")
    for kind in ("receivers", "processors", "exporters"):
        for comp in p.get(kind, []):
            check(comp in (col.get(kind) or {}), f"collector pipeline {pname}: {kind[:-1]} {comp} is not defined")
check(col["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318", "collector: OTLP/HTTP on 0.0.0.0:4318")
jaeger_endpoints = [e["endpoint"] for e in col["exporters"].values() if isinstance(e, dict) and "endpoint" in e]
check(jaeger_endpoints == ["jaeger:4317"], f"collector exporters {jaeger_endpoints}")
check("--set=receivers.otlp.protocols.grpc.endpoint=0.0.0.0:4317" in services["jaeger"].get("command", []),
      "jaeger's OTLP/gRPC receiver does not listen on 0.0.0.0:4317")

# The Dockerfile.
lines, current = [], ""
for line in open(os.path.join(root, "Dockerfile")):
    line = line.rstrip("\n")
    if not current and (not line.strip() or line.lstrip().startswith("#")):
        continue
    current += line[:-1] + " " if line.endswith("\\") else line
    if not line.endswith("\\"):
        lines.append(current.strip())
        current = ""
instr = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]
stages = [a.split() for i, a in instr if i == "FROM"]
check(len(stages) == 2 and [s[-1] for s in stages] == ["build", "runtime"], f"Dockerfile stages {stages}")
rust = re.match(r"rust:(\d+)\.(\d+)", stages[0][0])
workspace = open(os.path.join(root, "Cargo.toml")).read()
need = re.search(r'rust-version\s*=\s*"(\d+)\.(\d+)', workspace)
check(rust and need and (int(rust[1]), int(rust[2])) >= (int(need[1]), int(need[2])),
      f"the builder's Rust {stages[0][0]} is older than the workspace's rust-version")
for image in [s[0] for s in stages]:
    check(":" in image and not image.endswith(":latest"), f"Dockerfile: FROM {image} has no pinned tag")
dockerignore = [l.strip() for l in open(os.path.join(root, ".dockerignore")) if l.strip() and not l.startswith("#")]
check("target/" in dockerignore and ".git/" in dockerignore, ".dockerignore keeps target/ and .git/ out")
for i, a in instr:
    if i == "COPY" and "--from=" not in a:
        for src in a.split()[:-1]:
            check(os.path.exists(os.path.join(root, src)), f"Dockerfile: COPY {src}: not in the build context")
meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout)
bins = {t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"] and p["name"] == "storyline"}
runs = " ".join(a for i, a in instr if i == "RUN")
check("storyline" in bins and "cargo build --release --locked --bin storyline" in runs
      and "target/release/storyline /out/storyline" in runs, f"Dockerfile builds the bin {bins}")
copies = [a for i, a in instr if i == "COPY" and "--from=build" in a]
check(copies == ["--from=build /out/storyline /usr/local/bin/storyline"], f"Dockerfile copies {copies}")
check(('ENTRYPOINT', '["storyline"]') in instr, "Dockerfile: ENTRYPOINT is not the storyline binary")
users = [a for i, a in instr if i == "USER"]
check(users and users[-1].split(":")[0] not in ("0", "root"), f"Dockerfile: USER {users}")
envs = " ".join(a for i, a in instr if i == "ENV")
port = re.search(r"STORYLINE_LISTEN=0\.0\.0\.0:(\d+)", envs)
expose = [a for i, a in instr if i == "EXPOSE"]
health = [a for i, a in instr if i == "HEALTHCHECK"]
check(port and expose == [port[1]], f"Dockerfile: EXPOSE {expose} vs STORYLINE_LISTEN")
check(port and len(health) == 1 and f'"http://127.0.0.1:{port[1]}/readyz"' in health[0], f"Dockerfile: HEALTHCHECK {health}")
check(all(listen_port[n] == (port[1] if port else "") for n in instances), "the instances listen on the image's port")

# The HEALTHCHECK command itself, run against `storyline serve` (on a free port instead of the image's): it must
# pass once the instance is ready and fail while it drains after SIGTERM.
def health_check_runs_as_the_image_runs_it():
    import socket, time
    if not (port and len(health) == 1 and "CMD [" in health[0]):
        return
    argv = json.loads(health[0].split("CMD", 1)[1])
    if not check(argv[0] == "busybox", f"HEALTHCHECK runs {argv[0]}, not busybox"):
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    argv = [busybox] + [a.replace(f"127.0.0.1:{port[1]}", f"127.0.0.1:{free}") for a in argv[1:]]
    probe = lambda: subprocess.run(argv, capture_output=True, timeout=10).returncode
    env = {"PATH": os.environ["PATH"], "STORYLINE_LISTEN": f"127.0.0.1:{free}",
           "STORYLINE_JWT_SECRET": "compose-check-secret-0123456789", "STORYLINE_DRAIN_WINDOW_SECS": "30"}
    serve = subprocess.Popen([storyline, "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    stream = socket.socket()
    try:
        deadline = time.monotonic() + 30
        while probe() != 0 and time.monotonic() < deadline and serve.poll() is None:
            time.sleep(0.1)
        if not check(probe() == 0, "the HEALTHCHECK command fails against a ready storyline"):
            return
        # An open stream keeps the instance draining (for up to the drain window) after SIGTERM, rather than
        # exiting at once, so the check meets /readyz's 503 and not a refused connection.
        token = subprocess.run([storyline, "token", "--sub", "compose-check"], env=env, capture_output=True,
                               text=True, check=True).stdout.strip()
        stream.connect(("127.0.0.1", free))
        stream.sendall(f"GET /v1/stories/compose-check/stream?access_token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if not check(stream.recv(12).startswith(b"HTTP/1.1 200"), "a stream opens on the health-checked storyline"):
            return
        serve.terminate()
        deadline = time.monotonic() + 10
        while probe() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        check(serve.poll() is None and probe() != 0, "the HEALTHCHECK command passes against a draining storyline")
    finally:
        stream.close()
        serve.kill()
        serve.wait()
health_check_runs_as_the_image_runs_it()

if problems:
    for p in problems:
        print(f"compose-check:   {p}", file=sys.stderr)
    sys.exit(1)
print(f"compose-check: the compose file, {len(services)} services, matches the repository and the Dockerfile", file=sys.stderr)
PY

# --- 4. nginx -t ---------------------------------------------------------------------------------------------
say "$("$NGINX" -v 2>&1) -t on deploy/nginx/"
mkdir -p "$TMP/nginx/conf.d"
cp deploy/nginx/*.conf "$TMP/nginx/conf.d/"
sed -E -i 's/^([[:space:]]*server[[:space:]]+)storyline-[12]:([0-9]+)/\1127.0.0.1:\2/' "$TMP/nginx/conf.d/upstreams.conf"
[ "$(grep -cE '^[[:space:]]*server[[:space:]]+127\.0\.0\.1:' "$TMP/nginx/conf.d/upstreams.conf")" = 2 ] \
  || fail "upstreams.conf does not name the two instances storyline-1 and storyline-2"
cmp -s deploy/nginx/storyline.conf "$TMP/nginx/conf.d/storyline.conf" || fail "storyline.conf must be checked unchanged"
cat >"$TMP/nginx/nginx.conf" <<EOF
# Stands in for the nginx image's nginx.conf, which includes conf.d/*.conf in its http block.
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log;
events {}
http {
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    access_log $TMP/nginx/access.log;
    include $TMP/nginx/conf.d/*.conf;
}
EOF
"$NGINX" -t -q -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" || fail "nginx -t on deploy/nginx/"

# --- 5. promtool check config --------------------------------------------------------------------------------
say "promtool check config deploy/prometheus/prometheus.yml"
promtool check config deploy/prometheus/prometheus.yml >&2 || fail "promtool check config deploy/prometheus/prometheus.yml"

say "all checks passed"

# Shared by the scripts: install a Debian package the tests need, the way every script here does it.
#
#   apt_install <what> <package> [apt-get install flags...]
#
# As root, or through sudo; says exactly what to run where neither works, and returns 1 where there is no
# apt-get (the caller then says what to install elsewhere).
apt_install() {
  local what="$1" package="$2"
  shift 2
  command -v apt-get >/dev/null 2>&1 || return 1
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "$(basename "$0"): $what is missing; install it as root: apt-get install -y $* $package" >&2
      exit 1
    fi
  fi
  echo "$(basename "$0"): installing $what (Debian package $package) with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" "$package" >/dev/null
}

# Install a Debian package whose install starts a daemon of its own (nginx on :80, prometheus on :9090), and stop
# that daemon again if this install started it: the tests run their own on free ports and never use a system one.
#
#   apt_install_daemon <what> <package> <service> [pidfile]
#
# Where systemd runs, the service is stopped and disabled; elsewhere a daemon that wrote <pidfile> during the
# install (and not before) gets SIGQUIT. Returns 1 where apt_install does.
apt_install_daemon() {
  local what="$1" package="$2" service="$3" pidfile="${4:-}" was_running=0
  if [ -n "$pidfile" ] && [ -s "$pidfile" ]; then was_running=1; fi
  apt_install "$what" "$package" --no-install-recommends || return 1
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    { systemctl disable --now "$service" || sudo -n systemctl disable --now "$service"; } >/dev/null 2>&1 || true
  elif [ "$was_running" = 0 ] && [ -n "$pidfile" ] && [ -s "$pidfile" ]; then
    { kill -QUIT "$(cat "$pidfile")" || sudo -n kill -QUIT "$(cat "$pidfile")"; } 2>/dev/null || true
  fi
}

# Node.js >= MIN_NODE_MAJOR with npm on PATH (scripts/asyncapi.sh and scripts/js-test.sh: the AsyncAPI parser and
# the JavaScript client's tests).
MIN_NODE_MAJOR=20
node_ok() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || return 1
  local major
  major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
  [ "${major:-0}" -ge "$MIN_NODE_MAJOR" ]
}

# Installs exactly the packages of DIR/package-lock.json (`npm ci`, no install scripts), again only when
# node_modules is missing or was installed from another lock file.
npm_ci_locked() {
  local dir="$1" lock_sum stamp
  lock_sum="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  stamp="$dir/node_modules/.storyline-lock-sha256"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_sum" ]; then
    echo "$(basename "$0"): npm ci in $dir (from package-lock.json)" >&2
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$lock_sum" >"$stamp"
  fi
}

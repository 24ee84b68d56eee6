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

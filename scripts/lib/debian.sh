# Shared by the measurement scripts: installs Debian packages they need. Source it, then:
#   install_packages <caller's name> <package>…     (refreshes apt's lists once if needed)
#   ensure_command <command> <package> <caller's name>   (only when the command is missing)

install_packages() {
  local caller=$1
  shift
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
    { apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } ||
    { echo "$caller: installing $* failed" >&2; return 1; }
}

ensure_command() {
  command -v "$1" >/dev/null && return
  echo "$3: installing $1 (Debian's $2)…" >&2
  install_packages "$3" "$2"
}

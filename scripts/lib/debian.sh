# Shared by the measurement scripts: installs a Debian package when the command it provides is
# missing. Source it, then: ensure_command <command> <package> <caller's name>.

ensure_command() {
  command -v "$1" >/dev/null && return
  echo "$3: installing $1 (Debian's $2)…" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
}

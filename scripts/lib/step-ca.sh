# Builds smallstep step-ca 0.19 from Debian's sources, for perf-compare.sh: source it (and
# scripts/lib/debian.sh) after `cd` to the repository, then call build_step_ca; it prints the
# binary's path. Debian packages
# step-ca's library (golang-github-smallstep-certificates-dev) but not its command, so the
# command's main.go comes from the same source package (`apt-get source`) and is built in GOPATH
# mode against the packaged libraries, without the cloud KMS/CAS plug-ins Debian leaves out
# (debian/rules: DH_GOLANG_EXCLUDES). Nothing is fetched but Debian packages; the binary is
# kept in target/peers/ for the next run.

build_step_ca() {
  local out=$PWD/target/peers/step-ca
  if [[ -x $out ]]; then
    echo "$out"
    return
  fi
  local packages=(golang-go golang-github-smallstep-certificates-dev dpkg-dev)
  if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    echo "step-ca: installing Go and step-ca's libraries (Debian)…" >&2
    install_packages step-ca "${packages[@]}" || exit 1
  fi
  if ! apt-get source --print-uris golang-github-smallstep-certificates >/dev/null 2>&1; then
    echo "step-ca: adding Debian's source archive (deb-src) to apt…" >&2
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      >/etc/apt/sources.list.d/debian-src.sources
    apt-get update -qq
  fi
  local src gopath
  src=$(mktemp -d)
  gopath=$(mktemp -d)
  echo "step-ca: building cmd/step-ca from Debian's source package…" >&2
  (cd "$src" && apt-get source -qq golang-github-smallstep-certificates >/dev/null 2>&1)
  mkdir -p "$gopath/src/step-ca" "$(dirname "$out")"
  # The plug-ins Debian's library package leaves out would not resolve.
  grep -Ev '"github.com/smallstep/certificates/(kms/cloudkms|kms/azurekms|cas/cloudcas|cas/vaultcas)"' \
    "$src"/golang-github-smallstep-certificates-*/cmd/step-ca/main.go \
    >"$gopath/src/step-ca/main.go"
  (cd "$gopath/src/step-ca" &&
    GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$gopath/cache" \
      go build -o "$out" . 2>"$gopath/build.log") || {
    cat "$gopath/build.log" >&2
    echo "step-ca: build failed" >&2
    exit 1
  }
  rm -rf "$src" "$gopath"
  echo "$out"
}

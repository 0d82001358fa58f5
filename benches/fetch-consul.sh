#!/usr/bin/env bash
# Fetches a real Consul agent for benches/litefs_lease.py: version 1.8.7 as
# Debian 11 ("bullseye") packages it (`consul`, MPL-2.0), unpacked with
# dpkg-deb, so nothing is installed and the system's apt sources stay as
# they are (the package index goes into a scratch directory). Consul 1.8.7
# is the version the 19.1 s LiteFS failover figure in docs/litefs.md was
# measured with.
#
#   benches/fetch-consul.sh [DIR]     # DIR defaults to target/consul
#
# Prints the binary's path. Needs apt-get (as root) and a Debian mirror
# named in /etc/apt; reuses DIR/consul when it is already there.
set -euo pipefail

out_dir=${1:-target/consul}
mkdir -p "$out_dir"
out_dir=$(realpath "$out_dir")
if [ -x "$out_dir/consul" ]; then
  echo "$out_dir/consul"
  exit 0
fi

mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  mirror=$(awk '/^URIs:/ { print $2; exit }' "$f")
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -e /etc/apt/sources.list ]; then
  mirror=$(awk '/^deb / { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
  echo "fetch-consul: no Debian mirror found in /etc/apt/sources.list{,.d}" >&2
  exit 1
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/state/partial" "$scratch/cache/archives/partial" "$scratch/unpacked"
printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s bullseye main\n' "$mirror" \
  > "$scratch/bullseye.list"
apt_private=(
  -o "Dir::Etc::sourcelist=$scratch/bullseye.list"
  -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$scratch/state"
  -o "Dir::Cache=$scratch/cache"
  -o "APT::Sandbox::User=root"
)
apt-get "${apt_private[@]}" -q=2 update > /dev/null
(cd "$scratch" && apt-get "${apt_private[@]}" -q=2 download consul=1.8.7\* > /dev/null)
deb=$(ls "$scratch"/consul_*.deb)
dpkg-deb --extract "$deb" "$scratch/unpacked"
install -m 0755 "$scratch/unpacked/usr/bin/consul" "$out_dir/consul"
"$out_dir/consul" version | head -n 1 >&2
echo "$out_dir/consul"

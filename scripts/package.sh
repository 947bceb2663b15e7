#!/usr/bin/env bash
# Builds the Debian package of libgo in one command:
#
#   scripts/package.sh                 release build, then target/libgo_<version>_amd64.deb
#   scripts/package.sh --bin-dir DIR   package the binaries already built in DIR
#   scripts/package.sh --out DIR       write the .deb into DIR instead
#
# A plain dpkg-deb --build over a staged tree (no cargo-deb, no debhelper):
# nothing to install or compile besides the project itself, and every file
# the package holds is listed here. The maintainer scripts are in
# packaging/debian/.
#
# Layout:
#   /usr/bin/libgod, /usr/bin/libgo           the daemon and its client
#   /usr/bin/libgo-aggregator                 the cluster aggregator
#   /lib/systemd/system/libgo-aggregator.service  (starts once configured)
#   /usr/share/doc/libgo/examples/aggregator.toml  its commented configuration
#   /lib/systemd/system/libgod.service        the unit (Type=notify)
#   /usr/lib/tmpfiles.d/libgo.conf            /run/libgo across reboots
#   /etc/libgo/libgod.toml                    commented configuration (conffile)
#   /usr/share/bash-completion/completions/libgo, zsh and fish completions
#   /usr/share/man/man1/libgo*.1.gz           from `libgo man`
#   /usr/share/man/man8/libgod.8.gz           from `libgod --help` (help2man)
#   /usr/share/man/man8/libgo-aggregator.8.gz likewise
#   /usr/share/doc/libgo/                     README, CHANGELOG, copyright
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=""
out_dir="${CARGO_TARGET_DIR:-target}"
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir="$2"; shift 2 ;;
        --out) out_dir="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: $0 [--bin-dir DIR] [--out DIR]" >&2; exit 2 ;;
    esac
done

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || { echo "package: no version in Cargo.toml" >&2; exit 1; }

if [ -z "$bin_dir" ]; then
    cargo build --release --bins
    bin_dir="${CARGO_TARGET_DIR:-target}/release"
fi
for bin in libgod libgo libgo-aggregator; do
    [ -x "$bin_dir/$bin" ] || { echo "package: $bin_dir/$bin missing" >&2; exit 1; }
done
client="$bin_dir/libgo"

mkdir -p "$out_dir"
stage=$(mktemp -d "${TMPDIR:-/tmp}/libgo-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/libgo_${version}_amd64"

install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
    "$root/usr/lib/tmpfiles.d" "$root/etc/libgo" "$root/usr/share/doc/libgo"
install -m 0755 -s "$bin_dir/libgod" "$root/usr/bin/libgod"
install -m 0644 systemd/libgod.service "$root/lib/systemd/system/libgod.service"
install -m 0644 systemd/libgo.tmpfiles.conf "$root/usr/lib/tmpfiles.d/libgo.conf"
install -m 0644 packaging/libgod.toml "$root/etc/libgo/libgod.toml"
install -m 0755 -s "$bin_dir/libgo-aggregator" "$root/usr/bin/libgo-aggregator"
install -m 0644 systemd/libgo-aggregator.service "$root/lib/systemd/system/libgo-aggregator.service"
install -d -m 0755 "$root/usr/share/doc/libgo/examples"
install -m 0644 packaging/aggregator.toml "$root/usr/share/doc/libgo/examples/aggregator.toml"
install -m 0644 README.md "$root/usr/share/doc/libgo/README.md"
install -m 0644 packaging/debian/copyright "$root/usr/share/doc/libgo/copyright"
gzip -9n -c CHANGELOG.md >"$root/usr/share/doc/libgo/CHANGELOG.md.gz"
# A native package's changelog is in Debian's format; it points at the
# project's own. Dated by the last commit, so a rebuild is the same file.
when=$(git log -1 --format=%ct 2>/dev/null || date +%s)
maintainer=$(sed -n 's/^Maintainer: //p' packaging/debian/control)
printf 'libgo (%s) unstable; urgency=medium\n\n  * Built from the libgo repository; the changes are in\n    /usr/share/doc/libgo/CHANGELOG.md.gz.\n\n -- %s  %s\n' \
    "$version" "$maintainer" "$(LC_ALL=C date -R -u -d "@$when")" |
    gzip -9n >"$root/usr/share/doc/libgo/changelog.gz"
# libgod's manual page, from its --help (the options are documented once,
# in the code).
install -d -m 0755 "$root/usr/share/man/man8"
help2man --no-info --section 8 --name "libgo node agent: VMs on QEMU, containers on Docker" \
    --include packaging/libgod.8.include "$bin_dir/libgod" |
    gzip -9n >"$root/usr/share/man/man8/libgod.8.gz"
chmod 0644 "$root/usr/share/man/man8/libgod.8.gz"
help2man --no-info --section 8 --name "libgo cluster aggregator: many agents as one API" \
    "$bin_dir/libgo-aggregator" |
    gzip -9n >"$root/usr/share/man/man8/libgo-aggregator.8.gz"
chmod 0644 "$root/usr/share/man/man8/libgo-aggregator.8.gz"
install -d -m 0755 "$root/usr/share/lintian/overrides"
install -m 0644 packaging/debian/lintian-overrides "$root/usr/share/lintian/overrides/libgo"

install -m 0755 -s "$client" "$root/usr/bin/libgo"
install -d -m 0755 "$root/usr/share/bash-completion/completions" \
    "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d" "$root/usr/share/man/man1"
"$client" completion bash >"$root/usr/share/bash-completion/completions/libgo"
"$client" completion zsh >"$root/usr/share/zsh/vendor-completions/_libgo"
"$client" completion fish >"$root/usr/share/fish/vendor_completions.d/libgo.fish"
"$client" man --dir "$root/usr/share/man/man1"
for page in "$root"/usr/share/man/man1/*.1; do
    gzip -9n "$page"
done
chmod 0644 "$root"/usr/share/bash-completion/completions/libgo \
    "$root"/usr/share/zsh/vendor-completions/_libgo \
    "$root"/usr/share/fish/vendor_completions.d/libgo.fish \
    "$root"/usr/share/man/man1/*.1.gz

for f in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$f" "$root/DEBIAN/$f"
done
install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"

# Shared libraries the binaries link, as Debian package dependencies.
shlibs_dir="$stage/shlibs"
mkdir -p "$shlibs_dir/debian"
printf 'Source: libgo\n\nPackage: libgo\nArchitecture: amd64\n' >"$shlibs_dir/debian/control"
bins=()
for b in "$root"/usr/bin/*; do bins+=("$(realpath "$b")"); done
shlibs=$(cd "$shlibs_dir" && dpkg-shlibdeps -O "${bins[@]}" 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "package: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_SIZE@/$size/" -e "s/@SHLIBS@/$shlibs/" \
    packaging/debian/control >"$root/DEBIAN/control"
(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z |
    xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"

deb="$out_dir/libgo_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
if command -v lintian >/dev/null 2>&1; then
    lintian --no-tag-display-limit "$deb" >&2 || true
fi

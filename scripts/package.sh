#!/usr/bin/env bash
# package.sh — the Debian package postgresql-15-session-reaper, from `cargo pgrx package`.
#
#   bash scripts/package.sh      # prints the .deb's path last, e.g.
#                                # target/debian/postgresql-15-session-reaper_0.3.0_amd64.deb
#   sudo dpkg -i target/debian/postgresql-15-session-reaper_*.deb
#
# The package holds what `cargo pgrx package` puts into Postgres' library and extension
# directories, placed where Debian's postgresql-15 looks (/usr/lib/postgresql/15/lib and
# /usr/share/postgresql/15/extension); the README in /usr/share/doc/postgresql-15-session-reaper;
# the exporter query file and the alert rules in /usr/share/postgresql-15-session-reaper.
# Version from Cargo.toml, architecture from `dpkg --print-architecture`, Depends: postgresql-15.
#
# PG_CONFIG is the Postgres to build against (default Debian's 15); its major names the package
# (postgresql-N-session-reaper, Depends: postgresql-N). When it is not installed where PGDG's
# packages put it (a PyPI build of another major, a private copy), its directories are mapped
# onto /usr/lib/postgresql/N/lib and /usr/share/postgresql/N/extension.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
major=$("$PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9][0-9]*\).*/\1/p')
[ -n "$version" ] && [ -n "$major" ] || { echo "package: no version in Cargo.toml or $PG_CONFIG" >&2; exit 1; }
name=postgresql-$major-session-reaper
arch=$(dpkg --print-architecture)

# The Debian layout of postgresql-$major, and where the build's Postgres keeps the same things.
deb_lib=/usr/lib/postgresql/$major/lib
deb_ext=/usr/share/postgresql/$major/extension
build_lib=$("$PG_CONFIG" --pkglibdir)
build_ext=$("$PG_CONFIG" --sharedir)/extension

# PACKAGE_PROFILE=debug: a quick debug build, for tests of the package's layout.
profile=${PACKAGE_PROFILE:-release}
profile_flag=()
[ "$profile" = release ] || profile_flag=(--debug)
echo "package: cargo pgrx package --pg-config $PG_CONFIG ${profile_flag[*]}" >&2
cargo pgrx package --pg-config "$PG_CONFIG" "${profile_flag[@]}" >&2
tree=${CARGO_TARGET_DIR:-target}/$profile/session_reaper-pg$major
[ -f "$tree$build_lib/session_reaper.so" ] ||
  { echo "package: $tree$build_lib/session_reaper.so is missing" >&2; exit 1; }

root=target/debian/$name
rm -rf "$root"
umask 022
# Every file of the packaged tree goes to the same place under Debian's directories; anything
# elsewhere would be left out silently, so it stops the build instead.
while IFS= read -r -d '' file; do
  path=${file#"$tree"}
  case "$path" in
    "$build_lib"/*) dest=$deb_lib/${path#"$build_lib"/} ;;
    "$build_ext"/*) dest=$deb_ext/${path#"$build_ext"/} ;;
    *) echo "package: $path is neither in $build_lib nor in $build_ext" >&2; exit 1 ;;
  esac
  install -D -m 0644 "$file" "$root$dest"
done < <(find "$tree" -type f -print0)

install -D -m 0644 README.md "$root/usr/share/doc/$name/README.md"
install -D -m 0644 LICENSE "$root/usr/share/doc/$name/copyright"
# Files the exporter and Prometheus read: not under /usr/share/doc, which minimal images drop.
install -D -m 0644 contrib/postgres_exporter.yaml "$root/usr/share/$name/postgres_exporter.yaml"
install -D -m 0644 contrib/alerts.yml "$root/usr/share/$name/alerts.yml"

mkdir -p "$root/DEBIAN"
# md5sums lets `dpkg --verify postgresql-15-session-reaper` check the installed files.
(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) \
  >"$root/DEBIAN/md5sums"
cat >"$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: ${DEB_MAINTAINER:-session_reaper maintainers <root@localhost>}
Section: database
Priority: optional
Depends: postgresql-$major
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Description: PostgreSQL $major extension that keeps tables of expiring rows bounded
 session_reaper runs a background worker inside Postgres that deletes expired
 rows (sessions, tokens, one-time codes) of registered tables in small
 committed batches, with a dry run, a manual purge and stats in SQL.
 .
 Add session_reaper to shared_preload_libraries, restart, then run
 CREATE EXTENSION session_reaper; in each database to be reaped.
CONTROL

deb=target/debian/${name}_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >&2
echo "$deb"

#!/bin/sh
# Run Sekisho as deploy/sekisho.service would, on a machine without a running systemd (a
# container, a CI VM): the unit's sandbox is rebuilt by hand, so the walk-through in
# docs/operations.md ("On a host with systemd") can be tried end to end. As root:
#
#   unshare -m --propagation private deploy/emulate-unit.sh
#
# What it reproduces from the unit: ProtectSystem=strict (every file system read-only) with
# ReadWritePaths=/var/lib/sekisho, PrivateTmp, ProtectHome, EnvironmentFile=/etc/sekisho/sekisho.env
# (read as root, like systemd), WorkingDirectory=/opt/sekisho, User/Group=sekisho,
# NoNewPrivileges, UMask=0077 and ExecStart. Not reproduced: the other Protect*/Restrict*
# settings, restarts, the journal. Keep it in step with sekisho.service.
set -eu
[ "$(id -u)" = 0 ] || { echo "run as root, inside unshare -m" >&2; exit 1; }
for d in /*; do
  case $d in /proc|/sys|/dev|/tmp|/run) continue ;; esac
  [ -d "$d" ] || continue
  mount --bind "$d" "$d"
  mount -o remount,bind,ro "$d"
done
mount --bind /var/lib/sekisho /var/lib/sekisho
mount -o remount,bind,rw /var/lib/sekisho
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /home
mount -t tmpfs -o mode=700 tmpfs /root
set -a
. /etc/sekisho/sekisho.env
set +a
cd /opt/sekisho
exec setpriv --reuid=sekisho --regid=sekisho --init-groups --no-new-privs \
  sh -c 'umask 0077; exec /usr/bin/node --max-semi-space-size=32 --import tsx src/main.ts'

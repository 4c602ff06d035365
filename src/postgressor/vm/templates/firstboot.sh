#!/bin/sh
# postgressor local VM: per-boot setup before sshd starts (host keys, the stack's SSH key, disk size).
set -eu
ssh-keygen -A
key=$(sed -n 's/.*postgressor\.authorized_key=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$key" ]; then
    install -d -m 0700 /root/.ssh
    printf '%s\n' "$key" | base64 -d > /root/.ssh/authorized_keys
    chmod 0600 /root/.ssh/authorized_keys
fi
resize2fs /dev/vda >/dev/null 2>&1 || true

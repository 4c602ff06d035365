"""A STAND-IN for the Electric container image, for VM tests only.

Docker Hub is unreachable from the test machines, so the real `electricsql/electric` image cannot be pulled.
This builds a `docker save` archive of a tiny image named `postgressor-test/electric-standin:<version>`:
busybox-static serving Electric's two endpoints the deploy relies on:
- `GET /v1/health`: 200 `{"status":"active"}` only when PostgreSQL answers on host.docker.internal:5432 (the
  path the real Electric uses), 503 otherwise;
- `GET /v1/shape`: 200 with Electric's headers when the query carries the right `secret`, 401 otherwise; it
  echoes the query it got (secret redacted) in `electric-standin-query` (an electric-* name, so the gateway's
  response-header allow-list passes it as it passes Electric's own) so tests can check what the gateway pinned.
Everything else in the VM tests is real. The deploy loads it through the real `electric.image_archive` path.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

IMAGE = "postgressor-test/electric-standin:1.7.12"
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "nc", "timeout", "tr", "sed", "cat", "printf", "echo")

HANDLER = r"""#!/bin/sh
# postgressor VM-test stand-in for Electric: answers /v1/health and /v1/shape. Not Electric.
read -r method target proto
while read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
done
path=${target%%\?*}
query=${target#*\?}
[ "$query" = "$target" ] && query=""
reply() {
  printf 'HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n' "$1" "${#3}"
  printf '%b' "$2"
  printf '\r\n%s' "$3"
}
case "$path" in
  /v1/health)
    if timeout 3 nc -w 2 host.docker.internal 5432 </dev/null >/dev/null 2>&1; then
      reply "200 OK" "" '{"status":"active"}'
    else
      reply "503 Service Unavailable" "" '{"status":"waiting"}'
    fi ;;
  /v1/shape)
    case "&$query&" in
      *"&secret=$ELECTRIC_SECRET&"*)
        seen=$(printf '%s' "$query" | sed 's/secret=[^&]*/secret=REDACTED/')
        headers="electric-handle: standin-1\r\nelectric-offset: 0_0\r\nelectric-schema: {}\r\n"
        reply "200 OK" "${headers}electric-up-to-date: \r\nelectric-standin-query: $seen\r\n" '[]' ;;
      *) reply "401 Unauthorized" "" '{"message":"invalid secret"}' ;;
    esac ;;
  *) reply "404 Not Found" "" '{"message":"not found"}' ;;
esac
"""


def _layer() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("bin", "tmp"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        data = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        script = HANDLER.encode()
        info = tarfile.TarInfo("standin.sh")
        info.size, info.mode = len(script), 0o755
        tar.addfile(info, io.BytesIO(script))
    return buffer.getvalue()


def build_archive(target: Path) -> Path:
    """Write the stand-in as a `docker save` archive (what `docker load` reads) and return its path."""
    if not BUSYBOX.exists():
        raise RuntimeError("the Electric stand-in needs busybox-static (apt-get install busybox-static)")
    layer = _layer()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/bin/busybox", "nc", "-ll", "-p", "3000", "-e", "/standin.sh"],
            "Labels": {"org.postgressor.note": "VM-test stand-in for electricsql/electric; not Electric"},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [IMAGE], "Layers": ["layer/layer.tar"]}]).encode()
    with tarfile.open(target, mode="w") as tar:
        for name, data in (("layer/layer.tar", layer), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return target

"""The sandbox image, built offline: a static `pause` packed as an OCI image layout tarball.

Owns: pause.c (PID 1 of a Pod sandbox), compiling it with `gcc -static`, and
the OCI image layout (oci-layout, index.json, sha256-named blobs for the
layer, the image config and the manifest) that `ctr images import` accepts.
Rule: the archive is a pure function of the binary and the name (fixed
mtimes, sorted JSON), so it is reproducible and named by its content.
Must not know: containerd, CRI, CNI.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from natra.lab.cri import RuntimeUnavailable

PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>

/* PID 1 of a Pod sandbox: hold the namespaces, leave on SIGTERM/SIGINT.
   As PID 1 it would ignore signals without handlers, so install them. */
static void leave(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGTERM, leave);
    signal(SIGINT, leave);
    for (;;)
        pause();
}
"""

OCI_LAYOUT_VERSION = "1.0.0"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME_KEY = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_KEY = "io.containerd.image.name"  # the full name ctr import gives the image
PAUSE_PATH_IN_IMAGE = "pause"
EXEC_MODE, FILE_MODE = 0o755, 0o644
FIXED_MTIME = 0  # deterministic archives


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


def build_pause(workdir: Path, cc: str = "gcc") -> Path:
    """Compile the static pause binary in `workdir`; returns its path."""
    src, out = workdir / "pause.c", workdir / "pause"
    src.write_text(PAUSE_C)
    proc = subprocess.run([cc, "-static", "-Os", "-o", str(out), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeUnavailable(f"{cc} -static pause.c (is libc6-dev installed?): {proc.stderr.strip()}")
    return out


def _tar_bytes(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, FIXED_MTIME
            info.uid = info.gid = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_blobs(pause_binary: bytes, arch: str = "amd64") -> tuple[Blob, Blob, Blob]:
    """(layer, config, manifest) of a one-layer image whose entry point is /pause."""
    layer = Blob(MEDIA_LAYER, _tar_bytes([(PAUSE_PATH_IN_IMAGE, pause_binary, EXEC_MODE)]))
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": ["/" + PAUSE_PATH_IN_IMAGE]},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},  # uncompressed: diff ID = digest
    }
    config_blob = Blob(MEDIA_CONFIG, json.dumps(config, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": config_blob.descriptor(), "layers": [layer.descriptor()]}
    return layer, config_blob, Blob(MEDIA_MANIFEST, json.dumps(manifest, sort_keys=True).encode())


def oci_layout_tar(pause_binary: bytes, image_name: str, arch: str = "amd64") -> bytes:
    """The OCI image layout, as a tar archive, naming the image `image_name`."""
    layer, config, manifest = image_blobs(pause_binary, arch)
    last = image_name.rsplit("/", 1)[-1]
    tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
    index = {"schemaVersion": 2,
             "manifests": [manifest.descriptor(annotations={REF_NAME_KEY: tag,
                                                            CONTAINERD_NAME_KEY: image_name})]}
    members = [("oci-layout", json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode(), FILE_MODE),
               ("index.json", json.dumps(index, sort_keys=True).encode(), FILE_MODE)]
    for blob in (layer, config, manifest):
        members.append(("blobs/sha256/" + blob.digest.split(":", 1)[1], blob.data, FILE_MODE))
    return _tar_bytes(members)

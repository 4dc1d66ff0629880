"""The Android demo (issue 12): an ONNX bundle as an installable, offline web app on a phone.

``build(bundle, out)`` writes a static app: the web files of ``android_demo/web/``, the runtime files
of the npm packages pinned in ``android_demo/package-lock.json`` (onnxruntime-web's CPU WebAssembly
build and its loader, ``@huggingface/tokenizers``), the bundle's files and an ``app-config.json``
listing them with the sha256 and size its manifest records (the manifest is the contract: tensors are
copied, never re-encoded). ``serve(out)`` serves it with the headers that make the page cross-origin
isolated (onnxruntime-web then runs multi-threaded). A phone reaches it as a secure origin through
``adb reverse tcp:PORT tcp:PORT`` (see ``android_demo/README.md``).

Torch-free: imports the standard library and ``edgeprompt.core`` only.

>>> out = build("tweets-onnx-int8", "tweets-app")                       # doctest: +SKIP
>>> srv = serve(out, port=8765); print(f"http://127.0.0.1:{srv.server_address[1]}/")   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import ssl
import struct
import sys
import threading
import zlib
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from edgeprompt.core import schema
from edgeprompt.core.bundle import Bundle
from edgeprompt.core.constants import (
    BUNDLE_MANIFEST_FILE,
    BUNDLE_PROBES_DIR,
    TASK_MANIFEST_FILE,
    BundleKeys,
    FileKeys,
    ModelFormat,
    ModelKeys,
    TaskKeys,
)
from edgeprompt.core.errors import BankError, BundleError, EdgePromptError
from edgeprompt.core.files import atomic_directory
from edgeprompt.core.model_info import ModelInfo

HERE = Path(__file__).resolve().parent
WEB_DIR = HERE / "web"
#: Where a wheel carries the npm runtime files (copied there by :func:`vendor` before packaging).
PACKAGED_VENDOR_DIR = WEB_DIR / "vendor"

APP_CONFIG_FILE = "app-config.json"
APP_FORMAT = "edgeprompt.android-demo"
APP_VERSION = 1
#: The bundle's files go under this folder of the built app.
APP_BUNDLE_DIR = "bundle"
#: The npm runtime files go under this folder (``ort.env.wasm.wasmPaths`` points at it: never a CDN).
APP_VENDOR_DIR = "vendor"
ICON_SIZES = (192, 512)

#: npm package -> the files the browser loads from it (the ESM builds; no bundler needed).
NPM_FILES: dict[str, tuple[str, ...]] = {
    "onnxruntime-web": ("dist/ort.wasm.min.mjs", "dist/ort-wasm-simd-threaded.mjs", "dist/ort-wasm-simd-threaded.wasm"),
    "@huggingface/tokenizers": ("dist/tokenizers.min.mjs",),
}

#: Extra MIME types the demo server must send (Python's table lacks or misnames them).
MIME_TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".webmanifest": "application/manifest+json",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".data": "application/octet-stream",
    ".safetensors": "application/octet-stream",
}
#: Sent with every response: the page is then cross-origin isolated (SharedArrayBuffer: wasm threads).
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
#: Files the browser must revalidate on each load (a rebuilt app is picked up; everything else is in the service worker's cache).
NO_CACHE = ("sw.js", APP_CONFIG_FILE, "index.html", "")


class AppBuildError(EdgePromptError):
    """The web app cannot be built: the npm runtime files are missing or not the pinned versions, or ``-o`` is not ours."""


# -- npm runtime files ------------------------------------------------------------------------------
def pinned_versions() -> dict[str, str]:
    """The exact versions ``android_demo/package.json`` pins for the packages the app ships."""
    pkg = json.loads((HERE / "package.json").read_text())
    return {name: pkg["dependencies"][name] for name in NPM_FILES}


def _vendor_sources(node_modules: str | Path | None) -> dict[str, Path]:
    """``{file name in vendor/: source path}``, from ``node_modules`` (given, or ``android_demo/node_modules``
    after ``npm ci``), else from the files a wheel carries in ``web/vendor/``."""
    candidates = [Path(node_modules)] if node_modules is not None else [HERE / "node_modules"]
    want = pinned_versions()
    for nm in candidates:
        if not nm.is_dir():
            continue
        out = {}
        for pkg, files in NPM_FILES.items():
            meta = nm / pkg / "package.json"
            if not meta.is_file():
                raise AppBuildError(f"{nm} has no {pkg}; run `npm ci` in {HERE} (versions pinned in package-lock.json).")
            have = json.loads(meta.read_text()).get("version")
            if have != want[pkg]:
                raise AppBuildError(f"{nm} has {pkg} {have}, the app is pinned to {want[pkg]}; run `npm ci` in {HERE}.")
            for f in files:
                src = nm / pkg / f
                if not src.is_file():
                    raise AppBuildError(f"{src} is missing from {pkg} {have}; run `npm ci` in {HERE}.")
                out[Path(f).name] = src
        return out
    if node_modules is None and PACKAGED_VENDOR_DIR.is_dir():
        out = {Path(f).name: PACKAGED_VENDOR_DIR / Path(f).name for files in NPM_FILES.values() for f in files}
        missing = [str(p) for p in out.values() if not p.is_file()]
        if not missing:
            return out
    where = candidates[0]
    raise AppBuildError(
        f"the app's npm runtime files (onnxruntime-web {want['onnxruntime-web']}, @huggingface/tokenizers {want['@huggingface/tokenizers']}) "
        f"are not installed: no {where}. Run `npm ci` in {HERE}, or pass node_modules=."
    )


def vendor(node_modules: str | Path | None = None) -> Path:
    """Copy the npm runtime files into ``web/vendor/`` (package data: what a wheel ships, so an installed
    edgeprompt builds the app without npm). Returns that folder."""
    PACKAGED_VENDOR_DIR.mkdir(exist_ok=True)
    for name, src in _vendor_sources(node_modules).items():
        shutil.copyfile(src, PACKAGED_VENDOR_DIR / name)
    return PACKAGED_VENDOR_DIR


# -- icons --------------------------------------------------------------------------------------------
def icon_png(size: int) -> bytes:
    """A plain PNG icon (a light disc on teal, 8-bit RGB), written with zlib and struct only."""
    r2 = (0.30 * size) ** 2
    c = (size - 1) / 2
    rows = []
    for y in range(size):
        row = bytearray(b"\x00")  # filter type: none
        for x in range(size):
            row += b"\xf4\xf1\xe6" if (x - c) ** 2 + (y - c) ** 2 <= r2 else b"\x0f\x76\x6e"
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b"")


# -- build --------------------------------------------------------------------------------------------
def _copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` to ``dst``; return the sha256 and size of what was copied (one read)."""
    h = hashlib.sha256()
    n = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while chunk := fi.read(1 << 20):
            h.update(chunk)
            fo.write(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _check_tasks(b: Bundle) -> None:
    """Each task's manifest parses and was made for the bundle's model (as the runtime checks at open)."""
    for name in b.tasks:
        rel = b.task_dir(name) + TASK_MANIFEST_FILE
        m = schema.decode(b.resolve(rel).read_bytes(), schema.TaskManifest, f"task {name!r} of bundle {b.path}", BankError, "train or import the task again")
        b.base_model.check_compatible(ModelInfo.from_dict(m[TaskKeys.BASE_MODEL]), f"task {name!r}")


def _model_bytes(b: Bundle) -> int:
    """Bytes the browser must hold to load the model: the graph, its external data and the embedding table."""
    files = b.manifest[BundleKeys.FILES]
    model_rel = b.model[ModelKeys.FILE]
    model_dir = model_rel.rpartition("/")[0]
    rels = [r for r in files if r.rpartition("/")[0] == model_dir]  # the graph and every file beside it
    return sum(files[r][FileKeys.BYTES] for r in rels)


def build(bundle: str | Path, out: str | Path, node_modules: str | Path | None = None) -> Path:
    """Build the web app for an ONNX ``bundle`` into the folder ``out``; return it.

    The folder is written beside ``out`` and renamed into place (a previous build there is replaced; any
    other existing folder is refused). A GGUF bundle is refused with :class:`BundleError`: the browser runs
    ONNX (export with ``--format onnx``). Every bundle file is hashed as it is copied and checked against the
    manifest, so the app never ships a file the manifest does not vouch for.
    """
    b = Bundle.open(bundle, verify=False)  # schema checked; the files' hashes are checked below, while copying
    if b.format != ModelFormat.ONNX:
        raise BundleError(
            f"bundle {b.path} holds a {b.format.value} model; the web app needs an ONNX bundle (onnxruntime-web): "
            "export with --format onnx (--quant int8 or int4 for a phone)."
        )
    b.verify_files(hashes=False)  # every file the runtime reads is listed, present, of its recorded size
    _check_tasks(b)
    vendor_files = _vendor_sources(node_modules)
    out = Path(out)
    if out.exists() and not (out / APP_CONFIG_FILE).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise AppBuildError(f"{out} exists and is not an android-demo build; pick another -o folder or remove it.")

    files = b.manifest[BundleKeys.FILES]
    shipped = {rel: rec for rel, rec in files.items() if not rel.startswith(BUNDLE_PROBES_DIR + "/")}
    with atomic_directory(out) as tmp:
        app_files = []
        for src in sorted(WEB_DIR.rglob("*")):
            rel = src.relative_to(WEB_DIR).as_posix()
            if src.is_file() and not rel.startswith(APP_VENDOR_DIR + "/"):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, tmp / rel)
                app_files.append(rel)
        for name, src in vendor_files.items():
            (tmp / APP_VENDOR_DIR).mkdir(exist_ok=True)
            shutil.copyfile(src, tmp / APP_VENDOR_DIR / name)
            app_files.append(f"{APP_VENDOR_DIR}/{name}")
        for size in ICON_SIZES:
            (tmp / "icons").mkdir(exist_ok=True)
            (tmp / "icons" / f"icon-{size}.png").write_bytes(icon_png(size))
            app_files.append(f"icons/icon-{size}.png")

        dest = tmp / APP_BUNDLE_DIR
        man_sha, man_bytes = _copy_hashed(b.path / BUNDLE_MANIFEST_FILE, dest / BUNDLE_MANIFEST_FILE)
        for rel, rec in shipped.items():
            sha, n = _copy_hashed(b.resolve(rel), dest / rel)
            if sha != rec[FileKeys.SHA256] or n != rec[FileKeys.BYTES]:
                raise BundleError(f"bundle {b.path}: file {rel} does not match its sha256 in the manifest (corrupted); re-copy or re-export the bundle.")

        config = {
            "format": APP_FORMAT,
            "version": APP_VERSION,
            "bundle": {
                "dir": APP_BUNDLE_DIR + "/",
                "name": b.path.name,
                "format": b.format.value,
                "quant": b.quant,
                "manifest": {FileKeys.SHA256: man_sha, FileKeys.BYTES: man_bytes},
                "files": shipped,
                "model_bytes": _model_bytes(b),
            },
            "app_files": sorted(app_files),
            "npm": pinned_versions(),
        }
        # names this build: the service worker's cache, so a rebuilt app replaces the cached one
        ident = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for rel in sorted(app_files):
            ident.update(rel.encode() + b"\0" + (tmp / rel).read_bytes())
        config["build_id"] = ident.hexdigest()[:16]
        sw = tmp / "sw.js"
        sw.write_text(sw.read_text().replace("__EDGEPROMPT_BUILD_ID__", config["build_id"]))
        (tmp / APP_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


# -- serve --------------------------------------------------------------------------------------------
class _Handler(SimpleHTTPRequestHandler):
    """Static files with COOP/COEP on every response, the app's MIME types, and no caching of the files that name a build."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    protocol_version = "HTTP/1.1"
    quiet = True

    def end_headers(self) -> None:
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        path = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
        self.send_header("Cache-Control", "no-cache" if path in NO_CACHE else "max-age=0, must-revalidate")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def serve(
    out: str | Path, host: str = "127.0.0.1", port: int = 0, certfile: str | Path | None = None, keyfile: str | Path | None = None, quiet: bool = True
) -> ThreadingHTTPServer:
    """Serve a built app on ``host:port`` (``port=0``: a free one) in a background thread; return the server.

    ``server.server_address[1]`` is the port; ``server.shutdown()`` stops it. With ``certfile`` (and
    ``keyfile``) it serves HTTPS: the way to reach it from another device without ``adb reverse``
    (service workers and cross-origin isolation need a secure context: https, or localhost).
    """
    out = Path(out)
    if not (out / APP_CONFIG_FILE).is_file():
        raise AppBuildError(f"{out} is not a built android-demo app (no {APP_CONFIG_FILE}); build it first: edgeprompt android-demo BUNDLE -o {out}.")
    handler = type("Handler", (_Handler,), {"quiet": quiet})
    srv = ThreadingHTTPServer((host, port), partial(handler, directory=str(out)))
    srv.daemon_threads = True
    if certfile is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(certfile), None if keyfile is None else str(keyfile))
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.scheme = "https" if certfile is not None else "http"
    threading.Thread(target=srv.serve_forever, name="android-demo-server", daemon=True).start()
    return srv


# -- command line -------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``edgeprompt android-demo`` (the CLI adds them to its subcommand)."""
    p.add_argument("bundle", help="an ONNX bundle folder written by `edgeprompt export --format onnx` (int8 or int4 for a phone)")
    p.add_argument("-o", "--output", required=True, help="folder to write the web app into (a previous build there is replaced)")
    p.add_argument("--serve", action="store_true", help="then serve it (COOP/COEP headers) and print the address")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; a phone reaches it with `adb reverse tcp:PORT tcp:PORT`)")
    p.add_argument("--port", type=int, default=8765, help="port to serve on (default 8765; 0: a free one)")
    p.add_argument("--cert", help="serve HTTPS with this certificate (PEM): another secure origin than adb reverse, for --host on the network")
    p.add_argument("--key", help="the certificate's private key (PEM), if not in --cert")
    p.add_argument("--node-modules", help="where the pinned npm packages are (default: android_demo/node_modules after `npm ci`)")


def cli(args: argparse.Namespace) -> int:
    """``edgeprompt android-demo BUNDLE -o DIR [--serve] [--host H] [--port P] [--cert C --key K]``."""
    out = build(args.bundle, args.output, node_modules=args.node_modules)
    cfg = json.loads((out / APP_CONFIG_FILE).read_text())
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"web app for {args.bundle}: {out} ({total / 2**20:.1f} MiB, build {cfg['build_id']}, model {cfg['bundle']['model_bytes'] / 2**20:.1f} MiB)")
    if not args.serve:
        return 0
    srv = serve(out, args.host, args.port, certfile=args.cert, keyfile=args.key, quiet=False)
    host, port = srv.server_address[:2]
    url = f"{srv.scheme}://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/"
    print(f"serving {out} on {url}", file=sys.stderr, flush=True)
    if host in ("127.0.0.1", "::1", "localhost"):
        print(f"on a phone over USB: adb reverse tcp:{port} tcp:{port}, then open http://localhost:{port}/ in Chrome", file=sys.stderr, flush=True)
    elif args.cert is None:
        print(
            f"warning: http://{host}:{port}/ is not a secure context on another device: no service worker (offline), no threads, no Web Crypto; "
            "use adb reverse with the default --host, or --cert/--key.",
            file=sys.stderr,
            flush=True,
        )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgeprompt android-demo", description="Build (and serve) the web app that runs an ONNX bundle in a phone's browser.")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return cli(args)
    except EdgePromptError as e:
        print(f"edgeprompt: error: {e}", file=sys.stderr)
        return 2


__all__ = ["APP_CONFIG_FILE", "AppBuildError", "add_arguments", "build", "cli", "icon_png", "main", "pinned_versions", "serve", "vendor"]

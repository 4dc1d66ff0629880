#!/data/data/com.termux/files/usr/bin/bash
# Install edgeprompt's Python runtime (llama.cpp backend) inside Termux on an Android phone.
# NOT RUN ON A PHONE BY US: these machines have no Android device or emulator. See README.md here for what is known,
# what is assumed, and how to report back. Usage, in Termux (from F-Droid or GitHub, not the Play Store build):
#   bash install.sh /path/to/edgeprompt-source      # a checkout or an unpacked sdist of edgeprompt
set -euo pipefail
SRC="${1:?give the edgeprompt source folder (a git checkout or an unpacked sdist)}"
if [ -z "${PREFIX:-}" ] || [ ! -d "$PREFIX" ] || ! command -v pkg >/dev/null 2>&1; then
    echo "this script is for Termux on Android (no \$PREFIX / pkg here); on a Linux machine use pip install '.[runtime]'" >&2
    exit 2
fi
# Termux's Python links against Android's libc (bionic): PyPI's manylinux wheels do not install, so packages with
# native code come from Termux's own repository (pkg) or are compiled here (clang, cmake, rust).
pkg update -y
pkg install -y python clang cmake ninja make rust binutils python-numpy
python -m venv --system-site-packages "$HOME/edgeprompt-venv"   # numpy from pkg, the rest in the venv
. "$HOME/edgeprompt-venv/bin/activate"
python -m pip install --upgrade pip wheel
# safetensors, tokenizers (Rust) and msgspec (C) compile from their sdists: expect tens of minutes on a phone.
python -m pip install safetensors tokenizers msgspec
# llama-cpp-python compiles llama.cpp with clang; OpenMP and Vulkan off (neither is reliably there on Android).
CMAKE_ARGS="-DGGML_OPENMP=OFF -DGGML_VULKAN=OFF" python -m pip install "llama-cpp-python==0.3.36"
# edgeprompt itself with no extras (the runtime extra would ask pip for onnxruntime, which has no build for Termux).
python -m pip install --no-deps -e "$SRC"
python - <<'PY'
import importlib
for m in ("numpy", "safetensors", "tokenizers", "msgspec", "llama_cpp", "edgeprompt.runtimes"):
    importlib.import_module(m)
print("edgeprompt runtime installed: llama.cpp backend; try `edgeprompt run BUNDLE --task NAME TEXT` on a GGUF bundle")
PY

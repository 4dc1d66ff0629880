"""optimum's own ONNX export of the embedded SmolLM2 (the peer of benchmarks/runtime.py).

    python benchmarks/optimum_export.py -o /tmp/optimum-smollm2

optimum's decoder export takes input_ids (no inputs_embeds: it cannot take a soft prompt), with
past key/values; our ONNX engine runs that file too, so the two are timed on the same model.
"""

import argparse
import time

from edgeprompt.train.models import resolve_model_dir

p = argparse.ArgumentParser()
p.add_argument("-o", "--output", required=True)
a = p.parse_args()
from optimum.exporters.onnx import main_export  # noqa: E402

t = time.perf_counter()
main_export(str(resolve_model_dir("default")), output=a.output, task="text-generation-with-past", device="cpu", do_validation=False)
print(f"optimum export: {time.perf_counter() - t:.0f} s -> {a.output}")

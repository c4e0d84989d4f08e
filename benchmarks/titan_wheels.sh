#!/usr/bin/env bash
# Download torchtitan 0.3.0 and what benchmarks/torchtitan_anchor.py's import path needs beyond the
# GPU image (torch 2.11, triton, transformers, einops, tensorboard, safetensors, tokenizers, pillow,
# numpy; fla from ../shared/gpu/wheels.sh) into ./.whl of the current repository (ignored by git),
# pure-python wheels, about 1 MiB in all, so they travel with the checkout. Run from the project's root.
#
# On that path: spmd_types (pinned ==0.2.3 by torchtitan; used at import time by its Qwen3.5 model),
# tyro with docstring-parser and typeguard (torchtitan.config builds tyro's constructor registry at
# import time), torchdata (torchtitan.trainer, which the model's update_from_config imports, imports
# its StatefulDataLoader). Not needed: torch_checkpointing, wandb (imported lazily), datasets (its
# two names are stood in for, see stand_in_for_datasets), torchvision (only config_registry, not imported).
# Metadata checked against torch 2.11: torchdata 0.11.0 needs torch>=2, the others name no torch.
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
exclude=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl torchtitan==0.3.0 spmd_types==0.2.3 tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 \
  torchdata==0.11.0 "$@"
ls -la .whl
cat <<'MSG'
On the GPU machine, benchmarks/gpu_suite.sh's part `titan` installs them; by hand:
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
MSG

#!/usr/bin/env bash
# Create bench/.venv-trl: a separate virtual environment holding TRL, used only by
# bench/bench_dpo.py to run TRL's DPOTrainer side by side with plumb. plumb itself never
# imports TRL, and this keeps TRL (and whatever versions of transformers/peft it pins)
# out of the project's own environment.
#
#   bash bench/setup_trl.sh            # once; re-running is a no-op when TRL imports
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv-trl"
python="${PYTHON:-python3.11}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import trl, plumb.train.loop" 2>/dev/null; then
    echo "bench/.venv-trl is ready: $("$venv/bin/python" -c 'import trl; print("trl", trl.__version__)')"
    exit 0
fi
"$python" -m venv "$venv"
printf '*\n' > "$venv/.gitignore"   # the venv never shows up in git status
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q "trl==1.16.*" peft transformers
"$venv/bin/pip" install -q -e "$root" --no-deps
"$venv/bin/pip" install -q pluggy   # what importing plumb.train needs besides torch/peft/transformers
"$venv/bin/python" -c 'import trl, peft, transformers, torch; print("trl", trl.__version__, "peft", peft.__version__, "transformers", transformers.__version__, "torch", torch.__version__)'

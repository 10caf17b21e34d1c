#!/usr/bin/env bash
# One device check: the new norms' real-data comparison at batch 2 and 32 on the GPU (issue 15).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
RES=${RES:-/tmp/res}; LIMIT=${LIMIT:-420}; EXTRA=${EXTRA:-}
mkdir -p $RES/logs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import torch, hydra; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'hydra', hydra.__version__)"
C="experiment=gn_paper seed=0 data.root=$PWD/.gpu/fmnist out=$RES $EXTRA"
i=0
while read -r args; do
  i=$((i+1))
  ( /usr/bin/time -f "%e s wall" timeout $LIMIT python3 -m normbench run $C $args > $RES/logs/$i.log 2>&1; echo "exit $? :: $args" >> $RES/logs/$i.log ) &
done < ${RUNS_FILE:-.gpu/runs1.txt}
wait
for f in $RES/logs/*.log; do tail -n 3 $f; done
tar czf ${OUT:-/tmp}/res.tgz -C $RES logs $(cd $RES && ls -d runs/*/record.json)
ls -la ${OUT:-/tmp}

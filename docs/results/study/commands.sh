#!/usr/bin/env bash
# The study's commands, one sweep per line (docs/study.md). Print them for a phase:
#   bash docs/results/study/commands.sh main 0          # seed 0 of the main grid
#   bash docs/results/study/commands.sh main 1,2        # seeds 1 and 2
#   bash docs/results/study/commands.sh lr              # lr x {0.5, 2} at batch 32 and 2, seed 0
#   bash docs/results/study/commands.sh epochs          # 2x the epochs (72): bn, gn at 32 and 2, seed 0
#   bash docs/results/study/commands.sh fcnorm          # the contrast: norms after LeNet's hidden fc layers too
#   bash docs/results/study/commands.sh shufflenet 0    # ShuffleNet V2 x0.5: bn, mabn, gn at 32 and 2, seed 0
#   bash docs/results/study/commands.sh resnet20        # ResNet-20 (a GPU's): bn, gn at 32 and 2, seed 0
# and run them two at a time (one thread each; sweeps resume, completed runs are skipped):
#   bash docs/results/study/commands.sh main 0 | xargs -P 2 -I{} sh -c 'OMP_NUM_THREADS=1 {}'
# OUT (default outputs/study) is where runs land; the committed records are copies of OUT/runs/*/record.json.
set -euo pipefail
phase=${1:?phase: main, lr, epochs, fcnorm, shufflenet or resnet20}
seeds=${2:-0}
out=${OUT:-outputs/study}
base="normbench sweep experiment=gn_study out=$out --jobs 1"

# Start-up phases that count iterations, given in epochs: steps per epoch = 10000 // (8 * batch).
startup() {  # norm batch -> the norm's overrides
    local spe=$((10000 / (8 * $2)))
    case $1 in
        cbn) echo "norm.burnin=$spe" ;;  # the window starts after 1 epoch of plain BN
        brn) echo "norm.warmup_start=$spe norm.dmax_iters=$((spe * 5 / 2)) norm.rmax_iters=$((spe * 4))" ;;
        mabn) echo "norm.warmup_iters=$((spe < 100 ? spe : 100)) norm.renorm_iters=$spe" ;;
    esac
}

grid() {  # norms batches extra-overrides
    local norm batch
    for norm in $1; do
        case $norm in
            cbn | brn | mabn)
                for batch in $2; do echo "$base norm=$norm batch=$batch $(startup "$norm" "$batch") $3"; done ;;
            *) echo "$base norm=$norm batch=${2// /,} $3" ;;
        esac
    done
}

norms="bn ln in gn frn mabn brn gbn sn cbn"
case $phase in
    main) grid "$norms" "32 16 8 4 2" "seed=$seeds" ;;
    lr) grid "$norms" "32 2" "seed=0 lr=0.05,0.2" ;;
    epochs) grid "bn gn" "32 2" "seed=0 epochs=72" ;;
    fcnorm) for norm in bn gn; do
        echo "normbench sweep experiment=gn_study_fcnorm out=$out --jobs 1 norm=$norm batch=32,2 seed=0"
    done ;;
    shufflenet) base="normbench sweep experiment=shufflenet_study out=$out --jobs 1"
        grid "bn mabn gn" "32 2" "seed=$seeds" ;;
    resnet20) echo "normbench sweep experiment=resnet20_study out=$out --jobs 1 seed=$seeds" ;;
    *) echo "unknown phase $phase: main, lr, epochs, fcnorm, shufflenet or resnet20" >&2; exit 2 ;;
esac

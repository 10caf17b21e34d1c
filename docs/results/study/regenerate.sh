#!/usr/bin/env bash
# Every table and figure of docs/study.md from the committed records (run from the repository root; a test runs
# each `normbench table` line and compares its output with the committed file).
set -euo pipefail
# the main grid (lr as the preset, 36 epochs): the GN paper's metric, and the BN family's four evaluations
normbench table docs/results/study/runs --where lr=0.1 --where epochs=36 --where backbone.fc_norm=false --metric median5_test_error --out docs/results/study/main.md
normbench table docs/results/study/runs --where lr=0.1 --where epochs=36 --where backbone.fc_norm=false --metric median5_test_error --format latex --out docs/results/study/main.tex
normbench table docs/results/study/runs --where lr=0.1 --where epochs=36 --where backbone.fc_norm=false --metric median5_test_error --format csv --out docs/results/study/main.csv
normbench table docs/results/study/runs --where lr=0.1 --where epochs=36 --where backbone.fc_norm=false --where norm=bn,brn,gbn,mabn,sn,cbn --metric test_error,test_error_precise,test_error_batch,test_error_at_best_val --out docs/results/study/bn_family.md
# convergence: the training loss's change over the last 3 epochs (%); bn and gn at 12, 24 (pilot/), 36 and 72 (epochs72/) epochs
normbench table docs/results/study/runs --where lr=0.1 --where epochs=36 --where backbone.fc_norm=false --metric train_loss_change3 --out docs/results/study/flatness.md
normbench table docs/results/study --where lr=0.1 --where backbone.fc_norm=false --where seed=0 --where norm=bn --where batch=32,2 --rows epochs --cols batch --metric median5_test_error,train_loss --out docs/results/study/epochs_bn.md
normbench table docs/results/study --where lr=0.1 --where backbone.fc_norm=false --where seed=0 --where norm=gn --where batch=32,2 --rows epochs --cols batch --metric median5_test_error,train_loss --out docs/results/study/epochs_gn.md
# lr fairness: each norm at 0.5x, 1x and 2x the preset's lr, seed 0; the lr is chosen on validation (best_val_error)
normbench table docs/results/study/runs --where epochs=36 --where backbone.fc_norm=false --where seed=0 --where batch=32 --cols lr --metric best_val_error,test_error_at_best_val --out docs/results/study/lr_batch32.md
normbench table docs/results/study/runs --where epochs=36 --where backbone.fc_norm=false --where seed=0 --where batch=2 --cols lr --metric best_val_error,test_error_at_best_val --out docs/results/study/lr_batch2.md
# the contrast: the norm after LeNet's hidden fc layers too (experiment=gn_study_fcnorm), seed 0
normbench table docs/results/study/runs --where lr=0.1 --where epochs=36 --where backbone.fc_norm=true --metric median5_test_error,test_error_batch,train_acc --out docs/results/study/fcnorm.md
# the figure and the GN-paper comparison
normbench plot docs/results/study/runs --where lr=0.1 --where epochs=36 --where backbone.fc_norm=false --metric median5_test_error --out docs/results/study/main.png
python docs/results/study/compare.py > docs/results/study/comparison.md
# the MABN start-up probes on ShuffleNet V2 (stopped runs, probes/runs/)
python docs/results/study/probes/history.py > docs/results/study/probes/history.md
# every table above into docs/study.md and the README (between their <!-- table: NAME --> markers)
python docs/results/study/show_tables.py

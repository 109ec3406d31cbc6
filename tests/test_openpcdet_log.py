"""benchmarks/openpcdet_log.py reads OpenPCDet's Train lines for the label-efficiency driver (loss curves,
first iteration) and the targets benchmark (step times after epoch 1)."""
from __future__ import annotations

# two lines of a real fine-tune log (H200, 2026-12-03), the first behind tqdm's progress text as it was there;
# here they are joined by a carriage return, as tqdm's output can join them
REAL = ("train:   0%|          | 0/5 [00:00<?, ?it/s]\x1b[A2026-12-03 05:29:46,630   INFO  Train:   80/80 (100%) "
        "[   0/5 (  0%)]  Loss: 3.769 (3.77)  LR: 3.242e-06  Time cost: 00:00/00:01 [04:56/00:01]  Acc_iter 396"
        "         Data time: 0.00(0.00)  Forward time: 0.11(0.11)  Batch time: 0.11(0.11)\r"
        "2026-12-03 05:29:49,046   INFO  Train:   80/80 (100%) [   4/5 ( 80%)]  Loss: 3.845 (3.70)  LR: 1.585e-07  "
        "Time cost: 00:02/00:00 [04:58/00:00]  Acc_iter 400         Data time: 0.04(0.38)  Forward time: 0.10(0.15)"
        "  Batch time: 0.14(0.52)\n"
        "2026-12-03 05:30:00,427   INFO  Average predicted number of objects(300 samples): 50.980\n")


def test_train_lines_read_epoch_loss_step_and_this_steps_forward_time(bench_module):
    log = bench_module("openpcdet_log")
    lines = log.train_lines(REAL)
    assert [(x.epoch, x.loss, x.step, x.forward_s) for x in lines] == [(80, 3.769, 396, 0.11), (80, 3.845, 400, 0.10)]
    early = REAL.replace("Train:   80/80", "Train:    2/80", 1)
    assert [x.epoch for x in log.train_lines(early)] == [2, 80]
    assert log.train_lines("no training here\n") == []

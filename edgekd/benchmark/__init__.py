"""Benchmark harness, statistics, reports and CI gates (`edgekd bench`, `report`, `gate`).

    stats    percentiles, order-statistic confidence intervals, ratio intervals
    harness  Target, Result, measure(): interleaved, synchronised, stops on tight intervals
    runners  onnxruntime / TensorRT / PyTorch runners and test data for the bench
    sysinfo  environment, this machine's measured peak, memory
    results  the versioned bench JSON, its Markdown table and plots
    bench    run_bench(): everything above for a run directory or a bundle
    gate     budget files and the pass / fail / inconclusive decision
    report   render_report(): one Markdown page per run directory

Nothing here imports torch at module level: a bundle is benchmarked on devices without it.
"""

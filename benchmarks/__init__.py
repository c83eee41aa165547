"""The benchmarks behind the figures in the docs, each run from the checkout's root as a module:
``python -m benchmarks.<name> --help``. Each writes ``benchmarks/results/<benchmark>/<device>.json``
through ``benchmarks.common.write_results``; ``python -m benchmarks.tables`` turns those files into
``docs/benchmarks.md``.

    common             device names, crops, the suites' images, git commit, the results schema
    tables             docs/benchmarks.md from the results (--check: is it up to date?)
    fit_speed          the fast fit engine against the plain one, with ablations (it/s, PSNR, memory, MFU)
    profile_step       a torch.profiler breakdown of a fast iteration by kernel category
    layer_speed        each layer kind of the paper's net timed alone, bf16 and fp32
    step_roofline      FLOPs and unfused memory traffic of one iteration per aten op (meta device)
    packing_speed      packed fits of same-size images against one at a time
    paper_tables       the paper's tables on one GPU with the core alone
    parity             our core against a plain fp32 DIP (tests/plain_dip.py), per task over seeds
    stop_rules         every stopping rule against the fixed budget and the oracle
    archive            blind archive restoration: σ̂, defect masks, archive against denoise, a 12 MP scan's analysis
    decode_memory      peak memory of decoding a 12 MP 16-bit TIFF
    scan_memory        a 12 MP scan restored on the CPU under two memory budgets
    pipeline_overhead  the batch job against a plain loop; the driver's memory planning a huge manifest
    results_scale      the done check, a rerun's plan and ``dip report`` over 10k-1M result rows
    gpu_session.sh     the GPU-bound steps in one go on a lent GPU (SMOKE=1: each step tiny, on the CPU)

One-off experiments are written up in ``docs/experiments/``; their code left (git keeps it).
"""
